"""A small Quart blog made by an app factory: users and posts as JSON.

- ``POST /users`` ``{"name": ...}`` creates a user (201, ``{"id": ...}``).
- ``GET /users/<id>/posts`` lists the titles of a user's published posts.
- ``POST /posts/<id>/publish`` publishes a post.
- ``POST /posts/<id>/views`` counts a view in a background task.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import quart
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa


class Base(async_sa.Model, sa_orm.DeclarativeBase):
    """The models' base: typed, and ``db.Model`` once given to ``SQLAlchemy``."""


db = async_sa.SQLAlchemy(model_class=Base)


class User(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Post(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    author_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id))
    published: Mapped[bool] = mapped_column(default=False)
    views: Mapped[int] = mapped_column(default=0)


def create_app(config: Mapping[str, t.Any]) -> quart.Quart:
    """The app, configured by ``config`` (``SQLALCHEMY_DATABASE_URI``...)."""
    app = quart.Quart(__name__)
    app.config.update(config)
    db.init_app(app)

    @app.post("/users")
    async def create_user() -> tuple[dict[str, int], int]:
        data = await quart.request.get_json()
        user = User(name=data["name"])
        db.session.add(user)
        await db.session.commit()
        return {"id": user.id}, 201

    @app.get("/users/<int:user_id>/posts")
    async def published_posts(user_id: int) -> list[str]:
        titles = await db.session.scalars(
            sa.select(Post.title)
            .where(Post.author_id == user_id, Post.published)
            .order_by(Post.id)
        )
        return list(titles)

    @app.post("/posts/<int:post_id>/publish")
    async def publish(post_id: int) -> str:
        post = await db.get_or_404(Post, post_id)
        post.published = True
        await db.session.commit()
        return ""

    @app.post("/posts/<int:post_id>/views")
    async def count_view(post_id: int) -> tuple[str, int]:
        async def add_view() -> None:
            post = await db.session.get_one(Post, post_id)
            post.views += 1
            await db.session.commit()

        app.add_background_task(add_view)
        return "", 202

    return app

"""A small blog on a standalone ``db``: users and posts, and two services.

The database is ``BLOG_DATABASE_URL`` (an in-memory SQLite database by default).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa


class Base(async_sa.Model, sa_orm.DeclarativeBase):
    """The models' base: typed, and ``db.Model`` once given to ``SQLAlchemy``."""


db = async_sa.SQLAlchemy(
    url=os.environ.get("BLOG_DATABASE_URL", "sqlite://"), model_class=Base
)


class User(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Post(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    author_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id))
    published: Mapped[bool] = mapped_column(default=False)


async def publish(post_id: int) -> None:
    """Publish a post and commit, as app code does."""
    post = await db.session.get_one(Post, post_id)
    post.published = True
    await db.session.commit()


async def published_titles(author_id: int) -> list[str]:
    """The titles of an author's published posts."""
    titles = await db.session.scalars(
        sa.select(Post.title)
        .where(Post.author_id == author_id, Post.published)
        .order_by(Post.id)
    )
    return list(titles)

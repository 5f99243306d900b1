"""The types of the 404 helpers and of ``db.paginate``: the first column's value,
typed as that column (or entity) for a statement of one, ``Any`` for several
(as ``session.scalar`` types them), on SQLAlchemy 2.0 and 2.1 alike."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from typing_extensions import assert_type

from async_sa import Pagination
from async_sa import SQLAlchemy


class Base(sa_orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


async def one_entity_or_column(db: SQLAlchemy) -> None:
    assert_type(await db.get_or_404(User, 1), User)
    assert_type(await db.first_or_404(sa.select(User)), User)
    assert_type(await db.one_or_404(sa.select(User)), User)
    filtered = sa.select(User).where(User.name == "x").order_by(User.id)
    assert_type(await db.first_or_404(filtered), User)
    assert_type(await db.first_or_404(sa.select(User.name)), str)
    assert_type(await db.one_or_404(sa.select(sa.func.count(User.id))), int)
    assert_type(await db.first_or_404(sa.insert(User).returning(User.id)), int)


async def several_columns_or_untyped(db: SQLAlchemy) -> None:
    """Several columns give the first one's value, typed ``Any`` as by
    ``session.scalar``; so does a statement SQLAlchemy does not type."""
    assert_type(await db.first_or_404(sa.select(User.id, User.name)), t.Any)
    assert_type(await db.one_or_404(sa.select(User, User.name)), t.Any)
    assert_type(await db.first_or_404(sa.text("SELECT 1")), t.Any)
    untyped: sa.Select[t.Any] = sa.select(User)
    assert_type(await db.first_or_404(untyped), t.Any)


async def pages(db: SQLAlchemy) -> None:
    assert_type(await db.paginate(sa.select(User)), Pagination[User])
    page = await db.paginate(sa.select(User.name).order_by(User.name), page=2)
    assert_type(page, Pagination[str])
    assert_type(page.items, list[str])
    assert_type(await page.next(), Pagination[str])
    several = await db.paginate(sa.select(User.id, User.name))
    assert_type(several, Pagination[t.Any])


db = SQLAlchemy(url="sqlite://")


class Item(db.Model):  # type: ignore[name-defined,misc]
    """A model on ``db.Model``: its base is ``Any`` to a type checker."""

    id: Mapped[int] = mapped_column(primary_key=True)


async def db_models() -> None:
    assert_type(await db.first_or_404(sa.select(Item)), Item)
    assert_type(await db.one_or_404(sa.select(Item).where(Item.id == 1)), Item)
    assert_type(await db.first_or_404(sa.select(Item.id)), int)
    assert_type(await db.paginate(sa.select(Item).order_by(Item.id)), Pagination[Item])
    assert_type(await db.first_or_404(sa.select(Item, Item.id)), t.Any)

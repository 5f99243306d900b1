"""The session types ``db.session`` and ``db.sessionmaker`` give, with and
without a ``class_`` of one's own."""

from __future__ import annotations

import typing as t

from typing_extensions import assert_type

from async_sa import AsyncSession
from async_sa import ScopedSession
from async_sa import SessionMaker
from async_sa import SQLAlchemy


class MySession(AsyncSession):
    """A session class with one more method."""

    def hello(self) -> str:
        return "hello"


async def default_sessions() -> None:
    db = SQLAlchemy(url="sqlite://")
    assert_type(db, SQLAlchemy[AsyncSession])
    assert_type(db.session, ScopedSession[AsyncSession])
    assert_type(db.session(), AsyncSession)
    assert_type(db.sessionmaker, SessionMaker[AsyncSession])
    async with db.sessionmaker() as session:
        assert_type(session, AsyncSession)


async def sessions_of_my_class() -> None:
    db = SQLAlchemy(url="sqlite://", session_options={"class_": MySession})
    assert_type(db, SQLAlchemy[MySession])
    assert_type(db.session(), MySession)
    assert_type(db.session().hello(), str)
    async with db.sessionmaker() as session:
        assert_type(session, MySession)
    db_with_other_options = SQLAlchemy(
        url="sqlite://",
        session_options={"class_": MySession, "expire_on_commit": True},
    )
    assert_type(db_with_other_options, SQLAlchemy[MySession])


def takes_any_db(db: SQLAlchemy) -> None:
    """A plain ``SQLAlchemy`` annotation accepts a db of any session class."""


def untyped_options(options: dict[str, t.Any]) -> None:
    takes_any_db(SQLAlchemy(url="sqlite://", session_options={"class_": MySession}))
    assert_type(SQLAlchemy(url="sqlite://", session_options=options), SQLAlchemy)

"""create_all, drop_all and reflect, for one bind key, a list, or all of them."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from async_sa import UnknownBindKeyError
from tests.conftest import Backend
from tests.conftest import MakeDb


async def table_exists(db: SQLAlchemy, name: str, bind_key: str | None = None) -> bool:
    async with db.get_engine(bind_key).connect() as connection:
        return await connection.run_sync(lambda sync: sa.inspect(sync).has_table(name))


def two_bind_models(db: SQLAlchemy) -> None:
    class User(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    class Post(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True)

    db.Table("log", sa.Column("id", sa.Integer), bind_key="a")


@pytest.fixture
def bound_db(make_db: MakeDb, backend: Backend) -> SQLAlchemy:
    """A db with a default engine and a bind 'a' on the same backend."""
    db = make_db(
        binds={"a": backend.bind()} if backend.has_server else {"a": "sqlite://"}
    )
    two_bind_models(db)
    return db


async def test_create_all_and_drop_all_cover_every_bind(bound_db: SQLAlchemy) -> None:
    """By default every bind's tables are created, then dropped."""
    await bound_db.create_all()
    assert await table_exists(bound_db, "user")
    assert await table_exists(bound_db, "post", "a")
    assert await table_exists(bound_db, "log", "a")
    await bound_db.drop_all()
    assert not await table_exists(bound_db, "user")
    assert not await table_exists(bound_db, "post", "a")


@pytest.mark.parametrize("key", ["a", ["a"]], ids=["one", "list"])
async def test_create_all_for_chosen_binds_only(
    bound_db: SQLAlchemy, key: str | list[str]
) -> None:
    """bind_key= as one key or a list creates only those binds' tables."""
    await bound_db.create_all(bind_key=key)
    assert await table_exists(bound_db, "post", "a")
    assert not await table_exists(bound_db, "user")
    await bound_db.drop_all(bind_key=key)
    assert not await table_exists(bound_db, "post", "a")


async def test_create_all_for_default_bind_with_none(bound_db: SQLAlchemy) -> None:
    """bind_key=None is the default engine alone."""
    await bound_db.create_all(bind_key=None)
    assert await table_exists(bound_db, "user")
    assert not await table_exists(bound_db, "post", "a")
    await bound_db.drop_all(bind_key=None)


async def test_create_all_for_key_without_engine_names_it(make_db: MakeDb) -> None:
    """A key with no engine (asked for, or a model's) fails naming the key."""
    db = make_db()

    class Orphan(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "missing"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(UnknownBindKeyError, match="'missing'.*SQLALCHEMY_BINDS"):
        await db.create_all(bind_key="missing")
    with pytest.raises(UnknownBindKeyError, match="'missing'"):
        await db.create_all()


async def test_reflect_loads_tables_of_every_bind(
    bound_db: SQLAlchemy, make_db: MakeDb, backend: Backend
) -> None:
    """A fresh db pointed at the same databases reflects their tables per bind."""
    if backend.name == "sqlite_memory":
        pytest.skip("two engines never share an in-memory database")
    await bound_db.create_all()
    fresh = make_db(
        binds={"a": bound_db.engines["a"].url}
        if not backend.has_server
        else {"a": backend.bind()}
    )
    await fresh.reflect()
    assert "user" in fresh.metadata.tables
    assert "post" in fresh.metadatas["a"].tables
    await bound_db.drop_all()


def test_every_configured_bind_has_its_metadata_at_once(tmp_path: t.Any) -> None:
    """``db.metadatas`` has one MetaData per bind from ``binds=`` right after
    construction, with the default naming convention, and no engine is made."""
    convention = {"pk": "pk_%(table_name)s", "ix": "ix_%(column_0_label)s"}
    db = SQLAlchemy(
        url="sqlite://",
        binds={"a": "sqlite://", "b": {"url": f"sqlite:///{tmp_path / 'b.db'}"}},
        metadata=sa.MetaData(naming_convention=convention),
    )
    assert set(db.metadatas) == {None, "a", "b"}
    for key in ("a", "b"):
        metadata = db.metadatas[key]
        assert metadata is not db.metadata
        assert metadata.naming_convention == db.metadata.naming_convention
        assert metadata.info["bind_key"] == key
    assert db._standalone is None
    table = db.Table("log", sa.Column("id", sa.Integer), bind_key="a")
    assert table.metadata is db.metadatas["a"]

"""Bind-key routing: every kind of statement runs on its bind's database.

The default engine is an in-memory SQLite database; the bind ``remote`` is the
test's backend (on PostgreSQL, another database system altogether). Each model
or table exists only in its own database, so a statement sent to the wrong one
fails with "no such table" instead of passing by accident.
"""

from __future__ import annotations

import asyncio
import gc
import typing as t
import weakref
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from async_sa import UnknownBindKeyError
from tests.conftest import Backend
from tests.conftest import MakeDb
from tests.conftest import on_heavy_backends


class Models(t.NamedTuple):
    local: type[t.Any]
    remote: type[t.Any]
    remote_child: type[t.Any]
    remote_table: sa.Table
    remote_tag: sa.Table


@pytest.fixture
async def routed(
    make_db: MakeDb, backend: Backend
) -> AsyncIterator[tuple[SQLAlchemy, Models]]:
    """A db with a SQLite default engine and a 'remote' bind on the backend."""
    db = make_db(url="sqlite://", binds={"remote": backend.bind()})

    class Local(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(20))

    class Remote(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "remote"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(20))
        kind: Mapped[str] = mapped_column(sa.String(20), default="remote")
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "remote"}

    class RemoteChild(Remote):
        id: Mapped[int] = mapped_column(sa.ForeignKey(Remote.id), primary_key=True)
        extra: Mapped[str] = mapped_column(sa.String(20), default="")
        __mapper_args__ = {"polymorphic_identity": "child"}

    remote_table = db.Table(
        "remote_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("message", sa.String(50)),
        bind_key="remote",
    )
    remote_tag = db.Table(
        "remote_tag",
        sa.Column("log_id", sa.ForeignKey("remote_log.id")),
        sa.Column("tag", sa.String(20)),
        bind_key="remote",
    )
    await db.create_all()
    models = Models(Local, Remote, RemoteChild, remote_table, remote_tag)
    yield db, models
    await db.session.remove()
    await db.drop_all(bind_key=[None, "remote"])


async def rows_in(db: SQLAlchemy, bind_key: str | None, table: str) -> int:
    """How many rows ``table`` holds in the database of ``bind_key``."""
    async with db.get_engine(bind_key).connect() as connection:
        return await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0


async def test_orm_models_go_to_their_bind(routed: tuple[SQLAlchemy, Models]) -> None:
    """add/commit, get, ORM select: each model on its own database."""
    db, m = routed
    db.session.add_all([m.local(id=1, name="here"), m.remote(id=1, name="there")])
    await db.session.commit()
    assert await rows_in(db, None, "local") == 1
    assert await rows_in(db, "remote", "remote") == 1
    await db.session.remove()
    assert (await db.session.get_one(m.remote, 1)).name == "there"
    assert (await db.session.scalars(sa.select(m.remote.name))).all() == ["there"]
    assert (await db.session.scalars(sa.select(m.local.name))).all() == ["here"]


async def test_joined_inheritance_routes_insert_select_refresh(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """A joined subclass of a bound model uses the bind for every operation."""
    db, m = routed
    child = m.remote_child(id=2, name="child", extra="x")
    db.session.add(child)
    await db.session.commit()
    db.session.expire(child)
    await db.session.refresh(child)
    assert child.extra == "x"
    loaded = (
        await db.session.scalars(sa.select(m.remote).where(m.remote.id == 2))
    ).one()
    assert isinstance(loaded, m.remote_child)
    assert await rows_in(db, "remote", "remote_child") == 1


async def test_core_statements_on_bound_tables_go_to_the_bind(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """Core insert/select/update/delete of a bind's table run on that bind."""
    db, m = routed
    log = m.remote_table
    await db.session.execute(
        sa.insert(log), [{"id": 1, "message": "a"}, {"id": 2, "message": "b"}]
    )
    await db.session.execute(sa.insert(m.remote_tag).values(log_id=1, tag="t"))
    ordered = sa.select(log).order_by(log.c.id)
    assert [tuple(row) for row in await db.session.execute(ordered)] == [
        (1, "a"),
        (2, "b"),
    ]
    assert (
        await db.session.scalars(sa.select(log.c.message).where(log.c.id == 2))
    ).one() == "b"
    joined = sa.select(log.c.message, m.remote_tag.c.tag).join(m.remote_tag)
    assert [tuple(row) for row in await db.session.execute(joined)] == [("a", "t")]
    counted = sa.select(sa.func.count()).select_from(sa.select(log).subquery())
    assert await db.session.scalar(counted) == 2
    await db.session.execute(sa.update(log).where(log.c.id == 1).values(message="z"))
    await db.session.execute(sa.delete(log).where(log.c.id == 2))
    await db.session.commit()
    assert await rows_in(db, "remote", "remote_log") == 1


async def test_model_table_in_core_select_goes_to_the_bind(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """select(Model.__table__) goes to the bind (Flask-SQLAlchemy sends it to the
    default engine)."""
    db, m = routed
    db.session.add(m.remote(id=3, name="core"))
    await db.session.commit()
    table = m.remote.__table__
    assert (await db.session.execute(sa.select(table.c.name))).scalars().all() == [
        "core"
    ]


async def test_text_goes_to_default_unless_bind_key_given(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """text() has no table: default engine, or bind_arguments={"bind_key": ...}."""
    db, _ = routed
    await db.session.execute(
        sa.text("INSERT INTO local (id, name) VALUES (7, 'seven')")
    )
    await db.session.execute(
        sa.text("INSERT INTO remote (id, name, kind) VALUES (7, 'seven', 'remote')"),
        bind_arguments={"bind_key": "remote"},
    )
    await db.session.commit()
    assert await rows_in(db, None, "local") == 1
    assert await rows_in(db, "remote", "remote") == 1


async def test_explicit_bind_wins(routed: tuple[SQLAlchemy, Models]) -> None:
    """bind_arguments={"bind": engine} beats the table's bind key."""
    db, m = routed
    with pytest.raises(sa.exc.OperationalError, match="no such table"):
        await db.session.execute(
            sa.select(m.remote_table),
            bind_arguments={"bind": db.engine.sync_engine},
        )


async def test_unknown_bind_key_names_key_and_configured_keys(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """A model or bind_arguments with an unconfigured key fails clearly."""
    db, _ = routed

    class Lost(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "lost"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(
        UnknownBindKeyError, match=r"'lost'.*configured keys: .*'remote'"
    ):
        await db.session.get(Lost, 1)
    with pytest.raises(UnknownBindKeyError, match="'nowhere'"):
        await db.session.execute(
            sa.text("SELECT 1"), bind_arguments={"bind_key": "nowhere"}
        )


async def test_binds_only_routes_tables_and_refuses_unrouted_text(
    make_db: MakeDb, backend: Backend
) -> None:
    """With no default engine, bound models work and text() says to set a URL."""
    db = make_db(url=None, binds={"only": backend.bind()})

    class Only(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "only"
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    db.session.add(Only(id=1))
    await db.session.commit()
    with pytest.raises(UnknownBindKeyError, match="SQLALCHEMY_DATABASE_URI"):
        await db.session.execute(sa.text("SELECT 1"))
    await db.session.remove()
    await db.drop_all()


async def test_routing_holds_under_concurrent_tasks(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """Many tasks writing to both databases at once: every row in its place."""
    db, m = routed

    async def write(number: int) -> None:
        db.session.add_all(
            [m.local(id=number, name="l"), m.remote(id=number, name="r")]
        )
        await db.session.commit()

    await asyncio.gather(*(write(number) for number in range(10, 40)))
    assert await rows_in(db, None, "local") == 30
    assert await rows_in(db, "remote", "remote") == 30


@on_heavy_backends
async def test_ad_hoc_tables_are_routed_and_not_kept(
    routed: tuple[SQLAlchemy, Models],
) -> None:
    """Statements on 20,000 tables made on the fly (each in a fresh MetaData
    saying its bind key) go to that bind, and the routing cache keeps none of
    them: it stays the size of the db's own tables, and they are freed."""
    db, models = routed
    session = db.session()
    state = db._current_state()
    await session.execute(sa.select(models.remote_table))
    await session.get(models.remote, 1)
    cached = len(state.routes)
    assert models.remote_table in state.routes
    remote = db.get_engine("remote").sync_engine
    alive: weakref.WeakSet[sa.Table] = weakref.WeakSet()
    for number in range(20_000):
        metadata = sa.MetaData(info={"bind_key": "remote"})
        table = sa.Table("remote_log", metadata, sa.Column("id", sa.Integer))
        alive.add(table)
        statement = sa.select(table.c.id)
        if number % 2_000 == 0:
            assert (await session.execute(statement)).all() == []
        else:
            assert session.sync_session.get_bind(clause=statement) is remote
    gc.collect()
    assert len(state.routes) == cached
    assert len(alive) < 1_000

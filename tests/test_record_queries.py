"""Recorded queries, standalone: per task, with the caller's location."""

from __future__ import annotations

import asyncio
import gc
import sys
import typing as t
import weakref

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import get_recorded_queries
from async_sa import QueryInfo
from async_sa import record_queries
from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import MakeDb

THIS_FILE = __file__


def item_model(db: SQLAlchemy) -> type[t.Any]:
    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    return Item


def statements() -> list[str]:
    return [" ".join(query.statement.split()) for query in get_recorded_queries()]


@pytest.fixture
def db(make_db: MakeDb) -> SQLAlchemy:
    """A recording ``SQLAlchemy`` object."""
    return make_db(record_queries=True)


@pytest.fixture
async def Item(db: SQLAlchemy) -> type[t.Any]:  # noqa: N802 - a model class
    """The ``item`` table, created; the recording of the setup is cleared."""
    model = item_model(db)
    await db.create_all()
    get_recorded_queries().clear()
    return model


async def test_off_by_default(make_db: MakeDb) -> None:
    """Without ``record_queries`` nothing is recorded and no listener is added."""
    db = make_db()
    await db.session.execute(sa.select(1))
    assert get_recorded_queries() == []
    engine = db.engine.sync_engine
    assert not sa.event.contains(
        engine, "before_cursor_execute", record_queries._record_start
    )
    assert not sa.event.contains(
        engine, "after_cursor_execute", record_queries._record_end
    )


def values(parameters: t.Any) -> list[t.Any]:
    """The values of a query's parameters, positional (asyncpg, aiosqlite,
    asyncmy) or named (psycopg)."""
    if isinstance(parameters, dict):
        return list(parameters.values())
    return list(parameters)


async def test_records_statement_parameters_and_times(
    db: SQLAlchemy, Item: type[t.Any]
) -> None:
    """Each query has its SQL, parameters and timings."""
    await db.session.execute(sa.select(Item).where(Item.id == 5))
    [query] = get_recorded_queries()
    assert isinstance(query, QueryInfo)
    assert "FROM item" in query.statement
    assert 5 in values(query.parameters)
    assert query.start_time <= query.end_time
    assert query.duration == query.end_time - query.start_time
    assert query.duration >= 0


async def test_records_executemany_and_every_bind(
    make_db: MakeDb, backend: Backend
) -> None:
    """Inserts of many rows are recorded, on binds as on the default engine."""
    db = make_db(record_queries=True, binds={"other": backend.bind()})

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "other"
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    get_recorded_queries().clear()
    async with db.session.begin():
        # Not 0: MySQL takes an id of 0 to mean "the next one".
        db.session.add_all(Item(id=i) for i in range(1, 4))
    await db.session.execute(sa.select(1))
    inserts = [q for q in get_recorded_queries() if q.statement.startswith("INSERT")]
    assert inserts
    assert len(get_recorded_queries()) >= 2


async def test_location_names_the_calling_code(
    db: SQLAlchemy, Item: type[t.Any]
) -> None:
    """The location is this file, line and function, found across the greenlet
    SQLAlchemy runs the query in."""
    line = sys._getframe().f_lineno + 1
    await db.session.execute(sa.select(Item))
    [query] = get_recorded_queries()
    assert query.location == (
        f"{THIS_FILE}:{line} (test_location_names_the_calling_code)"
    )


async def test_location_skips_async_sa_helpers(
    db: SQLAlchemy, Item: type[t.Any]
) -> None:
    """Queries issued through ``db.paginate`` and ``get_or_404`` name the caller,
    not async_sa."""
    async with db.session.begin():
        db.session.add(Item(id=1))
    await db.session.remove()
    get_recorded_queries().clear()
    await db.paginate(sa.select(Item))
    await db.get_or_404(Item, "1")
    await db.first_or_404(sa.select(Item))
    await db.one_or_404(sa.select(Item))
    assert len(get_recorded_queries()) == 5
    for query in get_recorded_queries():
        assert query.location.startswith(f"{THIS_FILE}:")
        assert query.location.endswith("(test_location_skips_async_sa_helpers)")


async def test_location_in_run_sync_names_the_sync_function(
    db: SQLAlchemy, Item: type[t.Any]
) -> None:
    """Code run with ``run_sync`` is named itself: it is the innermost app frame."""

    def count_items(session: t.Any) -> int:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Item)))

    assert await db.session.run_sync(count_items) == 0
    [query] = get_recorded_queries()
    assert query.location.endswith("(count_items)")
    assert query.location.startswith(f"{THIS_FILE}:")


async def test_queries_belong_to_their_task(db: SQLAlchemy) -> None:
    """Concurrent tasks each see their own queries, and the parent none of them."""

    async def worker(n: int) -> list[t.Any]:
        for _ in range(n):
            await db.session.execute(sa.select(sa.literal(n)))
            await asyncio.sleep(0)
        await db.session.remove()
        return [values(query.parameters) for query in get_recorded_queries()]

    one, three = await asyncio.gather(worker(1), worker(3))
    assert (one, three) == ([[1]], [[3], [3], [3]])
    assert get_recorded_queries() == []


async def test_queries_are_forgotten_with_their_task(db: SQLAlchemy) -> None:
    """A finished task's recording does not outlive it."""

    async def work() -> None:
        await db.session.execute(sa.select(1))
        await db.session.remove()

    task = asyncio.create_task(work())
    await task
    assert task in record_queries._queries
    recorded = len(record_queries._queries)
    ref = weakref.ref(task)
    del task
    await asyncio.sleep(0)  # the loop lets go of the finished task
    gc.collect()
    assert ref() is None
    assert len(record_queries._queries) == recorded - 1


async def test_clearing_the_list_starts_over(db: SQLAlchemy) -> None:
    """The list is live: clearing it drops what was recorded so far."""
    await db.session.execute(sa.select(1))
    get_recorded_queries().clear()
    await db.session.execute(sa.select(sa.literal(2)))
    assert len(get_recorded_queries()) == 1


async def test_registered_scope_owns_the_queries(
    db: SQLAlchemy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered scope (what the Quart extension does with the app context)
    collects the queries of every task while it is current."""

    class Context:
        pass

    current: list[Context | None] = [Context()]
    monkeypatch.setattr(record_queries, "_scopes", [])
    record_queries.register_scope(lambda: current[0])
    record_queries.register_scope(record_queries._scopes[0])
    assert len(record_queries._scopes) == 1

    async def child() -> None:
        await db.session.execute(sa.select(1))
        await db.session.remove()

    await asyncio.gather(child(), child())
    assert len(get_recorded_queries()) == 2
    current[0] = None
    assert get_recorded_queries() == []


def test_outside_an_event_loop_is_an_error() -> None:
    """Outside a task there is no scope, and the error says where to call it."""
    with pytest.raises(RuntimeError, match="running asyncio task"):
        get_recorded_queries()

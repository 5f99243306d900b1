"""Unit of work: get by primary key, update, commit, remove.

async_sa: ``db.session`` (task-scoped, routing ``get_bind``, pool hooks).
Baseline: ``async_scoped_session(async_sessionmaker(engine, expire_on_commit=False),
scopefunc=asyncio.current_task)`` and ``remove()``, on a plain engine with the
same URL, pool and connect arguments. Sequential (one task) and 32 concurrent
tasks, each on its own row. Target: median ratio ≤ 1.03.
"""

from __future__ import annotations

import asyncio
import itertools
import typing as t
from collections.abc import Awaitable
from collections.abc import Callable

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from benchmarks._backends import Backend
from benchmarks._harness import Comparison
from benchmarks._harness import interleave
from benchmarks._harness import Operation
from benchmarks._harness import Settings

TARGET = 1.03
TASKS = 32
WAVES_PER_ROUND = 24
"""Concurrent waves per round. A round's ratio is the median over its pairs of
waves: a wave is ~50 ms of 32 tasks taking turns on the pool, whose pairs
vary by ~10 % on SQLite, so 8 pairs left rounds between 0.91 and 1.13."""
LABELS = ("db.session", "async_scoped_session")
TABLE = "bench_uow_item"


class PlainBase(sa_orm.DeclarativeBase):
    pass


class PlainItem(PlainBase):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    counter: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(50))


def pool_options(backend: Backend) -> dict[str, t.Any]:
    """Pool options both sides get. SQLite allows one writer at a time: with
    more connections than that, concurrent writers sleep in SQLite's busy
    handler (1, 2, 5, 10 ms ...) and the timings measure those sleeps."""
    if backend.name == "sqlite":
        return {"pool_size": 1, "max_overflow": 0}
    return {"pool_size": 10, "max_overflow": 0}


UnitOfWork = Callable[[int], Awaitable[None]]


def sequential(work: UnitOfWork) -> Operation:
    """One unit of work in the calling task, on the next of 100 rows."""
    idents = itertools.cycle(range(1, 101))

    async def operation() -> None:
        await work(next(idents))

    return operation


def concurrent(work: UnitOfWork) -> Operation:
    """A wave of 32 tasks, each doing one unit of work on a row of its own."""

    async def operation() -> None:
        await asyncio.gather(*(work(ident) for ident in range(1, TASKS + 1)))

    return operation


async def run(backend: Backend, settings: Settings) -> list[Comparison]:
    options = pool_options(backend)
    db = SQLAlchemy(url=backend.url, engine_options=backend.engine_options(**options))

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(primary_key=True)
        counter: Mapped[int]
        name: Mapped[str] = mapped_column(sa.String(50))

    engine = backend.plain_engine(**options)
    scoped = sa_async.async_scoped_session(
        sa_async.async_sessionmaker(engine, expire_on_commit=False),
        scopefunc=asyncio.current_task,
    )
    try:
        async with engine.begin() as connection:
            await connection.run_sync(PlainBase.metadata.create_all)
            await connection.execute(
                sa.insert(PlainItem),
                [{"id": i, "counter": 0, "name": f"item {i}"} for i in range(1, 101)],
            )

        async def with_async_sa(ident: int) -> None:
            item = await db.session.get(Item, ident)
            assert item is not None
            item.counter += 1
            await db.session.commit()
            await db.session.remove()

        async def by_hand(ident: int) -> None:
            item = await scoped.get(PlainItem, ident)
            assert item is not None
            item.counter += 1
            await scoped.commit()
            await scoped.remove()

        sequential_samples = await interleave(
            sequential(with_async_sa),
            sequential(by_hand),
            settings,
            ops=settings.scale(64, 32),
        )
        concurrent_samples = await interleave(
            concurrent(with_async_sa),
            concurrent(by_hand),
            settings,
            ops=settings.scale(WAVES_PER_ROUND, 2),
        )
        results = [
            Comparison.of(
                "unit of work, sequential",
                backend.label,
                TARGET,
                LABELS,
                sequential_samples,
                batch=f"{settings.scale(64, 32)} units",
            ),
            Comparison.of(
                f"unit of work, {TASKS} concurrent tasks",
                backend.label,
                TARGET,
                LABELS,
                concurrent_samples,
                batch=f"{settings.scale(WAVES_PER_ROUND, 2)} waves of {TASKS} tasks",
            ),
        ]
        await db.session.registry.wait_closed()
        return results
    finally:
        await db.dispose()
        await engine.dispose()

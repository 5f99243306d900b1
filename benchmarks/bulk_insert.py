"""Bulk insert: 200 new rows per commit through ``db.session``, then ``remove()``.

Two comparisons against a plain ``async_scoped_session`` on a plain engine
with the same URL, pool and connect arguments (no tracking, no receivers):

- ``SQLAlchemy(track_modifications=True)`` with one ``models_committed``
  receiver connected: the recording of 200 changes and both signals. Target:
  median ratio ≤ 1.10.
- ``SQLAlchemy()`` with tracking off: nothing recorded, nothing sent. Target:
  median ratio ≤ 1.02.
"""

from __future__ import annotations

import asyncio
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa
from async_sa import SQLAlchemy
from benchmarks._backends import Backend
from benchmarks._harness import Comparison
from benchmarks._harness import interleave
from benchmarks._harness import Operation
from benchmarks._harness import Settings
from benchmarks.unit_of_work import pool_options

ROWS = 200
TRACKING_TARGET = 1.10
NO_TRACKING_TARGET = 1.02
TABLE = "bench_bulk_row"


class PlainBase(sa_orm.DeclarativeBase):
    pass


class PlainRow(PlainBase):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    value: Mapped[int]


def async_sa_side(db: SQLAlchemy) -> Operation:
    """The insert through ``db.session``, on a model of ``db``'s own."""

    class Row(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        value: Mapped[int]

    async def operation() -> None:
        db.session.add_all([Row(name=f"row {i}", value=i) for i in range(ROWS)])
        await db.session.commit()
        await db.session.remove()

    return operation


async def run(backend: Backend, settings: Settings) -> list[Comparison]:
    options = backend.engine_options(**pool_options(backend))
    tracked = SQLAlchemy(
        url=backend.url, engine_options=options, track_modifications=True
    )
    untracked = SQLAlchemy(url=backend.url, engine_options=options)
    engine = backend.plain_engine(**pool_options(backend))
    scoped = sa_async.async_scoped_session(
        sa_async.async_sessionmaker(engine, expire_on_commit=False),
        scopefunc=asyncio.current_task,
    )
    received: list[int] = []

    def receiver(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        received.append(len(changes))

    async_sa.models_committed.connect(receiver, sender=tracked)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(PlainBase.metadata.create_all)

        async def by_hand() -> None:
            scoped.add_all([PlainRow(name=f"row {i}", value=i) for i in range(ROWS)])
            await scoped.commit()
            await scoped.remove()

        ops = settings.scale(8, 4)
        with_tracking = await interleave(
            async_sa_side(tracked), by_hand, settings, ops=ops
        )
        assert received and set(received) == {ROWS}, "the receiver was not called"
        without_tracking = await interleave(
            async_sa_side(untracked), by_hand, settings, ops=ops
        )
        batch = f"{ops} commits of {ROWS} rows"
        return [
            Comparison.of(
                f"bulk insert {ROWS} rows, tracking + 1 receiver",
                backend.label,
                TRACKING_TARGET,
                ("tracked", "plain"),
                with_tracking,
                batch=batch,
            ),
            Comparison.of(
                f"bulk insert {ROWS} rows, tracking off",
                backend.label,
                NO_TRACKING_TARGET,
                ("untracked", "plain"),
                without_tracking,
                batch=batch,
            ),
        ]
    finally:
        async_sa.models_committed.disconnect(receiver, sender=tracked)
        await tracked.dispose()
        await untracked.dispose()
        await engine.dispose()

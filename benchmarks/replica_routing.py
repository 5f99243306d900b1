"""Replica routing: reads routed to a replica against the same reads on a
single engine.

Two ``SQLAlchemy`` objects on the same database with the same options: one
plain, one whose default bind lists the same database as its replica (so the
replica does the same work as the primary and only the routing differs). Each
operation is a request's reads: a get by primary key and a Core ``select`` of
one column in a fresh session, then ``remove()``; with the replica, both go
through :class:`async_sa.replicas.ReplicaRouting` (the mixin's ``get_bind``,
the failover wrapper around execution, the replica's own pool). Target:
median ratio (replica / single engine) ≤ 1.02.

What a bind *without* replicas pays is one truthiness check per session made
(``Session.__init__``), nothing per statement: measured by instruction counts
(callgrind) rather than here, see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import itertools
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from benchmarks._backends import Backend
from benchmarks._harness import Comparison
from benchmarks._harness import interleave
from benchmarks._harness import Operation
from benchmarks._harness import Settings
from benchmarks.unit_of_work import pool_options

TARGET = 1.02
ROWS = 100
TABLE = "bench_replica_item"


def _model(db: SQLAlchemy) -> type[t.Any]:
    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(primary_key=True)
        counter: Mapped[int]

    return Item


def reads(db: SQLAlchemy, model: type[t.Any]) -> Operation:
    """A read-only request on the next of ``ROWS`` rows."""
    idents = itertools.cycle(range(1, ROWS + 1))
    table = model.__table__
    assert isinstance(table, sa.Table)

    async def operation() -> None:
        ident = next(idents)
        item = await db.session.get(model, ident)
        assert item is not None
        await db.session.scalar(sa.select(table.c.counter).where(table.c.id == ident))
        await db.session.remove()

    return operation


async def run(backend: Backend, settings: Settings) -> list[Comparison]:
    options = backend.engine_options(**pool_options(backend))
    single = SQLAlchemy(url=backend.url, engine_options=options)
    replicated = SQLAlchemy(
        binds={None: {"url": backend.url, **options, "replicas": [backend.url]}}
    )
    single_item, replicated_item = _model(single), _model(replicated)
    try:
        await single.create_all()
        single.session.add_all(single_item(id=i, counter=0) for i in range(1, ROWS + 1))
        await single.session.commit()
        await single.session.remove()
        samples = await interleave(
            reads(replicated, replicated_item),
            reads(single, single_item),
            settings,
            ops=settings.scale(64, 32),
        )
        await single.drop_all()
        return [
            Comparison.of(
                "replica routing: reads via a replica vs one engine",
                backend.label,
                TARGET,
                ("replica", "single engine"),
                samples,
                batch=f"{settings.scale(64, 32)} read requests",
            )
        ]
    finally:
        await single.dispose()
        await replicated.dispose()

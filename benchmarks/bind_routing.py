"""Bind routing: the same model on a bind key against it on the default engine.

One ``SQLAlchemy`` object whose default engine and ``"other"`` bind have the
same options and point at the same PostgreSQL database, or at two SQLite
files side by side; two identical models, one with
``__bind_key__ = "other"``. Each operation is a unit of work that routes
through both paths of ``get_bind``: the mapper (get by primary key, update,
commit) and a Core statement on the table (``select(table.c.counter)``),
then ``remove()``. Target: median ratio (bind / default) ≤ 1.02.
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


async def run(backend: Backend, settings: Settings) -> list[Comparison]:
    options = backend.engine_options(**pool_options(backend))
    db = SQLAlchemy(
        url=backend.url,
        binds={"other": {"url": backend.second_url(), **options}},
        engine_options=options,
    )

    class DefaultItem(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_route_default"
        id: Mapped[int] = mapped_column(primary_key=True)
        counter: Mapped[int]

    class BoundItem(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "other"
        __tablename__ = "bench_route_bound"
        id: Mapped[int] = mapped_column(primary_key=True)
        counter: Mapped[int]

    def unit_of_work(model: type[t.Any]) -> Operation:
        idents = itertools.cycle(range(1, ROWS + 1))
        table = model.__table__
        assert isinstance(table, sa.Table)

        async def operation() -> None:
            ident = next(idents)
            item = await db.session.get(model, ident)
            assert item is not None
            item.counter += 1
            await db.session.commit()
            await db.session.scalar(
                sa.select(table.c.counter).where(table.c.id == ident)
            )
            await db.session.remove()

        return operation

    try:
        await db.create_all()
        for model in (DefaultItem, BoundItem):
            db.session.add_all(model(id=i, counter=0) for i in range(1, ROWS + 1))
            await db.session.commit()
        await db.session.remove()
        samples = await interleave(
            unit_of_work(BoundItem),
            unit_of_work(DefaultItem),
            settings,
            ops=settings.scale(64, 32),
        )
        return [
            Comparison.of(
                "bind routing: model on a bind vs default",
                backend.label,
                TARGET,
                ("bind", "default"),
                samples,
                batch=f"{settings.scale(64, 32)} units",
            )
        ]
    finally:
        await db.dispose()

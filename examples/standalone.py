"""A plain asyncio script using async_sa on embedded SQLite.

Run it with ``python examples/standalone.py``: it creates two databases (the
default one and an ``audit`` bind), writes from concurrent tasks, and prints what
it did.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa


class Base(async_sa.Model, sa_orm.DeclarativeBase):
    """Our models' base: typed, and ``db.Model`` once given to ``SQLAlchemy``."""


workdir = Path(tempfile.mkdtemp(prefix="async_sa_example_"))
db = async_sa.SQLAlchemy(
    url=f"sqlite:///{workdir / 'notes.db'}",
    binds={"audit": f"sqlite:///{workdir / 'audit.db'}"},
    model_class=Base,
)


class Note(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


class AuditEntry(Base):
    __bind_key__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(sa.String(200))


async def write_note(number: int) -> None:
    """Each task has its own db.session; it is closed when the task ends."""
    db.session.add(Note(text=f"note {number}"))
    db.session.add(AuditEntry(message=f"task {number} wrote a note"))
    await db.session.commit()


async def main() -> None:
    async with db:
        await db.create_all()
        await asyncio.gather(*(write_note(number) for number in range(1, 6)))
        async with db.session() as session:
            notes = (await session.scalars(sa.select(Note).order_by(Note.id))).all()
            audit = await session.scalar(sa.select(sa.func.count(AuditEntry.id)))
        print(f"databases in {workdir}")
        print(f"{len(notes)} notes in the default database: {notes}")
        print(f"{audit} audit entries in the 'audit' bind")
        print(f"sessions left open: {len(db.session.registry.registry)}")


if __name__ == "__main__":
    asyncio.run(main())

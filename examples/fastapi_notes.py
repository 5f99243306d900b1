"""The notes API of ``examples/notes_app`` on FastAPI, with the ASGI middleware.

- ``POST /notes`` ``{"text": "..."}`` stores a note (201); the request's session
  is committed before the response starts (``commit_on_success=True``), and a
  commit that fails answers 500.
- ``GET /notes?page=1&per_page=20`` lists notes a page at a time (at most 50 per
  page; a page past the last is a 404).
- ``GET /notes/{id}`` returns one note, or FastAPI's 404.
- ``GET /audit`` lists the audit log: one entry per committed note change,
  written to the ``audit`` bind by a ``models_committed`` receiver.

The database is ``NOTES_DATABASE_URL`` (default ``sqlite:///notes.db``). Serve
``examples.fastapi_notes:app`` with any ASGI server; ``python -m
examples.fastapi_notes`` answers a few requests under hypercorn on 127.0.0.1,
on fresh databases in a temporary folder, and exits.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers'
# annotations at runtime, and ``Session`` is local to create_app.

import asyncio
import contextlib
import datetime
import os
import tempfile
import typing as t
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from fastapi import Depends
from fastapi import FastAPI
from pydantic import BaseModel
from pydantic import Field
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa
from async_sa.asgi import session_dependency
from async_sa.asgi import SessionMiddleware
from examples.demo import show

MAX_TEXT = 500


DATABASE_URL = os.environ.get("NOTES_DATABASE_URL", "sqlite:///notes.db")
"""The notes' database; the audit log goes to ``audit.db`` beside a SQLite
file, else to the same database, unless ``NOTES_AUDIT_DATABASE_URL`` says."""


def _audit_url(url: str) -> str | sa.URL:
    parsed = sa.make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return url
    return parsed.set(database=str(Path(database).with_name("audit.db")))


class Base(async_sa.Model, sa_orm.DeclarativeBase):
    """The models' base: typed, and ``db.Model`` once given to ``SQLAlchemy``."""


db = async_sa.SQLAlchemy(
    url=DATABASE_URL,
    binds={
        "audit": os.environ.get("NOTES_AUDIT_DATABASE_URL") or _audit_url(DATABASE_URL)
    },
    model_class=Base,
    track_modifications=True,
)
Session = Annotated[async_sa.AsyncSession, Depends(session_dependency(db))]
"""The request's session, for handlers that prefer it injected."""


class Note(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(MAX_TEXT))

    def to_json(self) -> dict[str, t.Any]:
        return {"id": self.id, "text": self.text}


class AuditEntry(Base):
    __bind_key__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    note_id: Mapped[int]
    operation: Mapped[str] = mapped_column(sa.String(10))
    at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True))


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT)


@async_sa.models_committed.connect
async def write_audit(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
    """Record every committed note change in the audit log.

    Runs inside ``commit()``, once the notes are durable; the committing session
    is finished, so the entries go through a session of their own.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    entries = [
        AuditEntry(note_id=note.id, operation=operation, at=now)
        for note, operation in changes
        if isinstance(note, Note)
    ]
    if entries:
        async with db.sessionmaker.begin() as session:
            session.add_all(entries)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await db.create_all()
    yield  # the middleware disposes the engines at shutdown


app = FastAPI(lifespan=lifespan)
app.add_middleware(SessionMiddleware, db=db, commit_on_success=True)


@app.post("/notes", status_code=201)
async def add_note(note_in: NoteIn, session: Session) -> dict[str, t.Any]:
    note = Note(text=note_in.text)
    session.add(note)
    await session.flush()
    return note.to_json()


@app.get("/notes/{note_id}")
async def get_note(note_id: int) -> dict[str, t.Any]:
    note = await db.get_or_404(Note, note_id, description=f"no note {note_id}")
    return note.to_json()


@app.get("/notes")
async def list_notes() -> dict[str, t.Any]:
    page = await db.paginate(sa.select(Note).order_by(Note.id), max_per_page=50)
    return {
        "items": [note.to_json() for note in page],
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
        "total": page.total,
    }


@app.get("/audit")
async def list_audit(session: Session) -> dict[str, t.Any]:
    entries = await session.scalars(
        sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(50)
    )
    return {
        "items": [
            {"note_id": entry.note_id, "operation": entry.operation}
            for entry in entries
        ]
    }


async def demo() -> None:
    """Serve on a free port of 127.0.0.1, send a few requests, print them and
    stop."""
    await show(
        app,
        [
            ("POST", "/notes", {"text": "buy milk"}),
            ("POST", "/notes", {"text": "ship it"}),
            ("POST", "/notes", {"text": ""}),
            ("GET", "/notes?per_page=1&page=2", None),
            ("GET", "/notes/99", None),
            ("GET", "/audit", None),
        ],
        DATABASE_URL,
    )


if __name__ == "__main__":
    os.environ.setdefault(
        "NOTES_DATABASE_URL",
        f"sqlite:///{tempfile.mkdtemp(prefix='async_sa_fastapi_notes_')}/notes.db",
    )
    from examples import fastapi_notes  # the models, on the demo's database

    asyncio.run(fastapi_notes.demo())

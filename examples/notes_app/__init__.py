"""A small Quart JSON API on async_sa: notes, with an audit log on a second bind.

- ``POST /notes`` ``{"text": "..."}`` stores a note (201); the request's session
  is committed after the response is built (``SQLALCHEMY_COMMIT_ON_SUCCESS``), and
  a commit that fails answers 500.
- ``GET /notes?page=1&per_page=20`` lists notes a page at a time (at most 50 per
  page; a page past the last is a 404).
- ``GET /notes/<id>`` returns one note, or 404.
- ``GET /audit`` lists the audit log: one entry per committed note change,
  written to the ``audit`` bind by a ``models_committed`` receiver.

Both databases are embedded SQLite files in the app's instance folder unless the
environment says otherwise: every ``QUART_*`` variable is read into ``app.config``
(``QUART_SQLALCHEMY_DATABASE_URI=postgresql://user@host/db``; the audit bind
follows the default database unless ``QUART_SQLALCHEMY_BINDS__audit`` is set).

Run it with ``python -m examples.notes_app`` (``--demo`` to see it answer a few
requests and exit).
"""

from __future__ import annotations

import datetime
import typing as t
from collections.abc import Mapping

import quart
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.exceptions import HTTPException

import async_sa

MAX_TEXT = 500


class Base(async_sa.Model, sa_orm.DeclarativeBase):
    """The models' base: typed, and ``db.Model`` once given to ``SQLAlchemy``."""


db = async_sa.SQLAlchemy(model_class=Base)


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

    def to_json(self) -> dict[str, t.Any]:
        return {
            "note_id": self.note_id,
            "operation": self.operation,
            "at": self.at.isoformat(),
        }


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


def create_app(
    config: Mapping[str, t.Any] | None = None, *, instance_path: str | None = None
) -> quart.Quart:
    """Build the app: defaults, then ``QUART_*`` environment variables, then
    ``config``.

    :param config: app.config values that win over the rest.
    :param instance_path: where relative SQLite paths go (an absolute path);
        Quart's default is ``./instance``.
    """
    app = quart.Quart(__name__, instance_path=instance_path)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite:///notes.db",
        SQLALCHEMY_COMMIT_ON_SUCCESS=True,
        SQLALCHEMY_TRACK_MODIFICATIONS=True,
    )
    app.config.from_prefixed_env()
    app.config.update(config or {})
    binds = dict(app.config.get("SQLALCHEMY_BINDS") or {})
    default_url = app.config["SQLALCHEMY_DATABASE_URI"]
    binds.setdefault(
        "audit",
        "sqlite:///audit.db" if str(default_url).startswith("sqlite") else default_url,
    )
    app.config["SQLALCHEMY_BINDS"] = binds
    db.init_app(app)

    @app.before_serving
    async def create_tables() -> None:
        await db.create_all()

    app.register_blueprint(api)
    app.register_error_handler(HTTPException, json_error)
    return app


async def json_error(error: HTTPException) -> tuple[dict[str, t.Any], int]:
    """Errors as JSON: ``{"error": "Not Found", "description": "..."}``."""
    return {"error": error.name, "description": error.description}, error.code or 500


api = quart.Blueprint("notes", __name__)


@api.post("/notes")
async def add_note() -> tuple[dict[str, t.Any], int]:
    body = await quart.request.get_json(silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT:
        quart.abort(400, description=f"send {{'text': ...}}, 1 to {MAX_TEXT} chars")
    note = Note(text=text)
    db.session.add(note)
    await db.session.flush()
    return note.to_json(), 201


@api.get("/notes/<int:note_id>")
async def get_note(note_id: int) -> dict[str, t.Any]:
    note = await db.get_or_404(Note, note_id, description=f"no note {note_id}")
    return note.to_json()


@api.get("/notes")
async def list_notes() -> dict[str, t.Any]:
    page = await db.paginate(sa.select(Note).order_by(Note.id), max_per_page=50)
    return {
        "items": [note.to_json() for note in page],
        "page": page.page,
        "per_page": page.per_page,
        "pages": page.pages,
        "total": page.total,
    }


@api.get("/audit")
async def list_audit() -> dict[str, t.Any]:
    entries = await db.session.scalars(
        sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(50)
    )
    return {"items": [entry.to_json() for entry in entries]}

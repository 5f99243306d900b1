"""Commit on success tells the truth: a 2xx means stored, a 5xx means not stored."""

from __future__ import annotations

import logging
import typing as t
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import quart
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import models_committed
from async_sa import ModelsCommittedError
from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import count
from tests.conftest import NewDb

Changes = list[tuple[t.Any, str]]
PASSWORD = "h4-not-logged"


class Site(t.NamedTuple):
    app: quart.Quart
    db: SQLAlchemy
    Note: type[t.Any]

    async def stored(self) -> int:
        return await count(self.db, self.Note, self.app)

    def checked_out(self) -> int:
        return checked_out(self.db, self.app)


async def make_site(
    new_db: NewDb, url: str | sa.URL, engine_options: dict[str, t.Any], path: Path
) -> Site:
    """An app committing on success, tracking, with views that store notes."""
    db = new_db()
    app = quart.Quart("notes", instance_path=str(path / "instance"))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options,
        SQLALCHEMY_COMMIT_ON_SUCCESS=True,
        SQLALCHEMY_TRACK_MODIFICATIONS=True,
        PROPAGATE_EXCEPTIONS=False,
    )
    db.init_app(app)

    class Note(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    @app.post("/notes/<int:note_id>")
    async def add(note_id: int) -> tuple[str, int]:
        db.session.add(Note(id=note_id))
        return "stored", 201

    @app.post("/notes/<int:note_id>/after-an-error")
    async def add_after_an_error(note_id: int) -> tuple[str, int]:
        db.session.add(Note(id=note_id))
        await db.session.flush()
        try:
            await db.session.execute(sa.insert(Note).values(id=1))
        except sa.exc.IntegrityError:
            pass
        return "stored?", 201

    async with app.app_context():
        await db.create_all()
    return Site(app, db, Note)


@pytest.fixture
async def site(new_db: NewDb, backend: Backend, tmp_path: Path) -> AsyncIterator[Site]:
    url = sa.make_url(backend.url)
    if backend.is_postgres:
        url = url.set(password=PASSWORD)
    yield await make_site(new_db, url, backend.engine_options, tmp_path)


@pytest.mark.parametrize("propagate", [False, True], ids=["serving", "testing"])
async def test_failing_receiver_after_a_durable_commit_keeps_the_2xx(
    site: Site, caplog: pytest.LogCaptureFixture, propagate: bool
) -> None:
    """A models_committed receiver failing once the data is stored: the client
    gets the 201 (a 500 would make it send the data again), the failure is
    logged with its traceback and without the password."""
    site.app.config["PROPAGATE_EXCEPTIONS"] = propagate

    def audit(sender: t.Any, changes: Changes) -> None:
        raise ConnectionError("the audit database is down")

    with models_committed.connected_to(audit), caplog.at_level(logging.ERROR):
        response = await site.app.test_client().post("/notes/7")
    assert response.status_code == 201
    assert await site.stored() == 1
    [record] = [r for r in caplog.records if r.name == "async_sa.quart"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ModelsCommittedError)
    assert isinstance(record.exc_info[1].__cause__, ConnectionError)
    assert "durable" in caplog.text
    assert "the audit database is down" in caplog.text
    assert PASSWORD not in caplog.text
    assert site.checked_out() == 0


async def test_commit_after_a_caught_error_is_a_500_where_it_stores_nothing(
    site: Site, backend: Backend
) -> None:
    """The view catches a failed statement and answers 201. PostgreSQL aborted
    the transaction: the commit would store nothing, so the client gets a 500
    and no models_committed is sent. SQLite and MariaDB kept it: 201, stored,
    reported."""
    sent: list[Changes] = []

    def record(sender: t.Any, changes: Changes) -> None:
        sent.append(changes)

    client = site.app.test_client()
    assert (await client.post("/notes/1")).status_code == 201
    with models_committed.connected_to(record):
        response = await client.post("/notes/2/after-an-error")
    if backend.is_postgres:
        assert (response.status_code, await site.stored(), sent) == (500, 1, [])
    else:
        assert (response.status_code, await site.stored(), len(sent)) == (201, 2, 1)
    assert site.checked_out() == 0

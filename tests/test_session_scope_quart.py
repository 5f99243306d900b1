"""db.session.shared() with Quart: the test, test-client requests and background
tasks share one session, which request teardown leaves open."""

from __future__ import annotations

import asyncio
import typing as t

import pytest
import quart
import sqlalchemy as sa

from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import count
from tests.conftest import NewDb
from tests.conftest import note_model

App = tuple[quart.Quart, SQLAlchemy, type[t.Any]]


@pytest.fixture
async def notes(backend: Backend, new_db: NewDb, tmp_path: t.Any) -> App:
    """An app on ``backend`` whose views read, rename and add notes, committing."""
    return await notes_app(backend, new_db, tmp_path)


async def notes_app(backend: Backend, new_db: NewDb, tmp_path: t.Any) -> App:
    """An app on ``backend`` whose views read, rename and add notes, committing;
    its table created."""
    app = quart.Quart("notes", instance_path=str(tmp_path / "instance"))
    app.config["SQLALCHEMY_DATABASE_URI"] = backend.url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = backend.engine_options
    db = new_db()
    db.init_app(app)
    Note = note_model(db)

    @app.get("/notes/<int:note_id>")
    async def read(note_id: int) -> str:
        note = await db.get_or_404(Note, note_id)
        return str(note.text)

    @app.post("/notes/<int:note_id>/rename")
    async def rename(note_id: int) -> str:
        note = await db.get_or_404(Note, note_id)
        note.text = await quart.request.get_data(as_text=True)
        await db.session.commit()
        return ""

    @app.post("/notes/later")
    async def later() -> str:
        async def add() -> None:
            db.session.add(Note(text="from the background"))
            await db.session.commit()

        app.add_background_task(add)
        return ""

    async with app.app_context():
        await db.create_all()
    return app, db, Note


async def test_a_request_changes_the_tests_object_and_the_test_sees_it(
    notes: App,
) -> None:
    """The test's object stays attached through requests: a request's commit
    is what the test reads back, on the same object."""
    app, db, Note = notes
    client = app.test_client()
    async with db.session.shared():
        async with app.app_context():
            note = Note(text="first")
            db.session.add(note)
            await db.session.commit()
        response = await client.post(f"/notes/{note.id}/rename", data="renamed")
        assert response.status_code == 200
        assert note.text == "renamed"
        assert note in db.session
        response = await client.get(f"/notes/{note.id}")
        assert await response.get_data(as_text=True) == "renamed"
        async with app.app_context():
            found = await db.session.get(Note, note.id)
            assert found is not None and found is note
            found.text = "by the test"
            await db.session.commit()
    assert checked_out(db, app) == 0
    async with app.app_context():
        assert await db.session.scalar(sa.select(Note.text)) == "by the test"
        await db.session.remove()


async def test_request_teardown_leaves_the_shared_session_open(
    notes: App,
) -> None:
    """A request's teardown does not close (or roll back) the shared session:
    the test's uncommitted object, flushed by the request's query, is still
    there after the request; the scope's end rolls it back."""
    app, db, Note = notes
    async with db.session.shared():
        async with app.app_context():
            pending = Note(text="pending")
            db.session.add(pending)
        response = await app.test_client().get("/notes/999")
        assert response.status_code == 404
        assert pending in db.session
        assert db.session.in_transaction()
    assert checked_out(db, app) == 0
    assert await count(db, Note, app) == 0


async def test_a_background_task_awaited_by_the_test_shares_the_session(
    notes: App,
) -> None:
    """``app.add_background_task`` work runs on the shared session; once the
    test awaits it, the test sees the row."""
    app, db, Note = notes
    async with db.session.shared():
        await app.test_client().post("/notes/later")
        await asyncio.gather(*app.background_tasks)
        async with app.app_context():
            texts = (await db.session.scalars(sa.select(Note.text))).all()
            assert texts == ["from the background"]
    assert checked_out(db, app) == 0

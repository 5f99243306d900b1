"""db.test_isolation() under Quart: the app's engines, its test client's requests
and background tasks are isolated, and the test sees what they committed."""

from __future__ import annotations

import asyncio
import typing as t

import pytest
import quart
import sqlalchemy as sa

from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import count
from tests.conftest import NewDb
from tests.conftest import note_model
from tests.test_session_scope_quart import App
from tests.test_session_scope_quart import notes_app


@pytest.fixture
async def notes(backend: Backend, new_db: NewDb, tmp_path: t.Any) -> App:
    """An app on ``backend`` whose views read, rename and add notes, committing."""
    return await notes_app(backend, new_db, tmp_path)


async def test_requests_and_background_tasks_are_rolled_back(notes: App) -> None:
    """What the test, a request and a background task commit is visible to the
    test inside the isolation, and gone after it."""
    app, db, Note = notes
    client = app.test_client()
    async with app.app_context(), db.test_isolation():
        note = Note(text="by the test")
        db.session.add(note)
        await db.session.commit()
        await client.post(f"/notes/{note.id}/rename", data="by a request")
        await client.post("/notes/later")
        await asyncio.gather(*app.background_tasks)
        texts = await db.session.scalars(sa.select(Note.text).order_by(Note.id))
        assert texts.all() == ["by a request", "from the background"]
        assert note.text == "by a request"
    assert checked_out(db, app) == 0
    assert await count(db, Note, app) == 0


async def test_the_isolation_is_the_apps_whose_context_is_active(
    notes: App, backend: Backend, tmp_path: t.Any
) -> None:
    """One db serving two apps: only the app in context is isolated."""
    app, db, Note = notes
    other = quart.Quart("other", instance_path=str(tmp_path / "other"))
    other.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'other.db'}"
    db.init_app(other)
    async with other.app_context():
        await db.create_all()
    async with app.app_context(), db.test_isolation():
        async with other.app_context():
            db.session.add(Note(text="other app"))
            await db.session.commit()
            await db.session.remove()
    assert await count(db, Note, other) == 1
    async with other.app_context():
        await db.dispose()


async def test_an_app_without_init_app_is_refused(notes: App) -> None:
    """The isolation for an app the db is not registered with fails naming
    init_app, before opening anything."""
    _app, db, _Note = notes
    stranger = quart.Quart("stranger")
    async with stranger.app_context():
        with pytest.raises(RuntimeError, match="init_app"):
            async with db.test_isolation():
                pass


async def test_commit_on_success_commits_inside_the_isolation(
    backend: Backend, new_db: NewDb, tmp_path: t.Any
) -> None:
    """With SQLALCHEMY_COMMIT_ON_SUCCESS, a request's work is committed after
    the response (another session sees it inside) and rolled back at exit."""
    app = quart.Quart("cos", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=backend.url,
        SQLALCHEMY_ENGINE_OPTIONS=backend.engine_options,
        SQLALCHEMY_COMMIT_ON_SUCCESS=True,
    )
    db = new_db()
    db.init_app(app)
    Note = note_model(db)

    @app.post("/notes")
    async def add() -> tuple[str, int]:
        db.session.add(Note(text="committed on success"))
        return "", 201

    async with app.app_context():
        await db.create_all()
    async with app.app_context(), db.test_isolation():
        assert (await app.test_client().post("/notes")).status_code == 201
        assert not db.session.new
        async with db.sessionmaker() as session:
            assert await session.scalar(sa.select(Note.text)) == "committed on success"
    assert checked_out(db, app) == 0
    assert await count(db, Note, app) == 0

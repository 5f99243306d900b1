"""The session lifecycle under a real hypercorn server on 127.0.0.1.

Requests, a websocket, a background task, ``asyncio.gather`` children and a client
that disconnects while its handler awaits the database: afterwards no connection
is checked out, nothing uncommitted was stored and, on PostgreSQL, no backend of
ours is left ``idle in transaction``.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing as t
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import quart
import sqlalchemy as sa

from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import note_model
from tests.servers import assert_nothing_left_open
from tests.servers import named_engine_options
from tests.servers import serving
from tests.servers import TIMEOUT
from tests.servers import websocket_exchange


@pytest.fixture
async def served_db() -> AsyncIterator[SQLAlchemy]:
    db = SQLAlchemy()
    yield db
    await db.dispose()


class NotesApp:
    """The app under test, with hooks that let the test follow its handlers."""

    def __init__(self, db: SQLAlchemy, backend: Backend, tmp_path: Path) -> None:
        self.db = db
        self.backend = backend
        options, self.application_name = named_engine_options(backend)
        app = self.app = quart.Quart("served", instance_path=str(tmp_path))
        app.config.update(
            SQLALCHEMY_DATABASE_URI=backend.url,
            SQLALCHEMY_ENGINE_OPTIONS=options,
        )
        db.init_app(app)

        self.Note = Note = note_model(db)
        self.slow_reached = asyncio.Event()
        self.failed_teardowns: asyncio.Queue[BaseException] = asyncio.Queue()

        @app.teardown_appcontext
        async def record_failed_teardown(exc: BaseException | None) -> None:
            """Runs after the extension's teardown (registered later)."""
            if exc is not None:
                self.failed_teardowns.put_nowait(exc)

        @app.post("/notes/<text>")
        async def add(text: str) -> tuple[str, int]:
            note = Note(text=text)
            db.session.add(note)
            await db.session.commit()
            db.session.add(Note(text="never committed"))
            await db.session.flush()
            return str(note.id), 201

        @app.get("/gather")
        async def gather() -> str:
            async def count() -> int:
                return await db.session.scalar(sa.select(sa.func.count(Note.id))) or 0

            counts = await asyncio.gather(*(count() for _ in range(3)))
            return str(sum(counts))

        async def write_later(text: str) -> None:
            db.session.add(Note(text=text))
            await db.session.commit()
            db.session.add(Note(text="never committed"))
            await db.session.flush()

        @app.post("/later/<text>")
        async def later(text: str) -> tuple[str, int]:
            app.add_background_task(write_later, text)
            return "accepted", 202

        @app.post("/slow")
        async def slow() -> str:
            db.session.add(Note(text="abandoned"))
            await db.session.flush()
            self.slow_reached.set()
            if backend.is_postgres:
                await db.session.execute(sa.text("SELECT pg_sleep(30)"))
            else:
                await asyncio.sleep(30)
            return "too late"

        @app.websocket("/ws")
        async def ws() -> None:
            text = await quart.websocket.receive()
            note = Note(text=str(text))
            db.session.add(note)
            await db.session.commit()
            db.session.add(Note(text="never committed"))
            await db.session.flush()
            await quart.websocket.send(str(note.id))

    async def create_tables(self) -> None:
        async with self.app.app_context():
            await self.db.create_all()

    async def texts(self) -> list[str]:
        async with self.app.app_context(), self.db.sessionmaker() as session:
            return sorted((await session.scalars(sa.select(self.Note.text))).all())

    async def assert_nothing_left_open(self) -> None:
        """No session registered, no connection checked out, none idle in tx."""
        await assert_nothing_left_open(
            self.db, self.app, self.backend, self.application_name
        )


@pytest.fixture
async def notes(
    served_db: SQLAlchemy, backend: Backend, tmp_path: Path
) -> AsyncIterator[NotesApp]:
    notes = NotesApp(served_db, backend, tmp_path)
    await notes.create_tables()
    yield notes


async def test_requests_websocket_background_and_gather_children(
    notes: NotesApp,
) -> None:
    """Every kind of handler has its session removed; only commits are stored."""
    async with serving(notes.app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            created = await asyncio.gather(
                *(client.post(f"/notes/request {n}") for n in range(5))
            )
            assert [r.status_code for r in created] == [201] * 5
            later = await client.post("/later/background")
            assert later.status_code == 202
            reply = await asyncio.wait_for(
                websocket_exchange(server.port, "/ws", "websocket"), TIMEOUT
            )
            assert reply.isdigit()
            await asyncio.wait_for(asyncio.gather(*notes.app.background_tasks), TIMEOUT)
            gathered = await client.get("/gather")
            assert gathered.status_code == 200
            assert gathered.text == str(3 * 7)
        await notes.assert_nothing_left_open()
    assert await notes.texts() == sorted(
        [f"request {n}" for n in range(5)] + ["background", "websocket"]
    )


async def test_client_disconnect_mid_request_leaves_nothing_open(
    notes: NotesApp,
) -> None:
    """A client that goes away while its handler awaits the database: the handler
    is cancelled, its work rolled back, its connection returned."""
    async with serving(notes.app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            request = asyncio.create_task(client.post("/slow"))
            await asyncio.wait_for(notes.slow_reached.wait(), TIMEOUT)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            exc = await asyncio.wait_for(notes.failed_teardowns.get(), TIMEOUT)
            assert isinstance(exc, asyncio.CancelledError)
            await notes.assert_nothing_left_open()
            after = await client.post("/notes/after")
            assert after.status_code == 201
        await notes.assert_nothing_left_open()
    assert await notes.texts() == ["after"]


async def test_each_served_request_has_its_own_session(
    notes: NotesApp,
) -> None:
    """Concurrent requests never share a session; each is closed afterwards."""
    sessions: list[t.Any] = []

    @notes.app.get("/session")
    async def session_id() -> str:
        sessions.append(notes.db.session())
        return "ok"

    async with serving(notes.app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            responses = await asyncio.gather(
                *(client.get("/session") for _ in range(4))
            )
    assert [r.status_code for r in responses] == [200] * 4
    assert len({id(session) for session in sessions}) == 4
    assert all(not session.in_transaction() for session in sessions)

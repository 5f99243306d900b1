"""The same notes app on Starlette, FastAPI and Litestar, for the ASGI tests,
and each framework's own test client.

Each app has the routes below, wrapped in :class:`async_sa.asgi.SessionMiddleware`
the way its framework does it; a framework that is not installed is skipped
with the reason.

- ``POST /notes/{text}``: adds a note and flushes; 201 with its id.
- ``POST /committed/{text}``: adds a note and commits, then flushes one more
  that nobody commits; 201 with the first one's id.
- ``POST /refused/{text}``: adds a note and flushes; answers 400.
- ``POST /later/{text}``: 202, then a background task commits the note (and
  flushes one more that nobody commits).
- ``GET /notes/{id}``: the note's text, or the 404 of ``get_or_404``.
- ``GET /page``: the ids of the page ``db.paginate`` picks from the query string.
- ``GET /gather``: the sum of three note counts from ``asyncio.gather`` children.
- ``POST /slow``: flushes a note, sets :attr:`Hooks.slow_reached`, then waits
  30 s on the database (PostgreSQL) or asyncio.
- websocket ``/ws``: commits the text received as a note, flushes one more,
  sends the first one's id.
"""

# No ``from __future__ import annotations``: FastAPI and Litestar read the
# handlers' annotations at runtime, and those name classes imported inside the
# builders (the frameworks are optional), which strings could not resolve.

import asyncio
import dataclasses
import typing as t

import pytest
import sqlalchemy as sa

from async_sa import SQLAlchemy
from async_sa.asgi import SessionMiddleware
from tests.conftest import note_model

FRAMEWORKS = ["starlette", "fastapi", "litestar"]


@dataclasses.dataclass
class Hooks:
    """What lets a test follow the handlers."""

    slow_reached: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    background_done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class Handlers:
    """The framework-independent body of every route."""

    def __init__(self, db: SQLAlchemy, is_postgres: bool) -> None:
        self.db = db
        self.is_postgres = is_postgres
        self.hooks = Hooks()

        self.Note = note_model(db)

    async def add(self, text: str) -> int:
        note = self.Note(text=text)
        self.db.session.add(note)
        await self.db.session.flush()
        return int(note.id)

    async def committed(self, text: str) -> int:
        note = self.Note(text=text)
        self.db.session.add(note)
        await self.db.session.commit()
        self.db.session.add(self.Note(text="never committed"))
        await self.db.session.flush()
        return int(note.id)

    async def later(self, text: str) -> None:
        try:
            await self.committed(text)
        finally:
            self.hooks.background_done.set()

    async def text_of(self, ident: str) -> str:
        note = await self.db.get_or_404(self.Note, ident, description="no such note")
        return str(note.text)

    async def page(self) -> list[int]:
        page = await self.db.paginate(sa.select(self.Note).order_by(self.Note.id))
        return [note.id for note in page]

    async def gather(self) -> int:
        async def count() -> int:
            query = sa.select(sa.func.count(self.Note.id))
            return await self.db.session.scalar(query) or 0

        return sum(await asyncio.gather(*(count() for _ in range(3))))

    async def slow(self) -> str:
        await self.add("abandoned")
        self.hooks.slow_reached.set()
        if self.is_postgres:
            await self.db.session.execute(sa.text("SELECT pg_sleep(30)"))
        else:
            await asyncio.sleep(30)
        return "too late"

    async def texts(self) -> list[str]:
        """Every stored text, as a fresh session sees them."""
        async with self.db.sessionmaker() as session:
            return sorted((await session.scalars(sa.select(self.Note.text))).all())


def make_app(
    framework: str, handlers: Handlers, *, commit_on_success: bool = False
) -> t.Any:
    """The notes app on ``framework``, wrapped in the middleware."""
    build = {"starlette": _starlette, "fastapi": _fastapi, "litestar": _litestar}
    return build[framework](handlers, commit_on_success)


def _starlette(h: Handlers, commit_on_success: bool) -> t.Any:
    pytest.importorskip("starlette", reason="Starlette is not installed")
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def add(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(await h.add(request.path_params["text"])), 201)

    async def committed(request: Request) -> PlainTextResponse:
        ident = await h.committed(request.path_params["text"])
        return PlainTextResponse(str(ident), 201)

    async def refused(request: Request) -> PlainTextResponse:
        await h.add(request.path_params["text"])
        return PlainTextResponse("refused", 400)

    async def later(request: Request) -> PlainTextResponse:
        task = BackgroundTask(h.later, request.path_params["text"])
        return PlainTextResponse("accepted", 202, background=task)

    async def text_of(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await h.text_of(request.path_params["ident"]))

    async def page(request: Request) -> JSONResponse:
        return JSONResponse(await h.page())

    async def gather(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(await h.gather()))

    async def slow(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await h.slow())

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(str(await h.committed(text)))
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/notes/{text}", add, methods=["POST"]),
            Route("/committed/{text}", committed, methods=["POST"]),
            Route("/refused/{text}", refused, methods=["POST"]),
            Route("/later/{text}", later, methods=["POST"]),
            Route("/notes/{ident}", text_of),
            Route("/page", page),
            Route("/gather", gather),
            Route("/slow", slow, methods=["POST"]),
            WebSocketRoute("/ws", ws),
        ]
    )
    app.add_middleware(SessionMiddleware, db=h.db, commit_on_success=commit_on_success)
    return app


def _fastapi(h: Handlers, commit_on_success: bool) -> t.Any:
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    from fastapi import BackgroundTasks
    from fastapi import FastAPI
    from fastapi import WebSocket
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    app.add_middleware(SessionMiddleware, db=h.db, commit_on_success=commit_on_success)

    @app.post("/notes/{text}", status_code=201)
    async def add(text: str) -> int:
        return await h.add(text)

    @app.post("/committed/{text}", status_code=201)
    async def committed(text: str) -> int:
        return await h.committed(text)

    @app.post("/refused/{text}")
    async def refused(text: str) -> PlainTextResponse:
        await h.add(text)
        return PlainTextResponse("refused", 400)

    @app.post("/later/{text}", status_code=202)
    async def later(text: str, tasks: BackgroundTasks) -> str:
        tasks.add_task(h.later, text)
        return "accepted"

    @app.get("/notes/{ident}", response_class=PlainTextResponse)
    async def text_of(ident: str) -> str:
        return await h.text_of(ident)

    @app.get("/page")
    async def page() -> list[int]:
        return await h.page()

    @app.get("/gather", response_class=PlainTextResponse)
    async def gather() -> str:
        return str(await h.gather())

    @app.post("/slow", response_class=PlainTextResponse)
    async def slow() -> str:
        return await h.slow()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(str(await h.committed(text)))
        await websocket.close()

    return app


def _litestar(h: Handlers, commit_on_success: bool) -> t.Any:
    pytest.importorskip("litestar", reason="Litestar is not installed")
    from litestar import get
    from litestar import Litestar
    from litestar import MediaType
    from litestar import post
    from litestar import Response
    from litestar import websocket
    from litestar.background_tasks import BackgroundTask
    from litestar.connection import Request
    from litestar.connection import WebSocket

    def param(request: Request[t.Any, t.Any, t.Any], name: str) -> str:
        # Read from the request: inferred path parameters are deprecated in
        # Litestar 2.x, and their replacement is missing from older versions.
        return str(request.path_params[name])

    @post("/notes/{text:str}", media_type=MediaType.TEXT)
    async def add(request: Request[t.Any, t.Any, t.Any]) -> str:
        return str(await h.add(param(request, "text")))

    @post("/committed/{text:str}", media_type=MediaType.TEXT)
    async def committed(request: Request[t.Any, t.Any, t.Any]) -> str:
        return str(await h.committed(param(request, "text")))

    @post("/refused/{text:str}", media_type=MediaType.TEXT)
    async def refused(request: Request[t.Any, t.Any, t.Any]) -> Response[str]:
        await h.add(param(request, "text"))
        return Response("refused", status_code=400)

    @post("/later/{text:str}", media_type=MediaType.TEXT, status_code=202)
    async def later(request: Request[t.Any, t.Any, t.Any]) -> Response[str]:
        return Response(
            "accepted", background=BackgroundTask(h.later, param(request, "text"))
        )

    @get("/notes/{ident:str}", media_type=MediaType.TEXT)
    async def text_of(request: Request[t.Any, t.Any, t.Any]) -> str:
        return await h.text_of(param(request, "ident"))

    @get("/page")
    async def page() -> list[int]:
        return await h.page()

    @get("/gather", media_type=MediaType.TEXT)
    async def gather() -> str:
        return str(await h.gather())

    @post("/slow", media_type=MediaType.TEXT)
    async def slow() -> str:
        return await h.slow()

    @websocket("/ws")
    async def ws(socket: WebSocket[t.Any, t.Any, t.Any]) -> None:
        await socket.accept()
        text = await socket.receive_text()
        await socket.send_text(str(await h.committed(text)))
        await socket.close()

    app = Litestar(
        [add, committed, refused, later, text_of, page, gather, slow, ws],
    )
    # Wrapping the app itself (rather than DefineMiddleware, which wraps each
    # route) lets the lifespan through, so the engines are disposed at shutdown.
    return SessionMiddleware(app, db=h.db, commit_on_success=commit_on_success)


def own_test_client(framework: str, app: t.Any) -> t.Any:
    """``framework``'s own test client for ``app``: Starlette's ``TestClient``
    (FastAPI's is the same class), or Litestar's.

    Both are synchronous: each runs the app in a thread of its own, on an event
    loop of its own (anyio's blocking portal). Used as a context manager, the
    client keeps one such loop for all its requests and runs the lifespan around
    them; without, every request gets a fresh loop, ended with the request. A
    request returns once the app has returned, background tasks included. An
    error escaping the app becomes a 500, as a server answers it, instead of
    being raised in the test.
    """
    if framework == "litestar":
        from litestar.testing import TestClient as LitestarTestClient

        return LitestarTestClient(app, raise_server_exceptions=False)
    from starlette.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)

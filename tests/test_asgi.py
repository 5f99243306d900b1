"""The ASGI middleware on Starlette, FastAPI and Litestar, on every backend,
served two ways: by a real hypercorn server on 127.0.0.1, and by the
framework's own test client (which runs the app in a thread with an event loop
of its own; see :func:`tests.asgi_apps.own_test_client`). The lifecycle and
reliability cases of the Quart extension (tests/test_quart_server.py,
test_quart_commit_on_success.py) where they apply.

Afterwards no session is registered, no connection is checked out, nothing
uncommitted was stored and, on a server, no connection of ours is left
``idle in transaction``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing as t
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa

from async_sa import models_committed
from async_sa import Session
from async_sa import SQLAlchemy
from async_sa.asgi import ASGI
from async_sa.asgi import SessionMiddleware
from tests.asgi_apps import FRAMEWORKS
from tests.asgi_apps import Handlers
from tests.asgi_apps import make_app
from tests.asgi_apps import own_test_client
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import NewDb
from tests.servers import assert_nothing_left_open
from tests.servers import named_engine_options
from tests.servers import serving
from tests.servers import TIMEOUT
from tests.servers import websocket_exchange

TRANSPORTS = ["hypercorn", "test_client"]
"""How a test's requests reach the app: through a real server, or through the
framework's own test client."""
on_a_real_server = pytest.mark.parametrize("transport", ["hypercorn"], indirect=True)
"""For a case a test client cannot play (a client that goes away)."""


class Response(t.Protocol):
    """A response of httpx (hypercorn, Litestar's test client) or httpx2
    (Starlette's test client)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> t.Any: ...


class Client(t.Protocol):
    """Requests to the app under test, whatever serves it."""

    async def get(
        self, path: str, params: dict[str, t.Any] | None = None
    ) -> Response: ...

    async def post(self, path: str) -> Response: ...

    async def websocket(self, path: str, text: str) -> str:
        """Open a websocket, send ``text``, return the first text received."""


class ServerClient:
    """An httpx client of a hypercorn server."""

    def __init__(self, client: httpx.AsyncClient, port: int) -> None:
        self.client = client
        self.port = port

    async def get(
        self, path: str, params: dict[str, t.Any] | None = None
    ) -> httpx.Response:
        return await self.client.get(path, params=params)

    async def post(self, path: str) -> httpx.Response:
        return await self.client.post(path)

    async def websocket(self, path: str, text: str) -> str:
        return await asyncio.wait_for(
            websocket_exchange(self.port, path, text), TIMEOUT
        )


class TestClientInThreads:
    """A framework's synchronous test client, called from worker threads: the
    test's event loop keeps running meanwhile (concurrent requests stay
    concurrent)."""

    __test__ = False

    def __init__(self, client: t.Any) -> None:
        self.client = client

    async def get(self, path: str, params: dict[str, t.Any] | None = None) -> Response:
        response: Response = await asyncio.to_thread(
            self.client.get, path, params=params
        )
        return response

    async def post(self, path: str) -> Response:
        response: Response = await asyncio.to_thread(self.client.post, path)
        return response

    async def websocket(self, path: str, text: str) -> str:
        def exchange() -> str:
            with self.client.websocket_connect(path) as socket:
                socket.send_text(text)
                return str(socket.receive_text())

        return await asyncio.to_thread(exchange)


class Served:
    """A notes app of one framework on one backend, how it is served, and what
    the test checks."""

    def __init__(
        self, framework: str, transport: str, backend: Backend, new_db: NewDb
    ) -> None:
        self.framework = framework
        self.transport = transport
        self.backend = backend
        options, self.application_name = named_engine_options(backend)
        self.db = new_db(
            url=backend.url, engine_options=options, track_modifications=True
        )
        self.handlers = Handlers(self.db, backend.is_postgres)

    def app(self, *, commit_on_success: bool = False) -> t.Any:
        return make_app(
            self.framework, self.handlers, commit_on_success=commit_on_success
        )

    @contextlib.asynccontextmanager
    async def client(self, *, commit_on_success: bool = False) -> AsyncIterator[Client]:
        """The app, served through the test's transport for the block (its
        lifespan started before and shut down after)."""
        app = self.app(commit_on_success=commit_on_success)
        if self.transport == "hypercorn":
            async with serving(app) as server:
                async with httpx.AsyncClient(
                    base_url=server.url, timeout=TIMEOUT
                ) as client:
                    yield ServerClient(client, server.port)
            return
        test_client = own_test_client(self.framework, app)
        await asyncio.to_thread(test_client.__enter__)
        try:
            yield TestClientInThreads(test_client)
        finally:
            await asyncio.to_thread(test_client.__exit__, None, None, None)

    async def assert_nothing_left_open(self) -> None:
        """No session registered, no connection checked out, none idle in tx."""
        await assert_nothing_left_open(
            self.db, None, self.backend, self.application_name
        )


class ListHandler(logging.Handler):
    """Keeps the records logged at ERROR and above."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """How the app is served: see :data:`TRANSPORTS`."""
    return t.cast(str, request.param)


@pytest.fixture(params=FRAMEWORKS)
async def served(
    request: pytest.FixtureRequest, transport: str, backend: Backend, new_db: NewDb
) -> AsyncIterator[Served]:
    """The notes app on each framework, transport and backend, its tables
    created."""
    served = Served(request.param, transport, backend, new_db)
    await served.db.create_all()
    await served.db.session.remove()
    yield served


async def test_requests_websocket_background_and_gather_children(
    served: Served,
) -> None:
    """Every kind of handler has its session closed; only commits are stored."""
    async with served.client() as client:
        created = await asyncio.gather(
            *(client.post(f"/committed/request {n}") for n in range(5))
        )
        assert [r.status_code for r in created] == [201] * 5
        flushed = await client.post("/notes/flushed only")
        assert flushed.status_code == 201
        later = await client.post("/later/background")
        assert later.status_code == 202
        await asyncio.wait_for(served.handlers.hooks.background_done.wait(), TIMEOUT)
        reply = await client.websocket("/ws", "websocket")
        assert reply.isdigit()
        gathered = await client.get("/gather")
        assert gathered.status_code == 200
        assert gathered.text == str(3 * 7)
        await served.assert_nothing_left_open()
    assert await served.handlers.texts() == sorted(
        [f"request {n}" for n in range(5)] + ["background", "websocket"]
    )


@on_a_real_server
async def test_client_disconnect_mid_request_leaves_nothing_open(
    served: Served,
) -> None:
    """A client that goes away while its handler awaits the database: the handler
    is cancelled, its work rolled back, its connection returned."""
    async with serving(served.app()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            request = asyncio.create_task(client.post("/slow"))
            await asyncio.wait_for(served.handlers.hooks.slow_reached.wait(), TIMEOUT)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            await served.assert_nothing_left_open()
            after = await client.post("/committed/after")
            assert after.status_code == 201
        await served.assert_nothing_left_open()
    assert await served.handlers.texts() == ["after"]


async def test_commit_on_success_stores_successes_only(served: Served) -> None:
    """With commit_on_success, a 2xx's flushed work is stored before the client
    hears of it; a 4xx's is rolled back."""
    async with served.client(commit_on_success=True) as client:
        stored = await client.post("/notes/stored")
        assert stored.status_code == 201
        assert await served.handlers.texts() == ["stored"]
        refused = await client.post("/refused/refused")
        assert refused.status_code == 400
        await served.assert_nothing_left_open()
    assert await served.handlers.texts() == ["stored"]


async def test_failed_commit_is_a_500_never_a_success(served: Served) -> None:
    """A commit that fails (a duplicate key, found only at commit) answers 500,
    stores nothing and leaves nothing open."""
    async with served.client(commit_on_success=True) as client:
        first = await client.post("/notes/first")
        assert first.status_code == 201

        def duplicate(session: sa.orm.Session) -> None:
            session.add(served.handlers.Note(id=int(first.text), text="dup"))

        sa.event.listen(Session, "before_commit", duplicate)
        try:
            failed = await client.post("/notes/second")
        finally:
            sa.event.remove(Session, "before_commit", duplicate)
        assert failed.status_code == 500
        await served.assert_nothing_left_open()
    assert await served.handlers.texts() == ["first"]


async def test_receiver_failing_after_a_durable_commit_keeps_the_response(
    served: Served,
) -> None:
    """A models_committed receiver failing once the data is stored is logged;
    the client gets its 2xx (a 5xx would make it send the data again)."""
    logged: list[logging.LogRecord] = []
    handler = ListHandler(logged)
    # A handler of our own: Litestar reconfigures logging, pytest's caplog with it.
    logging.getLogger("async_sa.asgi").addHandler(handler)

    def audit(sender: t.Any, changes: t.Any) -> None:
        raise RuntimeError("the audit database is down")

    try:
        async with served.client(commit_on_success=True) as client:
            with models_committed.connected_to(audit):
                stored = await client.post("/notes/stored")
    finally:
        logging.getLogger("async_sa.asgi").removeHandler(handler)
    assert stored.status_code == 201
    [record] = logged
    assert "durable" in record.getMessage()
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert "the audit database is down" in str(error and error.__cause__)
    assert await served.handlers.texts() == ["stored"]


async def test_not_found_and_pagination(served: Served) -> None:
    """get_or_404 answers the framework's 404 with the description; paginate
    reads page and per_page from the query string."""
    async with served.client() as client:
        for n in range(7):
            await client.post(f"/committed/note {n}")
        missing = await client.get("/notes/12345")
        assert missing.status_code == 404
        assert "no such note" in missing.text
        malformed = await client.get("/notes/abc")
        assert malformed.status_code == 404
        every = (await client.get("/page", params={"per_page": 100})).json()
        assert len(every) == 7
        page = await client.get("/page", params={"page": 2, "per_page": 3})
        assert page.status_code == 200
        assert page.json() == every[3:6]
        past = await client.get("/page", params={"page": 9, "per_page": 3})
        assert past.status_code == 404
        bad = await client.get("/page", params={"page": "x"})
        assert bad.status_code == 404
        await served.assert_nothing_left_open()


async def test_lifespan_shutdown_disposes_the_engines(served: Served) -> None:
    """When the app's lifespan ends, the db's engines are disposed: no idle
    connection is left in the pool, the test's own loop's included (a test
    client's requests run in a loop of their own)."""
    async with served.client() as client:
        assert (await client.get("/gather")).status_code == 200
        # The response can reach the client before the request's session has
        # given its connections back.
        await served.assert_nothing_left_open()
        pool = served.db.engine.pool
        assert pool.checkedin() > 0  # type: ignore[attr-defined]
    assert pool.checkedin() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", ["test_client"], indirect=True)
async def test_test_client_without_lifespan_leaves_no_connection_of_its_loops(
    served: Served,
) -> None:
    """A test client used without ``with`` (as FastAPI's documentation does)
    runs each request in an event loop of its own, ended with the request: the
    connections opened there are closed with that loop, none is left checked
    out, pooled or open on the server, and the next request works."""
    pool = served.db.engine.pool
    idle_before = pool.checkedin()  # type: ignore[attr-defined]
    client = own_test_client(served.framework, served.app())
    for n in range(3):
        response = await asyncio.to_thread(client.post, f"/committed/note {n}")
        assert response.status_code == 201
    page = await asyncio.to_thread(client.get, "/page")
    assert len(page.json()) == 3
    assert pool.checkedin() == idle_before  # type: ignore[attr-defined]
    assert checked_out(served.db) == 0
    # The test's loop holds the pooled connection of create_all(), no other.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while await served.backend.count_connections(served.application_name) > 1:
        assert loop.time() < deadline, "connections of ended loops still open"
        await asyncio.sleep(0.01)
    await served.assert_nothing_left_open()
    assert await served.handlers.texts() == [f"note {n}" for n in range(3)]


async def test_plain_asgi_app_gets_a_plain_404(new_db: NewDb) -> None:
    """A NotFound escaping an app of no known framework becomes a plain 404
    with its description; the session is closed."""
    db = new_db(url="sqlite://")

    async def app(scope: t.Any, receive: t.Any, send: t.Any) -> None:
        db.session()
        ASGI.not_found("nothing here")

    transport = httpx.ASGITransport(app=SessionMiddleware(app, db=db))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        response = await client.get("/")
    assert response.status_code == 404
    assert response.text == "nothing here"
    assert not db.session.registry.registry


async def test_a_db_serves_one_framework(new_db: NewDb) -> None:
    """A db handed to Quart cannot be handed to the ASGI middleware too."""
    pytest.importorskip("quart", reason="Quart is not installed")
    import quart

    db = new_db()
    app = quart.Quart("quart_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db.init_app(app)
    with pytest.raises(RuntimeError, match="one SQLAlchemy object per framework"):
        SessionMiddleware(make_plain_app(), db=db)
    assert ASGI is not db._integration


def make_plain_app() -> t.Any:
    async def app(scope: t.Any, receive: t.Any, send: t.Any) -> None:
        raise AssertionError("never called")

    return app


async def test_query_string_and_queries_belong_to_the_request(
    new_db: NewDb,
) -> None:
    """Inside a request the integration gives its query string (first value of
    a repeated key); outside, none."""
    db: SQLAlchemy = new_db(url="sqlite://")
    seen: list[t.Any] = []

    async def app(scope: t.Any, receive: t.Any, send: t.Any) -> None:
        seen.append(dict(ASGI.request_args() or {}))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=SessionMiddleware(app, db=db))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        await client.get("/?page=2&per_page=5&page=3&empty=")
    assert seen == [{"page": "2", "per_page": "5", "empty": ""}]
    assert ASGI.request_args() is None


@pytest.mark.parametrize("body", [b"", b"some body"], ids=["no body", "body read"])
async def test_disconnect_after_the_body_cancels_the_handler(
    new_db: NewDb, body: bytes
) -> None:
    """A client gone before the response: the handler (which read the body, if
    any) is cancelled, its session rolled back and closed, and the middleware
    returns as a request that simply ended."""
    db = new_db(url="sqlite://")
    gone = asyncio.Event()
    reached = asyncio.Event()
    cancelled: list[bool] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, t.Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def app(scope: t.Any, receive: t.Any, send: t.Any) -> None:
        if body:
            assert (await receive())["body"] == body
        await db.session.execute(sa.text("SELECT 1"))
        reached.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def send(message: t.Any) -> None:
        raise AssertionError(f"nothing is sent to a client that is gone: {message}")

    headers = [(b"content-length", str(len(body)).encode())] if body else []
    scope = {"type": "http", "method": "POST", "headers": headers, "query_string": b""}
    middleware = SessionMiddleware(app, db=db)
    request = asyncio.create_task(middleware(scope, receive, send))
    await asyncio.wait_for(reached.wait(), TIMEOUT)
    assert db.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    gone.set()
    await asyncio.wait_for(request, TIMEOUT)
    assert cancelled == [True]
    assert not request.cancelled()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert not db.session.registry.registry

"""The session lifecycle for any ASGI app: Starlette, FastAPI, Litestar.

A pure ASGI middleware (no framework is imported) built on
:mod:`async_sa.integration`, the seam the Quart extension uses too::

    db = SQLAlchemy(url="postgresql://...")
    app = Starlette(routes=...)
    app.add_middleware(SessionMiddleware, db=db, commit_on_success=True)

It gives each HTTP request and websocket what :mod:`async_sa.quart` gives a
Quart request:

- **The session is closed** at the end of each HTTP request (once the last
  body chunk is sent, so background tasks run after the response get a fresh
  session of their own) and websocket, rolling back what was not committed. A
  client that disconnects before the response is complete has the request's
  task cancelled (see :class:`_Receiver`), and its session closed. A failing
  close is logged to ``async_sa.asgi`` and its connection invalidated.
- **Commit on success** (``commit_on_success=True``): the request's session is
  committed *before* the response starts, when its status is below 400. A
  failed commit is raised where the app sends the response (the framework
  answers a 500, and its error handlers and logging see the error); should it
  still send a success, or nothing, the middleware answers a plain 500: the
  client never sees a 2xx for data that was not stored. A ``models_committed``
  receiver failing once the data is stored is logged and the response kept.
- **404**: ``get_or_404``, ``first_or_404``, ``one_or_404`` and ``paginate``
  raise the framework's own 404 exception (see :meth:`ASGIIntegration.not_found`);
  in another app, :class:`async_sa.NotFound` escaping the app becomes a plain
  404 response with its description.
- **Pagination**: ``page`` and ``per_page`` come from the query string.
- **Lifespan**: the ``db``'s engines are disposed at shutdown.

The session is the current asyncio task's, as everywhere in async_sa: an ASGI
server runs each request in its own task. Endpoints must be ``async def`` (a
plain ``def`` endpoint runs in a worker thread, where there is no task). A
middleware below this one that runs the rest of the app in a new task
(Starlette's ``BaseHTTPMiddleware``, ``@app.middleware("http")``) gives the
endpoint a session of its own, closed but never committed by this middleware:
add ``SessionMiddleware`` before such middleware (``add_middleware`` makes the
last one added the outermost), so that it runs inside it, in the endpoint's
task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import typing as t
import weakref
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import MutableMapping
from urllib.parse import parse_qsl

from async_sa.errors import NotFound
from async_sa.integration import commit_session
from async_sa.integration import Integration
from async_sa.integration import remove_session

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy
    from async_sa.session import AsyncSession

Scope = MutableMapping[str, t.Any]
Message = MutableMapping[str, t.Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]
"""An ASGI app: ``await app(scope, receive, send)``; loosely typed, as each
framework types its scopes and messages its own way."""

_AS = t.TypeVar("_AS", bound="AsyncSession")

logger = logging.getLogger("async_sa.asgi")


class _Request:
    """The request being served in this context: its scope, its query string
    parsed on first use, and the owner of the queries it records. An HTTP
    request's is its :class:`_Receiver`."""

    __slots__ = ("__weakref__", "_args", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._args: dict[str, str] | None = None

    def args(self) -> Mapping[str, str]:
        """The query string arguments; the first value of a repeated one."""
        args = self._args
        if args is None:
            pairs = parse_qsl(
                self.scope.get("query_string", b"").decode("latin-1"),
                keep_blank_values=True,
            )
            args = self._args = dict(reversed(pairs))
        return args


_current_request: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "async_sa_asgi_request", default=None
)


class ASGIIntegration(Integration):
    """The core's view of an ASGI request: no owner (the ``db``'s own engines),
    the framework's 404 (see :meth:`not_found`), the query string of the
    request being served, and recorded queries that belong to the request
    (shared by its ``asyncio.gather`` children)."""

    def not_found(self, description: str | None) -> t.NoReturn:
        """Raise the 404 exception of the framework serving the request
        (Litestar's ``NotFoundException``, Starlette's and FastAPI's
        ``HTTPException(404)``), so its handlers render it like any other 404;
        else :class:`NotFound`, which the middleware answers with a plain 404."""
        request = _current_request.get()
        if request is not None:
            error = _framework_not_found(request.scope, description)
            if error is not None:
                raise error
        raise NotFound(description)

    def request_args(self) -> Mapping[str, str] | None:
        request = _current_request.get()
        return None if request is None else request.args()

    def query_scope(self) -> object | None:
        return _current_request.get()

    def __repr__(self) -> str:
        return "<ASGIIntegration>"


def _framework_not_found(scope: Scope, description: str | None) -> Exception | None:
    """The 404 exception of the Litestar or Starlette (FastAPI) app serving
    ``scope``, or ``None`` for another app. The framework's module is looked
    up among those already imported (by the app), never imported here."""
    if "litestar_app" in scope:
        litestar = sys.modules.get("litestar.exceptions")
        if litestar is not None:
            error: Exception = litestar.NotFoundException(detail=description or "")
            return error
    app = scope.get("app")
    if app is not None and any(
        cls.__module__.startswith("starlette.") for cls in type(app).__mro__
    ):
        starlette = sys.modules.get("starlette.exceptions")
        if starlette is not None:
            error = starlette.HTTPException(404, detail=description)
            return error
    return None


ASGI = ASGIIntegration()
"""The integration every :class:`SessionMiddleware` hands over."""


class SessionMiddleware:
    """Run the session lifecycle of ``db`` around every request of ``app``.

    Wrap the app (``SessionMiddleware(app, db=db)``), or let the framework do it:
    ``app.add_middleware(SessionMiddleware, db=db)`` (Starlette, FastAPI),
    ``middleware=[DefineMiddleware(SessionMiddleware, db=db)]`` (Litestar;
    wrap the app itself to have the engines disposed at shutdown).

    :param app: the ASGI app.
    :param db: the ``SQLAlchemy`` object, configured with ``url=`` (or
        ``binds=``).
    :param commit_on_success: commit each HTTP request's session before a
        response with a status below 400 starts; see the module docstring.
    :raises RuntimeError: ``db`` serves another framework already (a Quart app).
    """

    def __init__(
        self, app: ASGIApp, *, db: SQLAlchemy, commit_on_success: bool = False
    ) -> None:
        db.use_integration(ASGI)
        self.app = app
        self.db = db
        self.commit_on_success = commit_on_success
        self._watch_list: _WatchLater | None = None
        """The watch list of the loop serving the requests, kept at hand."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        # An HTTP request is served here rather than in a method awaited from
        # here: every resumption of the request's task (each database round
        # trip) would pass through that frame too.
        task = asyncio.current_task()
        assert task is not None  # an ASGI server runs each request in a task
        watch_list = self._watch_list
        if watch_list is None or watch_list.loop() is not task.get_loop():
            watch_list = self._watch_list = _watch_list(task.get_loop())
        receiver = _Receiver(scope, receive, task, watch_list)
        response = _Response(self.db, send, self.commit_on_success, receiver)
        token = _current_request.set(receiver)
        try:
            try:
                await self.app(scope, receiver.receive, response.send)
            except NotFound as error:
                if response.started:
                    raise
                await _send_plain(send, 404, error.description or "Not Found")
            except Exception:
                if response.commit_failed and not response.started:
                    await _send_plain(send, 500, "Internal Server Error")
                raise
            else:
                if response.commit_failed and not response.started:
                    await _send_plain(send, 500, "Internal Server Error")
            finally:
                receiver.stop()
                _current_request.reset(token)
                await remove_session(self.db, logger)
        except asyncio.CancelledError:
            if not receiver.cancelled_request:
                raise
            # Our own cancellation, for a client that went away: done.
            if sys.version_info >= (3, 11):
                task.uncancel()

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.app(scope, receive, self._lifespan_sender(send))
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _current_request.set(_Request(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            _current_request.reset(token)
            await remove_session(self.db, logger)

    def _lifespan_sender(self, send: Send) -> Send:
        """``send`` for the lifespan scope: the engines are disposed before the
        server hears that shutdown is complete (or failed)."""

        async def send_after_disposing(message: Message) -> None:
            if message["type"] in (
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            ):
                await self.db.dispose()
            await send(message)

        return send_after_disposing


WATCH_AFTER = 0.1
"""Seconds a request runs before its client's disconnect is watched for: most
requests are answered sooner and never pay for a watcher task."""


class _Receiver(_Request):
    """The ``receive`` an HTTP request's app gets, and the watch for a client
    that goes away.

    A request still running after :data:`WATCH_AFTER` seconds gets a watcher
    task that awaits the message after the request body: a client that
    disconnects before the response is complete has the request's task
    cancelled (as Quart does), so a handler awaiting the database gives its
    connection back at once rather than when it ends. The app's own later
    ``receive()`` calls get the watcher's message. A request without a body (no
    ``content-length`` nor ``transfer-encoding``) whose app read nothing yet
    has its first message read by the same task. A body the app has not read
    is not read ahead (that would lose the backpressure on uploads): such a
    request is not watched.
    """

    __slots__ = (
        "_first",
        "_read_body",
        "_reading",
        "_receive",
        "_task",
        "_watch_list",
        "_watcher",
        "cancelled_request",
        "done",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        task: asyncio.Task[t.Any],
        watch_list: _WatchLater,
    ) -> None:
        self.scope = scope
        self._args = None
        self._receive = receive
        self._task = task
        self._read_body = False
        """Whether the app has received the last body chunk (or a disconnect)."""
        self._reading = False
        """Whether the app is awaiting the server's ``receive()`` right now."""
        self._first: asyncio.Future[Message] | None = None
        """The first message, read by the watcher of a request without a body."""
        self._watcher: asyncio.Task[Message] | None = None
        self.cancelled_request = False
        """Whether the watcher cancelled the request's task."""
        self.done = False
        """Set once the response is complete: a disconnect cancels nothing then."""
        self._watch_list = watch_list
        watch_list.add(self)

    async def receive(self) -> Message:
        first = self._first
        if first is not None:
            self._first = None
            return await asyncio.shield(first)
        watcher = self._watcher
        if watcher is not None:
            return await asyncio.shield(watcher)
        self._reading = True
        try:
            message = await self._receive()
        finally:
            self._reading = False
        if message["type"] != "http.request" or not message.get("more_body"):
            self._read_body = True
        return message

    def start_watching(self) -> bool:
        """Start the watcher if the request allows it now; ``False`` to be
        asked again later (the app is reading)."""
        if self.done or self._reading:
            return self.done
        if self._read_body:
            self._watcher = asyncio.ensure_future(self._watch(None))
        elif not _has_body(self.scope):
            self._first = self._task.get_loop().create_future()
            self._watcher = asyncio.ensure_future(self._watch(self._first))
        return True

    def stop(self) -> None:
        """Stop watching: the request is over."""
        self.done = True
        self._watch_list.forget(self)
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    async def _watch(self, first: asyncio.Future[Message] | None) -> Message:
        message = await self._read()
        if first is not None:
            first.set_result(message)
            if message["type"] == "http.request":
                if message.get("more_body"):
                    # A body after all (HTTP/2 needs no content-length): the
                    # app reads the rest itself, unwatched.
                    self._watcher = None
                    return message
                message = await self._read()
        if message["type"] == "http.disconnect" and not self.done:
            self.cancelled_request = True
            self._task.cancel()
        return message

    async def _read(self) -> Message:
        """The next message; a server that fails to give one has lost the
        client (nothing is left for the asyncio log)."""
        try:
            return await self._receive()
        except Exception:
            return {"type": "http.disconnect"}


class _WatchLater:
    """The requests of one loop not watched yet. One timer every
    :data:`WATCH_AFTER` seconds, while there are any, starts the watchers of
    those already waiting at the previous tick (so each has run at least that
    long, and less than twice that): a timer or a clock reading per request
    would cost more than most requests need. Refers to the loop weakly (it is
    a value keyed by the loop); a request is forgotten when it ends."""

    __slots__ = ("_armed", "_due", "_new", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self._new: set[_Receiver] = set()
        """Requests that started since the last tick."""
        self._due: set[_Receiver] = set()
        """Requests that were running at the last tick."""
        self._armed = False

    def add(self, receiver: _Receiver) -> None:
        self._new.add(receiver)
        if not self._armed:
            loop = self.loop()
            assert loop is not None  # it is running the request
            self._arm(loop)

    def forget(self, receiver: _Receiver) -> None:
        self._new.discard(receiver)
        self._due.discard(receiver)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # An empty context: no request's context variables reach the watchers.
        loop.call_later(WATCH_AFTER, self._check, context=contextvars.Context())
        self._armed = True

    def _check(self) -> None:
        due = self._new
        for receiver in list(self._due):
            if not receiver.start_watching():
                due.add(receiver)  # the app is reading: again at the next tick
        self._due, self._new = due, set()
        self._armed = False
        if due:
            loop = self.loop()
            assert loop is not None  # it is running this callback
            self._arm(loop)


_watch_lists: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WatchLater] = (
    weakref.WeakKeyDictionary()
)


def _watch_list(loop: asyncio.AbstractEventLoop) -> _WatchLater:
    watch_list = _watch_lists.get(loop)
    if watch_list is None:
        watch_list = _watch_lists[loop] = _WatchLater(loop)
    return watch_list


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


class _Response:
    """The ``send`` an HTTP request's app gets: commits before a success starts
    (with ``commit_on_success``), replaces a success after a failed commit,
    and closes the session once the last body chunk is out."""

    __slots__ = (
        "_commit",
        "_db",
        "_receiver",
        "_replaced",
        "_send",
        "commit_failed",
        "started",
    )

    def __init__(
        self, db: SQLAlchemy, send: Send, commit: bool, receiver: _Receiver
    ) -> None:
        self._db = db
        self._send = send
        self._commit = commit
        self._receiver = receiver
        self._replaced = False
        self.commit_failed = False
        self.started = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.commit_failed:
                if message["status"] < 400:
                    # A handler answered the failed commit with a success.
                    self._replaced = True
                    self.started = True
                    await _send_plain(self._send, 500, "Internal Server Error")
                    return
            elif self._commit and message["status"] < 400:
                try:
                    await commit_session(self._db, logger)
                except Exception:
                    self.commit_failed = True
                    raise
            self.started = True
        elif self._replaced:
            return
        await self._send(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            self._receiver.done = True
            await remove_session(self._db, logger)


async def _send_plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def session_dependency(db: SQLAlchemy[_AS]) -> Callable[[], Awaitable[_AS]]:
    """A FastAPI dependency giving the current request's session::

        Session = Annotated[AsyncSession, Depends(session_dependency(db))]

        @app.post("/notes")
        async def add_note(text: str, session: Session) -> dict[str, int]:
            note = Note(text=text)
            session.add(note)
            await session.flush()
            return {"id": note.id}

    It is ``db.session()``, the session of the request's task; the middleware
    closes (and, with ``commit_on_success``, commits) it.
    """

    async def current_session() -> _AS:
        return db.session()

    return current_session

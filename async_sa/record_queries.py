"""Recording the queries of each context, for :func:`get_recorded_queries`.

Recording is switched on per owner (``SQLAlchemy(record_queries=True)`` or
``SQLALCHEMY_RECORD_QUERIES``): only then are the cursor event listeners added to
its engines, so code that does not record pays nothing.

Queries belong to the current *scope*: the current asyncio task, unless a
framework integration registers a wider one with :func:`register_scope` (for
Quart, the app context, so that the queries of a request's ``asyncio.gather``
children land in the request's list).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import types
import typing as t
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from time import perf_counter

import greenlet  # type: ignore[import-untyped]
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async

Scope = Callable[[], object | None]
"""Returns the object the current queries belong to, or ``None`` outside one.

The object must be hashable and weak-referenceable; its queries are forgotten
with it.
"""

_START_TIME = "async_sa.query_start_time"
_LIBRARY_PACKAGES = frozenset(
    {"async_sa", "asyncio", "greenlet", "hypercorn", "quart", "sqlalchemy"}
)
"""Top-level packages whose frames never count as the caller of a query."""

_scopes: list[Scope] = []
_queries: weakref.WeakKeyDictionary[object, list[QueryInfo]] = (
    weakref.WeakKeyDictionary()
)


@dataclasses.dataclass(frozen=True)
class QueryInfo:
    """One executed statement, as :func:`get_recorded_queries` returns it.

    :param statement: the SQL sent to the driver, with parameter placeholders.
    :param parameters: the parameters sent with it (for an executemany, the list
        of parameter sets).
    :param start_time: :func:`time.perf_counter` when the statement was sent.
    :param end_time: :func:`time.perf_counter` when the driver returned.
    :param location: ``"file:line (function)"`` of the application code that ran
        the query, or ``"<unknown>"`` when only library code is on the stack.
    """

    statement: str
    parameters: t.Any
    start_time: float
    end_time: float
    location: str

    @property
    def duration(self) -> float:
        """Seconds the statement took."""
        return self.end_time - self.start_time


def get_recorded_queries() -> list[QueryInfo]:
    """The queries recorded in the current scope: a registered one (see
    :func:`register_scope`), else the current asyncio task.

    Queries are recorded only by a ``SQLAlchemy`` object made with
    ``record_queries=True`` (or an app with ``SQLALCHEMY_RECORD_QUERIES``). The
    list is live: later queries are appended to it, and clearing it starts over.

    :raises RuntimeError: called outside an asyncio task and outside any scope.
    """
    scope = _current_scope()
    if scope is None:
        raise RuntimeError(
            "get_recorded_queries() needs a running asyncio task (or a Quart app "
            "context): call it from async code, for example inside asyncio.run()."
        )
    return _queries_of(scope)


def register_scope(scope: Scope) -> None:
    """Make ``scope`` own the queries recorded while it returns an object.

    Scopes are asked in registration order; the current asyncio task is the
    fallback. Registering the same scope again does nothing.
    """
    if scope not in _scopes:
        _scopes.append(scope)


def listen(engines: Iterable[sa_async.AsyncEngine]) -> None:
    """Record every statement ``engines`` execute from now on."""
    for engine in engines:
        sa.event.listen(engine.sync_engine, "before_cursor_execute", _record_start)
        sa.event.listen(engine.sync_engine, "after_cursor_execute", _record_end)


def _current_scope() -> object | None:
    for scope in _scopes:
        found = scope()
        if found is not None:
            return found
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _queries_of(scope: object) -> list[QueryInfo]:
    queries = _queries.get(scope)
    if queries is None:
        queries = _queries[scope] = []
    return queries


def _record_start(
    connection: sa.Connection,
    cursor: t.Any,
    statement: str,
    parameters: t.Any,
    context: t.Any,
    executemany: bool,
) -> None:
    connection.info[_START_TIME] = perf_counter()


def _record_end(
    connection: sa.Connection,
    cursor: t.Any,
    statement: str,
    parameters: t.Any,
    context: t.Any,
    executemany: bool,
) -> None:
    end_time = perf_counter()
    start_time = connection.info.pop(_START_TIME, end_time)
    scope = _current_scope()
    if scope is None:
        return
    _queries_of(scope).append(
        QueryInfo(
            statement=statement,
            parameters=parameters,
            start_time=start_time,
            end_time=end_time,
            location=_caller_location(),
        )
    )


def _caller_location() -> str:
    """``"file:line (function)"`` of the innermost frame outside the libraries."""
    for frame in _frames_across_greenlets(sys._getframe(1)):
        module = frame.f_globals.get("__name__") or ""
        if module.partition(".")[0] not in _LIBRARY_PACKAGES:
            code = frame.f_code
            return f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"
    return "<unknown>"


def _frames_across_greenlets(
    frame: types.FrameType | None,
) -> Iterator[types.FrameType]:
    """The call stack from ``frame`` outwards, continued into the parent greenlets.

    Cursor events run in the greenlet SQLAlchemy's asyncio layer spawns for each
    call; its stack ends there. The awaiting coroutines (the application's code)
    are the suspended stack of its parent greenlet.
    """
    current: greenlet.greenlet | None = greenlet.getcurrent()
    while True:
        while frame is not None:
            yield frame
            frame = frame.f_back
        current = current.parent if current is not None else None
        if current is None:
            return
        frame = current.gr_frame

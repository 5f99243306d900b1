"""Everything SQLite and aiosqlite need to serve concurrent async code, in one place.

- :func:`apply_defaults`: a shared named in-memory database instead of one per
  connection, absolute file paths, a busy timeout and a queue pool;
- :func:`keep_memory_database_alive`: that in-memory database outlives the
  pool's connections;
- :class:`CursorClosingConnection`: a close that finalizes active statements
  (Python 3.11+ leaves them, and the lock with them);
- :func:`_open_aiosqlite`: a cancelled open closes its connection
  (omnilib/aiosqlite#259);
- :func:`stop_once`: an aiosqlite worker thread is stopped once, whatever
  number of times SQLAlchemy asks.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import typing as t
import uuid
import weakref
from collections.abc import Callable

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.pool import AsyncAdaptedQueuePool

from async_sa.cleanup import run_to_completion

BUSY_TIMEOUT = 30.0
"""Seconds a SQLite connection waits for another's write lock before failing."""


def apply_defaults(url: sa.URL, options: dict[str, t.Any], base_dir: str) -> sa.URL:
    """Give SQLite the defaults concurrent async code needs.

    ``:memory:`` becomes a named in-memory database (SQLite's ``memdb`` VFS) that
    every connection of the engine shares, so each session keeps its own
    transaction instead of all of them sharing one connection. Relative file paths
    are made absolute under ``base_dir``. Both get a busy timeout, a queue pool
    (SQLAlchemy before 2.0.38 gave files none), and connections that close their
    cursors (see :class:`CursorClosingConnection`), opened so that a cancelled
    open still closes its connection (see :func:`_open_aiosqlite`).
    """
    connect_args = dict(options.get("connect_args", {}))
    connect_args.setdefault("timeout", BUSY_TIMEOUT)
    connect_args.setdefault("factory", CursorClosingConnection)
    if url.get_driver_name() == "aiosqlite":
        connect_args.setdefault("async_creator_fn", _open_aiosqlite)
    options["connect_args"] = connect_args
    options.setdefault("poolclass", AsyncAdaptedQueuePool)
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return url.set(
            database=f"file:/async_sa_memory_{uuid.uuid4().hex}",
            query={"vfs": "memdb", "uri": "true"},
        )
    is_uri = url.query.get("uri") == "true" and database.startswith("file:")
    path = database[len("file:") :] if is_uri else database
    if os.path.isabs(path):
        return url
    os.makedirs(base_dir, exist_ok=True)
    path = os.path.join(base_dir, path)
    return url.set(database=f"file:{path}" if is_uri else path)


def is_memory(url: sa.URL) -> bool:
    """Whether the SQLite ``url`` names an in-memory database."""
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or url.query.get("mode") == "memory"
        or url.query.get("vfs") == "memdb"
    )


class CursorClosingConnection(sqlite3.Connection):
    """A sqlite3 connection that closes its cursors before closing itself.

    Since Python 3.11, ``close()`` leaves statements that are still active (a
    query cancelled between execute and fetch) unfinalized, so SQLite keeps the
    connection alive as a "zombie" that holds its lock until garbage collection,
    and every other writer waits out the busy timeout.

    The cursors are kept as plain weak references in a list pruned now and
    then: this runs in aiosqlite's worker for every statement, where a
    ``WeakSet`` cost two Python calls more per cursor (its ``add`` and the
    removal callback when the cursor goes).
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: list[weakref.ref[sqlite3.Cursor]] = []
        self._prune_at = _FIRST_PRUNE

    def cursor(  # type: ignore[override]
        self, *args: t.Any, **kwargs: t.Any
    ) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = super().cursor(*args, **kwargs)
        cursors = self._cursors
        if len(cursors) >= self._prune_at:
            cursors[:] = [ref for ref in cursors if ref() is not None]
            self._prune_at = max(_FIRST_PRUNE, 2 * len(cursors))
        cursors.append(weakref.ref(cursor))
        return cursor

    def close(self) -> None:
        for ref in self._cursors:
            cursor = ref()
            if cursor is not None:
                cursor.close()
        super().close()


_FIRST_PRUNE = 64
"""Cursor references a connection keeps before dropping those of dead ones."""


async def _open_aiosqlite(*args: t.Any, **kwargs: t.Any) -> t.Any:
    """Open an aiosqlite connection (SQLAlchemy's ``async_creator_fn``).

    A task cancelled while aiosqlite's worker opens the database drops the
    sqlite3 connection unclosed (omnilib/aiosqlite#259; a ResourceWarning since
    Python 3.13). So the open runs to completion, and a cancellation received
    meanwhile closes the connection before it is raised.
    """
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    # As SQLAlchemy's own open does: a daemon worker never holds the
    # interpreter at exit.
    connection._thread.daemon = True
    opened = False

    async def open_connection() -> None:
        nonlocal opened
        await connection
        opened = True

    try:
        await run_to_completion(open_connection())
    except asyncio.CancelledError:
        if opened:
            await run_to_completion(connection.close())
        raise
    return connection


def keep_memory_database_alive(engine: sa_async.AsyncEngine, url: sa.URL) -> None:
    """Hold one plain connection to a ``memdb`` database while the engine lives.

    SQLite frees such a database when its last connection closes; without this,
    disposing the pool (which happens whenever an event loop ends) would empty it.
    """
    anchor = sqlite3.connect(
        f"{url.database}?vfs=memdb", uri=True, check_same_thread=False
    )
    weakref.finalize(engine.sync_engine, anchor.close)


def stop_once(
    driver_connection: t.Any, on_first_stop: Callable[[threading.Thread], None]
) -> None:
    """Make an aiosqlite connection's ``stop()`` queue its thread's stop once.

    SQLAlchemy stops the thread when its graceful close is cancelled; the
    close, still running, then stops it again behind the thread's exit and
    waits forever. Later calls return the first call's future. The first call
    also hands the thread to ``on_first_stop`` (the loop's shutdown waits for
    it). The replacement refers to the connection only until then (a cycle the
    first stop breaks).
    """
    stop = driver_connection.stop

    def stop_just_once() -> asyncio.Future[t.Any] | None:
        stopped: asyncio.Future[t.Any] | None = stop()
        driver_connection.stop = lambda: stopped
        on_first_stop(driver_connection._thread)
        return stopped

    driver_connection.stop = stop_just_once

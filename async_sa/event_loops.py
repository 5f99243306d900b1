"""Keep each pooled connection inside the event loop that opened it.

Async drivers bind a connection to its event loop (asyncpg's protocol, aiosqlite's
worker thread must be stopped from a live loop). A ``db`` object outlives loops: a
second ``asyncio.run``, a fresh loop per test. So:

- every connection remembers the loop that opened it, and a checkout from any
  other loop discards it and opens a new one instead (one from a loop closed
  without cleanup is dropped without trying to close it through that loop);
- when a loop shuts down through :func:`asyncio.run` or :class:`asyncio.Runner`
  (which finalize async generators before closing the loop), the engines it used
  are disposed while the loop can still close their connections cleanly;
- an aiosqlite connection stops its worker thread only once. SQLAlchemy stops it
  when its graceful close is cancelled; the close, still running, then stops it
  again behind the thread's exit and waits forever, so ``asyncio.run`` hangs
  cancelling its tasks. A later stop gets the first stop's future instead. And
  a loop's shutdown waits (up to :data:`STOPPED_WORKER_WAIT` seconds) for the
  threads stopped in it, which would otherwise hand a result to a closed loop.
"""

from __future__ import annotations

import asyncio
import threading
import typing as t
import weakref
from collections.abc import AsyncGenerator

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import PoolProxiedConnection

_LOOP = "async_sa.loop"
STOPPED_WORKER_WAIT = 5.0
_engines_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEngines] = (
    weakref.WeakKeyDictionary()
)


class _LoopEngines:
    """The engines that opened connections in one loop, disposed when it ends,
    and the aiosqlite worker threads stopped in it, waited for then."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engines: dict[int, sa_async.AsyncEngine] = {}
        self.stopped_workers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._finalizer = self._dispose_at_shutdown()
        self._started = loop.create_task(self._start())

    async def _start(self) -> None:
        # Iterating the generator once registers it with the running loop, which
        # then closes it (running the ``finally`` below) in ``shutdown_asyncgens``.
        await anext(self._finalizer)

    async def _dispose_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            for engine in self.engines.values():
                await engine.dispose()
            await self._join_stopped_workers()

    async def _join_stopped_workers(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOPPED_WORKER_WAIT
        while any(thread.is_alive() for thread in self.stopped_workers):
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.001)


def _engines_of(loop: asyncio.AbstractEventLoop) -> _LoopEngines:
    engines = _engines_by_loop.get(loop)
    if engines is None:
        engines = _engines_by_loop[loop] = _LoopEngines(loop)
    return engines


def _stop_once(driver_connection: t.Any) -> None:
    """Make an aiosqlite connection's ``stop()`` queue its thread's stop once.

    Later calls return the first call's future. The first call also records the
    thread with the running loop, whose shutdown waits for it. The replacement
    refers to the connection only until then (a cycle the first stop breaks).
    """
    stop = driver_connection.stop

    def stop_once() -> asyncio.Future[t.Any] | None:
        stopped: asyncio.Future[t.Any] | None = stop()
        driver_connection.stop = lambda: stopped
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return stopped
        _engines_of(loop).stopped_workers.add(driver_connection._thread)
        return stopped

    driver_connection.stop = stop_once


def keep_connections_in_their_loop(engine: sa_async.AsyncEngine) -> None:
    """Install the pool hooks that tie ``engine``'s connections to their loop."""

    stops_aiosqlite = engine.dialect.driver == "aiosqlite"

    def on_connect(dbapi_connection: t.Any, record: ConnectionPoolEntry) -> None:
        loop = asyncio.get_running_loop()
        record.info[_LOOP] = loop
        _engines_of(loop).engines.setdefault(id(engine), engine)
        if stops_aiosqlite and hasattr(dbapi_connection.driver_connection, "stop"):
            _stop_once(dbapi_connection.driver_connection)

    def on_checkout(
        _dbapi: t.Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        loop = record.info.get(_LOOP)
        if loop is not asyncio.get_running_loop():
            if loop is not None and loop.is_closed():
                # Closing it would need its loop: SQLAlchemy's attempt would fail
                # and log a traceback that keeps the connection alive. Drop it;
                # asyncio reclaims its socket, as for any transport of a loop
                # closed without cleanup.
                t.cast(t.Any, record).dbapi_connection = None
            raise sa.exc.DisconnectionError(
                "connection was opened in another event loop"
            )

    sa.event.listen(engine.sync_engine, "connect", on_connect)
    sa.event.listen(engine.sync_engine, "checkout", on_checkout)

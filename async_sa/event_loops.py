"""Keep each pooled connection inside the event loop that opened it.

Async drivers bind a connection to its event loop (asyncpg's protocol, aiosqlite's
worker thread must be stopped from a live loop). A ``db`` object outlives loops: a
second ``asyncio.run``, a fresh loop per test. So:

- every connection remembers the loop that opened it, and a checkout from any
  other loop discards it and opens a new one instead;
- when a loop shuts down through :func:`asyncio.run` or :class:`asyncio.Runner`
  (which finalize async generators before closing the loop), the engines it used
  are disposed while the loop can still close their connections cleanly.
"""

from __future__ import annotations

import asyncio
import typing as t
import weakref
from collections.abc import AsyncGenerator

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import PoolProxiedConnection

_LOOP = "async_sa.loop"
_engines_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEngines] = (
    weakref.WeakKeyDictionary()
)


class _LoopEngines:
    """The engines that opened connections in one loop, disposed when it ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engines: dict[int, sa_async.AsyncEngine] = {}
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


def keep_connections_in_their_loop(engine: sa_async.AsyncEngine) -> None:
    """Install the pool hooks that tie ``engine``'s connections to their loop."""

    def on_connect(_dbapi: t.Any, record: ConnectionPoolEntry) -> None:
        loop = asyncio.get_running_loop()
        record.info[_LOOP] = loop
        engines = _engines_by_loop.get(loop)
        if engines is None:
            engines = _engines_by_loop[loop] = _LoopEngines(loop)
        engines.engines.setdefault(id(engine), engine)

    def on_checkout(
        _dbapi: t.Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        if record.info.get(_LOOP) is not asyncio.get_running_loop():
            raise sa.exc.DisconnectionError(
                "connection was opened in another event loop"
            )

    sa.event.listen(engine.sync_engine, "connect", on_connect)
    sa.event.listen(engine.sync_engine, "checkout", on_checkout)

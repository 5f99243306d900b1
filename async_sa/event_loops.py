"""Keep each pooled connection inside the event loop that opened it.

Async drivers bind a connection to its event loop (asyncpg's protocol, aiosqlite's
worker thread must be stopped from a live loop). A ``db`` object outlives loops
(a second ``asyncio.run``, a fresh loop per test) and may serve several at once
(threads, ``asyncio.to_thread(asyncio.run, ...)``). So:

- the default pool, :class:`LoopPool`, keeps one sub-pool per event loop (as
  SQLAlchemy's ``SingletonThreadPool`` keeps one connection per thread): a
  checkout only ever gets a connection of its own loop, ``pool_size`` and
  ``max_overflow`` hold per loop, and a loop never touches another's
  connections. Disposing it retires every sub-pool: idle connections are closed
  in their own loop, and those still checked out are closed when they come
  back instead of being returned to a discarded pool;
- with a pool class the user chose, a checkout from any other loop discards
  the connection and opens a new one instead (one from a loop closed without
  cleanup is dropped without trying to close it through that loop);
- when a loop shuts down through :func:`asyncio.run` or :class:`asyncio.Runner`
  (which finalize async generators before closing the loop), the sessions of
  its finished tasks are closed first, then its connections, while the loop can
  still close them cleanly: its sub-pools are retired, and engines with another
  pool class are disposed. Nothing of a loop that ended is kept;
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
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import Empty

from async_sa import sqlite

_LOOP = "async_sa.loop"
STOPPED_WORKER_WAIT = 5.0
_engines_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopEngines] = (
    weakref.WeakKeyDictionary()
)


class SessionCloser(t.Protocol):
    """What keeps sessions of finished tasks: a loop's shutdown waits until it
    has closed those of its own tasks."""

    async def wait_closed(self) -> None: ...


_session_closers: weakref.WeakSet[SessionCloser] = weakref.WeakSet()


def close_sessions_at_loop_end(closer: SessionCloser) -> None:
    """Have every loop's shutdown await ``closer.wait_closed()`` before it
    closes its connections (``closer`` is held weakly)."""
    _session_closers.add(closer)


class _LoopEngines:
    """What one loop's shutdown closes: its sessions, its sub-pools, the
    engines of other pool classes that opened connections in it, and the
    aiosqlite worker threads stopped in it (waited for). Holds nothing that
    refers to the loop once that is done."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engines: dict[int, sa_async.AsyncEngine] = {}
        self.pools: weakref.WeakSet[_LoopSubPool] = weakref.WeakSet()
        self.retiring: set[asyncio.Task[None]] = set()
        self.stopped_workers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._finalizer: AsyncGenerator[None, None] | None = self._dispose_at_shutdown()
        loop.call_soon(self._start)

    def _start(self) -> None:
        # Iterating the generator once, in the loop, registers it with the loop,
        # which then closes it (running the ``finally`` below) in
        # ``shutdown_asyncgens``. It holds the loop from then on: it is dropped
        # once it has run.
        if self._finalizer is not None:
            try:
                self._finalizer.asend(None).send(None)
            except StopIteration:
                pass

    async def _dispose_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            try:
                # Sessions first: their connections go back to the pools
                # closed next, instead of being left to the garbage collector.
                for closer in list(_session_closers):
                    await closer.wait_closed()
            finally:
                await self._close_connections()
                self._finalizer = None

    async def _close_connections(self) -> None:
        while self.pools or self.retiring:
            if self.retiring:
                await asyncio.wait(list(self.retiring))
            for pool in list(self.pools):
                self.pools.discard(pool)
                await greenlet_spawn(pool.retire)
        for engine in self.engines.values():
            await engine.dispose()
        self.engines.clear()
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


class _LoopSubPool(AsyncAdaptedQueuePool):
    """The connections of one event loop, used from that loop only.

    Once retired (its pool disposed, or its loop ended), a connection that
    comes back is closed, not kept.
    """

    _owner: weakref.ref[LoopPool] | None = None

    def stop_taking_back(self) -> None:
        """From now on, close each connection that comes back.

        The check-in is replaced on the instance rather than tested in an
        override: every check-in of a live pool then costs nothing extra."""
        self._do_return_conn = _close_record  # type: ignore[method-assign]

    def retire(self) -> None:
        """Close the idle connections, and the others when they come back
        (in this pool's loop, inside a greenlet)."""
        self.stop_taking_back()
        owner = self._owner() if self._owner is not None else None
        if owner is not None:
            owner._forget(self)
        self.dispose()

    def abandon(self) -> None:
        """Drop the idle connections of a loop closed without cleanup, without
        closing them: that would need the loop. asyncio reclaims their sockets,
        as for any transport of such a loop."""
        self.stop_taking_back()
        while True:
            try:
                record = self._pool.get(False)
            except Empty:
                return
            t.cast(t.Any, record).dbapi_connection = None


def _close_record(record: ConnectionPoolEntry) -> None:
    record.close()


def _retire_in_its_loop(pool: _LoopSubPool) -> None:
    """Retire ``pool`` from a task of the running loop (its own), which that
    loop's shutdown waits for."""
    loop = asyncio.get_running_loop()
    retiring = _engines_of(loop).retiring
    task = loop.create_task(greenlet_spawn(pool.retire))
    retiring.add(task)
    task.add_done_callback(retiring.discard)


class LoopPool(AsyncAdaptedQueuePool):
    """An :class:`AsyncAdaptedQueuePool` made of one sub-pool per event loop.

    Its arguments (``pool_size``, ``max_overflow``, ``timeout``...) configure
    each sub-pool: they hold per loop. Pool events and statistics cover all of
    them. :meth:`dispose` retires every sub-pool (see :mod:`async_sa.event_loops`).
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._sub_pool_arguments = (
            args,
            {k: v for k, v in kwargs.items() if k not in ("_dispatch", "events")},
        )
        self._by_loop: dict[
            int, tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopSubPool]
        ] = {}

    def _do_get(self) -> ConnectionPoolEntry:
        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(id(loop))
        if entry is None or entry[0]() is not loop:
            return self._add_sub_pool(loop)._do_get()
        return entry[1]._do_get()

    def _add_sub_pool(self, loop: asyncio.AbstractEventLoop) -> _LoopSubPool:
        for key, (ref, sub_pool) in list(self._by_loop.items()):
            old_loop = ref()
            if old_loop is None or old_loop.is_closed():
                self._by_loop.pop(key, None)
                sub_pool.abandon()
        args, kwargs = self._sub_pool_arguments
        sub_pool = _LoopSubPool(*args, **kwargs)
        # Listeners added to this pool later reach the sub-pools too.
        sub_pool.__dict__["dispatch"] = self.dispatch
        sub_pool._invalidate_time = self._invalidate_time
        sub_pool._owner = weakref.ref(self)
        key = id(loop)

        def forget(ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
            entry = self._by_loop.get(key)
            if entry is not None and entry[0] is ref:
                self._by_loop.pop(key, None)

        self._by_loop[key] = (weakref.ref(loop, forget), sub_pool)
        _engines_of(loop).pools.add(sub_pool)
        return sub_pool

    def _forget(self, sub_pool: _LoopSubPool) -> None:
        for key, (_ref, known) in list(self._by_loop.items()):
            if known is sub_pool:
                self._by_loop.pop(key, None)

    def dispose(self) -> None:
        """Retire every sub-pool: the running loop's now, a live loop's in that
        loop, and drop those of loops closed without cleanup."""
        running = asyncio._get_running_loop()
        by_loop, self._by_loop = self._by_loop, {}
        for ref, sub_pool in by_loop.values():
            loop = ref()
            if loop is running:
                sub_pool.retire()
                continue
            sub_pool.stop_taking_back()
            if loop is None or loop.is_closed():
                sub_pool.abandon()
                continue
            try:
                loop.call_soon_threadsafe(_retire_in_its_loop, sub_pool)
            except RuntimeError:
                sub_pool.abandon()
        self.logger.info("Pool disposed. %s", self.status())

    def _invalidate(
        self,
        connection: PoolProxiedConnection,
        exception: BaseException | None = None,
        _checkin: bool = True,
    ) -> None:
        super()._invalidate(connection, exception, _checkin)
        for _ref, sub_pool in list(self._by_loop.values()):
            sub_pool._invalidate_time = self._invalidate_time

    def _sub_pools(self) -> list[_LoopSubPool]:
        return [sub_pool for _ref, sub_pool in list(self._by_loop.values())]

    def checkedin(self) -> int:
        return sum(sub_pool.checkedin() for sub_pool in self._sub_pools())

    def checkedout(self) -> int:
        return sum(sub_pool.checkedout() for sub_pool in self._sub_pools())

    def overflow(self) -> int:
        return sum(sub_pool.overflow() for sub_pool in self._sub_pools())


def _wait_for_at_loop_end(worker: threading.Thread) -> None:
    """Have the running loop's shutdown wait for ``worker``, an aiosqlite thread
    just stopped in it (see :func:`async_sa.sqlite.stop_once`)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _engines_of(loop).stopped_workers.add(worker)


def keep_connections_in_their_loop(engine: sa_async.AsyncEngine) -> None:
    """Install the pool hooks that tie ``engine``'s connections to their loop.

    A :class:`LoopPool` keeps them apart by itself; other pools need a check at
    every checkout, and their engine disposed when a loop that used it ends.
    """

    stops_aiosqlite = engine.dialect.driver == "aiosqlite"
    per_loop_pool = isinstance(engine.pool, LoopPool)

    def on_connect(dbapi_connection: t.Any, record: ConnectionPoolEntry) -> None:
        loop = asyncio.get_running_loop()
        record.info[_LOOP] = loop
        if not per_loop_pool:
            _engines_of(loop).engines.setdefault(id(engine), engine)
        if stops_aiosqlite and hasattr(dbapi_connection.driver_connection, "stop"):
            sqlite.stop_once(dbapi_connection.driver_connection, _wait_for_at_loop_end)

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
    if not per_loop_pool:
        sa.event.listen(engine.sync_engine, "checkout", on_checkout)

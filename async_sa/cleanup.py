"""Closing sessions: cancellation never leaves a connection checked out, and a
hung server never holds a close for longer than its deadline."""

from __future__ import annotations

import asyncio
import logging
import typing as t
import weakref
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Generator

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm

_T = t.TypeVar("_T")
logger = logging.getLogger("async_sa")

DEFAULT_CLOSE_TIMEOUT = 5.0
"""Seconds a session's close waits for the database before giving up."""
ABANDON_AFTER = 1.0
"""Seconds a close may still wait once its connections are terminated (a driver
whose pending operation does not fail at once); its waits are cancelled then."""
DEADLINE_TICK = 0.1
"""Seconds between two checks of the deadlines of the closes waiting in a loop
(so a close gives up at most this much after its deadline)."""


class _CleanupTask(asyncio.Task[_T]):
    """A task that refuses cancellation, for cleanup that must not stop halfway.

    :func:`asyncio.run` waits for it before closing the loop.
    """

    def cancel(self, msg: t.Any = None) -> bool:
        return False


class _Uncancellable:
    """What the caller's task waits on in place of the future ``coro`` awaits.

    A task cancels the future it waits on, which would drop that future's
    result (a rollback's, say) and break ``coro`` off. This stand-in refuses:
    the task then keeps waiting and throws its ``CancelledError`` in only once
    the future is done, so nothing is lost. asyncio accepts any object with
    these methods and ``_asyncio_future_blocking`` as a future.
    """

    __slots__ = ("_asyncio_future_blocking", "_future")

    def __init__(self, future: asyncio.Future[t.Any]) -> None:
        self._future = future
        self._asyncio_future_blocking = True

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._future.get_loop()

    def add_done_callback(self, callback: t.Any, *, context: t.Any = None) -> None:
        self._future.add_done_callback(callback, context=context)

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def result(self) -> t.Any:
        return self._future.result()

    def cancel(self, msg: t.Any = None) -> bool:
        return False


class _Deadlines:
    """The deadlines of the closes waiting in one loop, checked by one timer
    every :data:`DEADLINE_TICK` seconds while any is waiting.

    A timer per close would cost a ``TimerHandle`` (made in Python) on every
    close that waits: about 1 % of a unit of work with 32 concurrent tasks.
    Nothing here refers to the loop but weakly (not even the timer's handle,
    which does): this object is a value keyed by it, and an ended loop must
    not be kept alive.
    """

    __slots__ = ("_armed", "_loop", "_runs")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._runs: dict[_RunToCompletion[t.Any], float] = {}
        self._armed = False

    def watch(
        self, run: _RunToCompletion[t.Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Expire ``run`` once its timeout has passed, unless it is forgotten."""
        assert run._timeout is not None
        self._runs[run] = loop.time() + run._timeout
        if not self._armed:
            loop.call_later(DEADLINE_TICK, self._check)
            self._armed = True

    def forget(self, run: _RunToCompletion[t.Any]) -> None:
        self._runs.pop(run, None)

    def _check(self) -> None:
        loop = self._loop()
        assert loop is not None  # it is running this callback
        now = loop.time()
        expired = [run for run, deadline in self._runs.items() if deadline <= now]
        for run in expired:
            del self._runs[run]
            run._expire()
        self._armed = bool(self._runs)
        if self._armed:
            loop.call_later(DEADLINE_TICK, self._check)


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines[loop] = _Deadlines(loop)
    return deadlines


class _RunToCompletion(t.Generic[_T]):
    """Awaitable form of :func:`run_to_completion` and :func:`close_within`."""

    __slots__ = (
        "_abandoned",
        "_awaited",
        "_coro",
        "_on_timeout",
        "_timeout",
        "_timer",
        "_watched",
        "expired",
    )

    def __init__(
        self,
        coro: Coroutine[t.Any, t.Any, _T],
        timeout: float | None = None,
        on_timeout: Callable[[], object] | None = None,
    ) -> None:
        self._coro = coro
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._awaited: asyncio.Future[t.Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        """The grace timer, once the deadline passed (see :meth:`_expire`)."""
        self._watched: _Deadlines | None = None
        """The loop's deadlines, once this run waits with a timeout."""
        self._abandoned = False
        """Set once the deadline and its grace are over: every wait is cancelled."""
        self.expired = False
        """Whether the deadline passed before ``coro`` finished."""

    def __await__(self) -> Generator[t.Any, None, _T]:
        coro = self._coro
        cancelled: asyncio.CancelledError | None = None
        thrown: BaseException | None = None
        try:
            while True:
                try:
                    awaited = coro.send(None) if thrown is None else coro.throw(thrown)
                except StopIteration as stop:
                    result: _T = stop.value
                    break
                except BaseException as error:
                    if cancelled is not None:
                        raise cancelled from error
                    if self._abandoned and isinstance(error, asyncio.CancelledError):
                        # Our cancel, not the caller's: a failure like any other.
                        raise TimeoutError("the wait was abandoned") from error
                    raise
                thrown = None
                if awaited is not None:
                    awaited._asyncio_future_blocking = False
                    if self._abandoned:
                        awaited.cancel()
                    elif self._watched is None and self._timeout is not None:
                        # From the first real wait: a close that never waits
                        # (no transaction) is never watched.
                        loop = awaited.get_loop()
                        self._watched = _deadlines_of(loop)
                        self._watched.watch(self, loop)
                self._awaited = awaited
                try:
                    yield None if awaited is None else _Uncancellable(awaited)
                except asyncio.CancelledError as error:
                    if awaited is not None and awaited.cancelled():
                        thrown = error
                    else:
                        cancelled = error
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as error:
                    thrown = error
        finally:
            self._awaited = None
            if self._watched is not None:
                self._watched.forget(self)
            if self._timer is not None:
                self._timer.cancel()
        if cancelled is not None:
            raise cancelled
        return result

    def _expire(self) -> None:
        """The deadline passed: call ``on_timeout``, which should make the
        awaited operation fail (by closing its connection); should the wait go
        on for :data:`ABANDON_AFTER` more seconds, cancel every wait."""
        self.expired = True
        self._timer = asyncio.get_running_loop().call_later(
            ABANDON_AFTER, self._abandon
        )
        if self._on_timeout is not None:
            self._on_timeout()

    def _abandon(self) -> None:
        self._abandoned = True
        if self._awaited is not None and not self._awaited.done():
            self._awaited.cancel()


def check_close_timeout(value: object, *, where: str) -> float:
    """``value`` as a close timeout: a number of seconds above zero.

    :param where: the argument or config key it came from, for the error.
    :raises ValueError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"{where} must be a number of seconds above 0 (default "
            f"{DEFAULT_CLOSE_TIMEOUT}), not {value!r}."
        )
    return float(value)


def run_to_completion(coro: Coroutine[t.Any, t.Any, _T]) -> t.Awaitable[_T]:
    """Await ``coro`` in the current task, immune to that task's cancellation.

    A cancellation received meanwhile is raised once ``coro`` has finished, so the
    caller neither abandons the cleanup halfway nor returns before it is done.
    Unlike :func:`asyncio.shield`, no task is made: ``coro`` runs right away, in
    the caller's task, at the cost of one small object per await.
    """
    return _RunToCompletion(coro)


async def close_within(
    session: sa_async.AsyncSession,
    close: Coroutine[t.Any, t.Any, None],
    timeout: float,
) -> None:
    """Run ``close`` (``session``'s close) to completion, but for ``timeout``
    seconds at most.

    Like :func:`run_to_completion`, a cancellation of the caller is raised only
    once the close is over. Past the deadline (a hung server, a silent network
    partition), the session's connections are terminated: their sockets are
    closed without a word to the server, which rolls the transaction back when
    it notices. The pending operation then fails, SQLAlchemy invalidates the
    connection, and the close returns with a warning logged instead of the
    error. Whatever ends a close, a connection the session opened is never left
    checked out: those still held are invalidated (the pool opens new ones).
    """
    transaction = session.sync_session._transaction
    run = _RunToCompletion(close, timeout, lambda: _terminate(transaction))
    try:
        await run
    except BaseException as error:
        _invalidate(transaction)
        if not run.expired:
            raise
        # No traceback: it would show the failure the terminate caused.
        logger.warning(
            "closing a session took longer than close_timeout (%s s): its "
            "connections were terminated",
            timeout,
        )
        if not isinstance(error, Exception):
            raise
    else:
        if run.expired:
            _invalidate(transaction)


def _owned_connections(
    transaction: sa_orm.SessionTransaction | None,
) -> list[sa.Connection]:
    """The connections ``transaction``'s session opened itself (not a
    connection it was bound to), found on the root transaction."""
    if transaction is None:
        return []
    while transaction._parent is not None:
        transaction = transaction._parent
    owned = {
        id(connection): connection
        for connection, _, _, autoclose in transaction._connections.values()
        if autoclose
    }
    return list(owned.values())


def _terminate(transaction: sa_orm.SessionTransaction | None) -> None:
    """Close the driver connections of ``transaction`` at once, no round trip
    (asyncpg's ``terminate()``): the operation waiting on one fails."""
    for connection in _owned_connections(transaction):
        proxied = connection._dbapi_connection
        driver = None if proxied is None else proxied.dbapi_connection
        if driver is None:
            continue
        try:
            connection.dialect.do_terminate(driver)
        except Exception:
            logger.warning("terminating a connection failed", exc_info=True)


def _invalidate(transaction: sa_orm.SessionTransaction | None) -> None:
    """Invalidate the connections of ``transaction`` that are still checked out,
    so the pool gets them back (and discards them).

    Outside SQLAlchemy's greenlet, the driver connection is terminated rather
    than closed gracefully, so this never waits for the server.
    """
    for connection in _owned_connections(transaction):
        if connection.closed or connection.invalidated:
            continue
        try:
            connection.invalidate()
        except Exception:
            logger.warning("invalidating a connection failed", exc_info=True)


def close_in_background(
    session: sa_async.AsyncSession, loop: asyncio.AbstractEventLoop
) -> asyncio.Task[None]:
    """Close the session of a task that ended without closing it, once no
    other task is awaiting an operation on it (a shielded commit, say).

    Nobody awaits the close, so a failure is logged rather than raised. The
    task cannot be cancelled, but the close is bounded (``close_timeout``), so
    it ends even when the server hangs.
    """
    return _CleanupTask(_close_logging_failure(session), loop=loop)


async def _close_logging_failure(session: sa_async.AsyncSession) -> None:
    try:
        await session.close()
    except Exception:
        logger.warning("closing the session of a finished task failed", exc_info=True)

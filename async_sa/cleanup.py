"""Closing sessions: cancellation never leaves a connection checked out, and a
hung server never holds a close for longer than its deadline."""

from __future__ import annotations

import asyncio
import logging
import typing as t
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


class _RunToCompletion(t.Generic[_T]):
    """Awaitable form of :func:`run_to_completion` and :func:`close_within`."""

    __slots__ = (
        "_abandoned",
        "_awaited",
        "_coro",
        "_on_timeout",
        "_timeout",
        "_timer",
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
                    elif self._timer is None and self._timeout is not None:
                        # Made at the first real wait: a close that never waits
                        # (no transaction) costs no timer.
                        self._timer = awaited.get_loop().call_later(
                            self._timeout, self._expire
                        )
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

"""Closing sessions so that cancellation never leaves a connection checked out."""

from __future__ import annotations

import asyncio
import logging
import typing as t
from collections.abc import Coroutine
from collections.abc import Generator

import sqlalchemy.ext.asyncio as sa_async

_T = t.TypeVar("_T")
logger = logging.getLogger("async_sa")


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
    """Awaitable form of :func:`run_to_completion`."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[t.Any, t.Any, _T]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[t.Any, None, _T]:
        coro = self._coro
        cancelled: asyncio.CancelledError | None = None
        thrown: BaseException | None = None
        while True:
            try:
                awaited = coro.send(None) if thrown is None else coro.throw(thrown)
            except StopIteration as stop:
                result: _T = stop.value
                break
            except BaseException as error:
                if cancelled is not None:
                    raise cancelled from error
                raise
            thrown = None
            if awaited is not None:
                awaited._asyncio_future_blocking = False
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
        if cancelled is not None:
            raise cancelled
        return result


def run_to_completion(coro: Coroutine[t.Any, t.Any, _T]) -> t.Awaitable[_T]:
    """Await ``coro`` in the current task, immune to that task's cancellation.

    A cancellation received meanwhile is raised once ``coro`` has finished, so the
    caller neither abandons the cleanup halfway nor returns before it is done.
    Unlike :func:`asyncio.shield`, no task is made: ``coro`` runs right away, in
    the caller's task, at the cost of one small object per await.
    """
    return _RunToCompletion(coro)


def close_in_background(
    session: sa_async.AsyncSession, loop: asyncio.AbstractEventLoop
) -> asyncio.Task[None]:
    """Close the session of a task that ended without closing it.

    Nobody awaits the close, so a failure is logged rather than raised.
    """
    return _CleanupTask(_close_logging_failure(session), loop=loop)


async def _close_logging_failure(session: sa_async.AsyncSession) -> None:
    try:
        await session.close()
    except Exception:
        logger.warning("closing the session of a finished task failed", exc_info=True)

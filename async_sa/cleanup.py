"""Closing sessions so that cancellation never leaves a connection checked out."""

from __future__ import annotations

import asyncio
import logging
import typing as t
from collections.abc import Coroutine

import sqlalchemy.ext.asyncio as sa_async

_T = t.TypeVar("_T")
logger = logging.getLogger("async_sa")


class _CleanupTask(asyncio.Task[_T]):
    """A task that refuses cancellation, for cleanup that must not stop halfway.

    A task awaiting it and cancelled meanwhile gets its ``CancelledError`` once
    the cleanup is done. :func:`asyncio.run` waits for it before closing the loop.
    """

    def cancel(self, msg: t.Any = None) -> bool:
        return False


async def run_to_completion(coro: Coroutine[t.Any, t.Any, _T]) -> _T:
    """Await ``coro`` in a task that the caller's cancellation cannot stop.

    A cancellation received meanwhile is raised once ``coro`` has finished, so the
    caller neither abandons the cleanup halfway nor returns before it is done.
    """
    return await _CleanupTask(coro, loop=asyncio.get_running_loop())


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

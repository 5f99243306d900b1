"""run_to_completion: cleanup that the caller's cancellation cannot break off."""

from __future__ import annotations

import asyncio
import typing as t

import pytest

from async_sa.cleanup import run_to_completion

_T = t.TypeVar("_T")


class Steps:
    """A cleanup coroutine that waits on futures the test completes by hand."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.futures: list[asyncio.Future[str]] = []
        self.done: list[str] = []
        self.waiting = asyncio.Event()

    def future(self) -> asyncio.Future[str]:
        future: asyncio.Future[str] = self.loop.create_future()
        self.futures.append(future)
        self.waiting.set()
        return future

    async def next_wait(self) -> asyncio.Future[str]:
        """The future the cleanup waits on next, once it waits on it."""
        await self.waiting.wait()
        self.waiting.clear()
        return self.futures[-1]

    async def cleanup(self, count: int) -> list[str]:
        for _ in range(count):
            self.done.append(await self.future())
            await asyncio.sleep(0)
        return self.done


async def awaiting(coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
    """A caller of ``run_to_completion``, to run as a task of its own."""
    return await run_to_completion(coro)


async def test_runs_in_the_callers_task_and_returns_the_result() -> None:
    """No task is made: the coroutine runs in the caller's task, at once."""

    async def which_task() -> tuple[asyncio.Task[t.Any] | None, int]:
        await asyncio.sleep(0)
        return asyncio.current_task(), len(asyncio.all_tasks())

    tasks_before = len(asyncio.all_tasks())
    task, tasks_during = await run_to_completion(which_task())
    assert task is asyncio.current_task()
    assert tasks_during == tasks_before


async def test_cancelled_caller_finishes_the_cleanup_then_raises() -> None:
    """A cancel while the cleanup waits neither cancels the awaited future nor
    ends the caller before the cleanup is done; it is raised afterwards."""
    steps = Steps()
    caller = asyncio.create_task(awaiting(steps.cleanup(2)))
    first = await steps.next_wait()
    assert caller.cancel()
    await asyncio.sleep(0.01)
    assert not first.cancelled() and not caller.done()
    first.set_result("rolled back")
    (await steps.next_wait()).set_result("returned")
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps.done == ["rolled back", "returned"]


async def test_repeated_cancels_are_held_until_the_end() -> None:
    """Cancels at every await, futures and bare yields alike, still let the
    cleanup run every step; the caller ends cancelled once."""
    steps = Steps()
    caller = asyncio.create_task(awaiting(steps.cleanup(3)))
    for step in range(3):
        future = await steps.next_wait()
        caller.cancel()
        caller.cancel()
        future.set_result(f"step {step}")
        await asyncio.sleep(0)
        caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps.done == ["step 0", "step 1", "step 2"]


async def test_failure_of_an_awaited_future_reaches_the_coroutine() -> None:
    """The cleanup sees the exception of the future it awaits, as with a plain
    await, and may handle it."""
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[None] = loop.create_future()
    loop.call_soon(failing.set_exception, ConnectionResetError("gone"))

    async def cleanup() -> str:
        try:
            await failing
        except ConnectionResetError as error:
            return f"handled {error}"
        return "not raised"

    assert await run_to_completion(cleanup()) == "handled gone"


async def test_future_cancelled_by_another_party_reaches_the_coroutine() -> None:
    """A future cancelled by its owner (not by the caller's cancel) raises
    CancelledError inside the cleanup, and the caller is not cancelled."""
    loop = asyncio.get_running_loop()
    abandoned: asyncio.Future[None] = loop.create_future()
    loop.call_soon(abandoned.cancel)

    async def cleanup() -> str:
        try:
            await abandoned
        except asyncio.CancelledError:
            return "handled"
        return "not raised"

    assert await run_to_completion(cleanup()) == "handled"


async def test_failure_after_a_cancel_raises_the_cancel_with_the_failure() -> None:
    """A cleanup failing after the caller was cancelled ends the caller
    cancelled; the failure is kept as the context.

    The chain is checked inside the caller: whoever awaits a cancelled task gets
    a new CancelledError on Python 3.10, the task's own one on 3.11+.
    """
    steps = Steps()
    raised: list[BaseException] = []

    async def failing_cleanup() -> None:
        await steps.future()
        raise ValueError("rollback failed")

    async def caller_task() -> None:
        try:
            await run_to_completion(failing_cleanup())
        except BaseException as error:
            raised.append(error)
            raise

    caller = asyncio.create_task(caller_task())
    future = await steps.next_wait()
    caller.cancel()
    future.set_result("")
    with pytest.raises(asyncio.CancelledError):
        await caller
    [error] = raised
    assert isinstance(error, asyncio.CancelledError)
    assert isinstance(error.__context__, ValueError)


async def test_failure_without_a_cancel_is_raised_as_is() -> None:
    """An exception of the cleanup reaches the caller unchanged."""

    async def failing_cleanup() -> None:
        await asyncio.sleep(0)
        raise ValueError("rollback failed")

    with pytest.raises(ValueError, match="rollback failed"):
        await run_to_completion(failing_cleanup())


async def test_timeout_expires_only_after_the_cleanup() -> None:
    """wait_for's timeout cancels the caller; the cleanup still completes, and
    the caller then gets TimeoutError."""
    steps = Steps()
    asyncio.get_running_loop().call_later(
        0.05, lambda: steps.futures[0].set_result("late")
    )
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_to_completion(steps.cleanup(1)), timeout=0.001)
    assert steps.done == ["late"]


async def test_closing_the_caller_closes_the_cleanup() -> None:
    """A caller coroutine closed while suspended closes the cleanup coroutine,
    so its ``finally`` blocks run."""
    steps = Steps()
    finished: list[str] = []

    async def cleanup() -> None:
        try:
            await steps.future()
        finally:
            finished.append("finally")

    async def caller() -> None:
        await run_to_completion(cleanup())

    coroutine = caller()
    coroutine.send(None)
    coroutine.close()
    assert finished == ["finally"]

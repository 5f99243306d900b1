"""The test run's event loop is the one ``ASYNC_SA_TEST_LOOP`` asks for, in the
tests' own loops and in the loops tests start with :func:`asyncio.run`."""

from __future__ import annotations

import asyncio

from tests.conftest import LOOP


async def describe_running_loop() -> str:
    """``uvloop``, ``eager`` or ``asyncio``: what kind of loop is running."""
    loop = asyncio.get_running_loop()
    if any(kind.__module__.startswith("uvloop") for kind in type(loop).__mro__):
        return "uvloop"
    started: list[bool] = []

    async def start() -> None:
        started.append(True)

    task = asyncio.create_task(start())
    eager = bool(started)  # An eager task has run its first step already.
    await task
    return "eager" if eager else "asyncio"


async def test_tests_run_on_the_configured_loop() -> None:
    assert await describe_running_loop() == LOOP


def test_asyncio_run_starts_the_configured_loop() -> None:
    assert asyncio.run(describe_running_loop()) == LOOP

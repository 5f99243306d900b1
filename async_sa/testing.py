"""pytest fixtures for apps that use async_sa: every test isolated, tables made once.

Opt in from the ``conftest.py`` at the root of your tests (it is not loaded
otherwise)::

    pytest_plugins = ["async_sa.testing"]

and tell it your ``SQLAlchemy`` object (and, under Quart, your app) with two
session-scoped fixtures of your own::

    @pytest.fixture(scope="session")
    def async_sa_db() -> SQLAlchemy:
        return db

    @pytest.fixture(scope="session")
    def async_sa_app() -> Quart:          # Quart only
        return create_app({...})

Fixtures given:

- ``async_sa_tables`` (session): ``create_all()`` before the first test that
  needs it, ``drop_all()`` after the last, each in an event loop of its own (so
  any loop scope works). Point the tests at a database of their own.
- ``isolated_db`` (function, async): your ``db`` inside
  ``db.test_isolation()`` (and, with an app, inside its app context), so
  everything the test and its fixtures write is rolled back after it, and
  ``db.session`` is one session for the fixtures, the test and the test
  client's requests: an object made in a fixture stays attached in the test.
- ``isolated_app`` (function, async): the same, giving the app.

Async fixtures that make data should depend on ``isolated_db`` (or
``isolated_app``), so they run inside the isolation.

It runs with pytest-asyncio's default loop per test and with one loop for the
session (``asyncio_default_fixture_loop_scope`` and
``asyncio_default_test_loop_scope`` both ``"session"``): async_sa keeps each
loop's connections apart. It needs pytest-asyncio 0.25 or later (1.1 on Python
3.10), which copies what an async fixture sets in its context (the isolation,
the app context) into the test's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import sys
import typing as t
from collections.abc import AsyncIterator
from collections.abc import Coroutine
from collections.abc import Iterator

import pytest
import pytest_asyncio

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy

MIN_PYTEST_ASYNCIO = (1, 1) if sys.version_info < (3, 11) else (0, 25)
"""The first pytest-asyncio that copies an async fixture's context variables
into the test's, on this Python."""


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a pytest-asyncio that would not hand the isolation to the test."""
    version = importlib.metadata.version("pytest-asyncio")
    found = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if found < MIN_PYTEST_ASYNCIO:
        wanted = ".".join(map(str, MIN_PYTEST_ASYNCIO))
        raise pytest.UsageError(
            f"async_sa.testing needs pytest-asyncio {wanted} or later on this "
            f"Python (found {version}), which passes what async fixtures set "
            "in their context on to the test: pip install -U pytest-asyncio."
        )


@pytest.fixture(scope="session")
def async_sa_db() -> SQLAlchemy:
    """Your ``SQLAlchemy`` object: define this fixture in your conftest.py."""
    raise pytest.UsageError(
        "async_sa.testing needs your SQLAlchemy object: define a "
        "session-scoped fixture named async_sa_db in conftest.py that returns "
        "it (and one named async_sa_app returning the Quart app, under Quart)."
    )


@pytest.fixture(scope="session")
def async_sa_app() -> t.Any:
    """Your Quart app, or ``None`` (the default) for a standalone ``db``."""
    return None


@pytest.fixture(scope="session")
def async_sa_tables(async_sa_db: SQLAlchemy, async_sa_app: t.Any) -> Iterator[None]:
    """The tables of every bind, created once for the test session and dropped
    after it."""
    _run_in_own_loop(_on_metadata(async_sa_db, async_sa_app, "create_all"))
    yield
    _run_in_own_loop(_on_metadata(async_sa_db, async_sa_app, "drop_all"))


@pytest_asyncio.fixture
async def isolated_db(
    async_sa_db: SQLAlchemy, async_sa_app: t.Any, async_sa_tables: None
) -> AsyncIterator[SQLAlchemy]:
    """``db`` inside ``db.test_isolation()`` (and the app's context): what the
    test writes is rolled back after it; one session for fixtures, test and
    test-client requests."""
    async with _app_context(async_sa_app), async_sa_db.test_isolation():
        yield async_sa_db


@pytest_asyncio.fixture
async def isolated_app(isolated_db: SQLAlchemy, async_sa_app: t.Any) -> t.Any:
    """The Quart app, with ``isolated_db``'s isolation and its app context."""
    if async_sa_app is None:
        raise pytest.UsageError(
            "isolated_app needs your Quart app: define a session-scoped "
            "fixture named async_sa_app in conftest.py that returns it."
        )
    return async_sa_app


def _app_context(app: t.Any) -> t.AsyncContextManager[object]:
    return contextlib.nullcontext() if app is None else app.app_context()


async def _on_metadata(db: SQLAlchemy, app: t.Any, operation: str) -> None:
    """Run ``db.create_all()`` or ``db.drop_all()``, in ``app``'s context."""
    async with _app_context(app):
        await getattr(db, operation)()


def _run_in_own_loop(coro: Coroutine[t.Any, t.Any, None]) -> None:
    """Run ``coro`` with :func:`asyncio.run` in a thread: it works whether or
    not pytest-asyncio's loop is running, and leaves that loop alone."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()

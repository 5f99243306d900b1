"""Cleanup is bounded: a hung server never holds a close for longer than
``close_timeout``; the connection is terminated and invalidated instead.

The server hangs the way a silent network partition makes it hang: a cluster of
the tests' own (see :mod:`tests.pg_cluster`) is frozen with ``SIGSTOP``. A
regression makes a close wait until the cluster is thawed (``THAW_AFTER``), so
it fails on the elapsed time instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing as t
import uuid
from collections.abc import Iterator

import aiosqlite
import pytest
import sqlalchemy as sa

from async_sa import SQLAlchemy
from async_sa.cleanup import ABANDON_AFTER
from tests.conftest import asyncpg_dsn
from tests.conftest import checked_out
from tests.conftest import NewDb
from tests.pg_cluster import pg_cluster
from tests.pg_cluster import PgCluster

__all__ = ["pg_cluster"]

CLOSE_TIMEOUT = 1.0
THAW_AFTER = 20.0
MARGIN = 2.5
"""Seconds a close may take beyond its deadline on a loaded machine."""


class Timer:
    """Seconds elapsed inside a ``with timed() as timer`` block."""

    elapsed = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Timer]:
    """Measure the block on the running loop's clock."""
    timer = Timer()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        yield timer
    finally:
        timer.elapsed = loop.time() - started


@pytest.fixture
def application_name() -> str:
    """Names the test's backends, to count them on the cluster."""
    return f"async_sa_bounded_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["asyncpg", "psycopg"])
def cluster_db(
    request: pytest.FixtureRequest,
    pg_cluster: PgCluster,
    new_db: NewDb,
    application_name: str,
) -> t.Callable[..., SQLAlchemy]:
    """Build a ``SQLAlchemy`` on the cluster through each PostgreSQL driver
    (``close_timeout`` 1 s unless given); its backends carry
    ``application_name``."""
    url = sa.make_url(pg_cluster.url).set(drivername=f"postgresql+{request.param}")
    connect_args: dict[str, t.Any] = {"application_name": application_name}
    if request.param == "asyncpg":
        connect_args = {"server_settings": connect_args}

    def make(**kwargs: t.Any) -> SQLAlchemy:
        kwargs.setdefault("close_timeout", CLOSE_TIMEOUT)
        return new_db(url=url, engine_options={"connect_args": connect_args}, **kwargs)

    return make


async def backends(cluster: PgCluster, application_name: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(cluster.url))
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
        return count
    finally:
        await connection.close()


async def no_backend_left(cluster: PgCluster, application_name: str) -> None:
    """Wait (up to 10 s) until no backend of ours is left on the cluster: a
    terminated connection's backend ends once the thawed server notices."""
    for _ in range(100):
        if await backends(cluster, application_name) == 0:
            return
        await asyncio.sleep(0.1)
    assert await backends(cluster, application_name) == 0


async def recovered(db: SQLAlchemy, cluster: PgCluster, application_name: str) -> None:
    """The thawed server answers again, and once the pools are disposed no backend
    of ours is left."""
    assert await db.session.scalar(sa.text("SELECT 1")) == 1
    await db.dispose()
    await no_backend_left(cluster, application_name)


async def test_remove_gives_up_on_a_hung_server(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """remove() returns about close_timeout after the server stopped answering,
    logs why, and leaves no connection checked out."""
    db = cluster_db()
    await db.session.execute(sa.text("SELECT 1"))
    with pg_cluster.frozen(THAW_AFTER), timed() as timer:
        await db.session.remove()
    assert CLOSE_TIMEOUT <= timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert checked_out(db) == 0
    assert "took longer than close_timeout (1.0 s)" in caplog.text
    await recovered(db, pg_cluster, application_name)


async def test_remove_cancelled_midway_raises_once_the_deadline_passed(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
) -> None:
    """A task cancelled during remove() (a timeout, a client hanging up) still
    lets the close run, but only until close_timeout; the cancellation then
    arrives."""
    db = cluster_db()
    queried, frozen = asyncio.Event(), asyncio.Event()

    async def user() -> None:
        await db.session.execute(sa.text("SELECT 1"))
        queried.set()
        await frozen.wait()
        await db.session.remove()

    task = asyncio.create_task(user())
    await queried.wait()
    with pg_cluster.frozen(THAW_AFTER), timed() as timer:
        frozen.set()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert checked_out(db) == 0
    await recovered(db, pg_cluster, application_name)


async def test_close_gives_up_on_a_hung_server(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
) -> None:
    """An explicit session's close() is bounded the same way."""
    db = cluster_db()
    session = db.sessionmaker()
    await session.execute(sa.text("SELECT 1"))
    with pg_cluster.frozen(THAW_AFTER), timed() as timer:
        await session.close()
    assert timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert checked_out(db) == 0
    await recovered(db, pg_cluster, application_name)


async def test_async_with_exit_gives_up_on_a_hung_server(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
) -> None:
    """Leaving ``async with db.session()`` is bounded, and unregisters the session."""
    db = cluster_db()
    with contextlib.ExitStack() as stack:
        async with db.session() as session:
            await session.execute(sa.text("SELECT 1"))
            stack.enter_context(pg_cluster.frozen(THAW_AFTER))
            timer = stack.enter_context(timed())
    assert timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert checked_out(db) == 0
    assert db.session() is not session
    await recovered(db, pg_cluster, application_name)


async def test_orphan_cleanup_gives_up_on_a_hung_server(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
) -> None:
    """A task that ended without closing its session has it closed in the
    background within close_timeout: wait_closed() returns."""
    db = cluster_db()
    queried, frozen = asyncio.Event(), asyncio.Event()

    async def forgetful() -> None:
        await db.session.execute(sa.text("SELECT 1"))
        queried.set()
        await frozen.wait()

    task = asyncio.create_task(forgetful())
    await queried.wait()
    assert checked_out(db) == 1
    with pg_cluster.frozen(THAW_AFTER), timed() as timer:
        frozen.set()
        await task
        await db.session.registry.wait_closed()
    assert timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert checked_out(db) == 0
    await recovered(db, pg_cluster, application_name)


async def test_every_bind_of_the_session_is_given_back(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
) -> None:
    """A session holding connections of two binds gives both back: SQLAlchemy
    stops closing at the first one that fails, the rest are invalidated."""
    db = cluster_db()
    db = cluster_db(binds={"other": db.engine.url})
    await db.session.execute(sa.text("SELECT 1"))
    await db.session.execute(sa.text("SELECT 2"), bind_arguments={"bind_key": "other"})
    assert checked_out(db) == 2
    with pg_cluster.frozen(THAW_AFTER), timed() as timer:
        await db.session.remove()
    assert timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert checked_out(db) == 0
    assert (
        await db.session.scalar(
            sa.text("SELECT 2"), bind_arguments={"bind_key": "other"}
        )
        == 2
    )
    await recovered(db, pg_cluster, application_name)


async def test_a_server_answering_before_the_deadline_keeps_its_connection(
    cluster_db: t.Callable[..., SQLAlchemy],
    pg_cluster: PgCluster,
    application_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A close waits for a slow server up to the deadline: the connection that
    answered in time goes back to the pool and is used again."""
    db = cluster_db(close_timeout=10.0)
    backend_pid = await db.session.scalar(sa.text("SELECT pg_backend_pid()"))
    with pg_cluster.frozen(thaw_after=0.5), timed() as timer:
        await db.session.remove()
    # The thaw timer starts just before the measured block.
    assert 0.4 <= timer.elapsed < 10.0
    assert "close_timeout" not in caplog.text
    assert await db.session.scalar(sa.text("SELECT pg_backend_pid()")) == backend_pid
    await recovered(db, pg_cluster, application_name)


async def test_default_close_timeout_is_a_few_seconds(
    new_db: NewDb, pg_cluster: PgCluster, application_name: str
) -> None:
    """Without configuration a close gives up after 5 seconds."""
    settings = {"application_name": application_name}
    db = new_db(
        url=pg_cluster.url,
        engine_options={"connect_args": {"server_settings": settings}},
    )
    await db.session.execute(sa.text("SELECT 1"))
    with pg_cluster.frozen(THAW_AFTER), timed() as timer:
        await db.session.remove()
    assert 5.0 <= timer.elapsed < 5.0 + MARGIN
    assert checked_out(db) == 0
    await recovered(db, pg_cluster, application_name)


@pytest.mark.parametrize("value", [0, -1, "5", True, None])
def test_close_timeout_must_be_a_positive_number(value: object) -> None:
    """A close_timeout that is not a number of seconds above 0 is an error
    naming the argument."""
    with pytest.raises(ValueError, match="close_timeout must be a number"):
        SQLAlchemy(url="sqlite://", close_timeout=value)  # type: ignore[call-overload]


async def test_a_driver_that_ignores_termination_is_abandoned(
    new_db: NewDb,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rollback that never ends, even once its connection is terminated, is
    abandoned (cancelled) a moment after the deadline; the close returns and the
    connection is invalidated."""
    db = new_db(url="sqlite://", close_timeout=0.5)
    await db.session.execute(sa.text("SELECT 1"))
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hung_rollback(self: aiosqlite.Connection) -> None:
        await never

    monkeypatch.setattr(aiosqlite.Connection, "rollback", hung_rollback)
    with timed() as timer:
        await db.session.remove()
    monkeypatch.undo()
    assert 0.5 + ABANDON_AFTER <= timer.elapsed < 0.5 + ABANDON_AFTER + MARGIN
    assert checked_out(db) == 0
    assert "took longer than close_timeout" in caplog.text
    assert await db.session.scalar(sa.text("SELECT 1")) == 1

"""Sessions never leak: forgotten, cancelled, or used across event loops."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import typing as t
import uuid
import warnings
import weakref

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.pool import NullPool
from sqlalchemy.pool import Pool
from sqlalchemy.pool import StaticPool

from async_sa import SQLAlchemy
from async_sa.event_loops import LoopPool
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import MakeDb
from tests.conftest import on_heavy_backends
from tests.conftest import POSTGRES_URL
from tests.conftest import require_postgres

LEAK_TASKS = 10_000
CANCELLED_TASKS = 1_000


@pytest.mark.reliability
@on_heavy_backends
async def test_forgotten_sessions_are_closed_and_forgotten(make_db: MakeDb) -> None:
    """10,000 tasks that never close their session, on a pool of 5: no pool
    timeout, nothing checked out afterwards, and an empty registry."""
    db = make_db(engine_options={"pool_size": 5, "max_overflow": 0, "pool_timeout": 10})

    class Counter(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    limit = asyncio.Semaphore(50)

    async def forget(number: int) -> None:
        async with limit:
            assert await db.session.scalar(sa.select(sa.literal(number))) == number

    await asyncio.gather(*(forget(number) for number in range(LEAK_TASKS)))
    await db.session.registry.wait_closed()
    assert checked_out(db) == 0
    assert not db.session.registry.registry
    assert not db.session.registry._closing


async def test_registry_does_not_keep_finished_tasks_alive(db: SQLAlchemy) -> None:
    """Once a task is done, neither it nor its session is referenced by us."""
    sessions: list[weakref.ref[t.Any]] = []

    async def use() -> None:
        sessions.append(weakref.ref(db.session()))
        await db.session.execute(sa.text("SELECT 1"))

    task = asyncio.create_task(use())
    await task
    finished = weakref.ref(task)
    del task
    await db.session.registry.wait_closed()
    gc.collect()
    assert finished() is None
    assert sessions[0]() is None
    assert not db.session.registry.registry


OPERATIONS: dict[str, t.Callable[[t.Any], t.Awaitable[object]]] = {
    "execute": lambda session: session.execute(sa.text("SELECT 1")),
    "flush": lambda session: session.flush(),
    "commit": lambda session: session.commit(),
    "close": lambda session: session.close(),
}


@pytest.mark.parametrize("where", list(OPERATIONS))
async def test_cancel_at_each_await_leaves_nothing_checked_out(
    make_db: MakeDb, where: str
) -> None:
    """Cancelled inside execute, flush, commit or close, at several points in
    each: nothing checked out afterwards, and only whole pairs stored."""
    db = make_db()

    class Pair(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    started = asyncio.Event()

    async def work() -> None:
        session = db.session()
        session.add_all([Pair(), Pair()])
        await session.execute(sa.text("SELECT 1"))
        started.set()
        await OPERATIONS[where](session)
        await session.commit()

    for delay in range(8):
        started.clear()
        task = asyncio.create_task(work())
        await started.wait()
        for _ in range(delay):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await db.session.registry.wait_closed()
    assert checked_out(db) == 0
    total = await db.session.scalar(sa.select(sa.func.count()).select_from(Pair))
    assert total is not None and total % 2 == 0


async def test_thousand_cancelled_transactions_leave_no_trace(
    backend: Backend,
) -> None:
    """1,000 tasks each inserting a pair in one transaction, cancelled at random:
    0 checked out, none of our server connections idle in transaction, only
    whole pairs."""
    application_name = f"async_sa_cancel_{uuid.uuid4().hex[:12]}"
    db = SQLAlchemy(
        url=backend.url,
        engine_options=backend.tagged(application_name, pool_size=10, max_overflow=0),
    )

    class Pair(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        pair: Mapped[int] = mapped_column(index=True)

    try:
        await db.create_all()
        rng = random.Random(1234)

        async def insert_pair(number: int) -> None:
            db.session.add(Pair(pair=number))
            await db.session.flush()
            db.session.add(Pair(pair=number))
            await db.session.commit()

        tasks = [asyncio.create_task(insert_pair(n)) for n in range(CANCELLED_TASKS)]
        for task in tasks:
            if rng.random() < 0.7:
                await asyncio.sleep(rng.random() * 0.002)
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.session.registry.wait_closed()
        assert checked_out(db) == 0
        assert (
            await backend.count_connections(application_name, "idle in transaction")
            == 0
        )
        per_pair = sa.select(Pair.pair, sa.func.count()).group_by(Pair.pair)
        async with db.sessionmaker() as session:
            counts = (await session.execute(per_pair)).all()
        assert all(count == 2 for _, count in counts)
        assert any(task.cancelled() for task in tasks)
        assert 0 < len(counts) < CANCELLED_TASKS
    finally:
        await db.drop_all()
        await db.dispose()


async def test_cancelled_connects_leave_no_server_connection(
    backend: Backend,
) -> None:
    """Connects cancelled at random, the cancelled tasks kept: none of their
    server connections stays open (psycopg kept a half-open one alive as long
    as its CancelledError, filling max_connections under cancellation storms)."""
    if not backend.is_postgres:
        pytest.skip("counts PostgreSQL server connections")
    application_name = f"async_sa_open_{uuid.uuid4().hex[:12]}"
    db = SQLAlchemy(
        url=backend.url,
        engine_options=backend.tagged(application_name, poolclass=NullPool),
    )

    async def connect() -> None:
        async with db.engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    rng = random.Random(1234)
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(80):
            tasks.append(asyncio.create_task(connect()))
            await asyncio.sleep(rng.random() * 0.004)
            tasks[-1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert any(task.cancelled() for task in tasks)
        for _ in range(100):  # the server ends a closed connection's backend soon
            if await backend.count_connections(application_name) == 0:
                break
            await asyncio.sleep(0.02)
        assert await backend.count_connections(application_name) == 0
    finally:
        await db.dispose()


async def test_timeout_around_commit_leaves_nothing_checked_out(db: SQLAlchemy) -> None:
    """asyncio.wait_for expiring during commit cleans up like a cancel (each
    write is a task of its own, as Python < 3.12's wait_for made it)."""

    class Row(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()

    async def write() -> None:
        db.session.add(Row())
        await db.session.commit()

    for timeout in (0, 0.0001, 0.001, 0.01):
        try:
            await asyncio.wait_for(asyncio.create_task(write()), timeout)
        except asyncio.TimeoutError:
            pass
    await db.session.registry.wait_closed()
    assert checked_out(db) == 0


@pytest.mark.parametrize("poolclass", [None, NullPool, StaticPool])
def test_db_keeps_working_across_event_loops(
    backend: Backend, tmp_path: t.Any, poolclass: type[Pool] | None
) -> None:
    """A second asyncio.run (and a loop in another thread) just works, and no
    connection made in one loop is handed out in another: with the default
    pool (one per loop) and with a pool class the user chose."""
    if backend.is_postgres:
        require_postgres()
    options = dict(backend.engine_options)
    if poolclass is not None:
        options["poolclass"] = poolclass
    db = SQLAlchemy(url=backend.url, engine_options=options)
    assert isinstance(db.engine.pool, poolclass or LoopPool)

    class Note(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    loops: list[asyncio.AbstractEventLoop] = []

    async def use(first: bool) -> int:
        loops.append(asyncio.get_running_loop())
        if first:
            await db.create_all()
        db.session.add(Note())
        await db.session.commit()
        connection = await db.session.connection()
        raw = await connection.get_raw_connection()
        assert raw._connection_record is not None
        assert (
            raw._connection_record.info["async_sa.loop"] is asyncio.get_running_loop()
        )
        return (
            await db.session.scalar(sa.select(sa.func.count()).select_from(Note)) or 0
        )

    async def finish() -> None:
        await db.drop_all()
        await db.dispose()

    assert asyncio.run(use(first=True)) == 1
    assert asyncio.run(use(first=False)) == 2
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(use(first=False)))
    )
    thread.start()
    thread.join()
    assert result == [3]
    assert len(set(map(id, loops))) == 3
    asyncio.run(finish())


def test_connection_from_a_closed_loop_is_never_handed_out(
    postgres_url_sync: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop closed without asyncio.run's cleanup still leaves no stale
    connection to the next loop: the pooled one is dropped at checkout, without
    an attempt to close it through its dead loop (which logged a traceback that
    kept the connection alive into later tests)."""
    db = SQLAlchemy(url=postgres_url_sync)
    # Held here, so that the first connection, whose socket its closed loop can
    # no longer close, is collected below and not in whichever later test.
    opened: list[object] = []
    sa.event.listen(
        db.engine.sync_engine,
        "connect",
        lambda connection, _record: opened.append(connection.driver_connection),
    )

    async def query() -> int:
        try:
            return await db.session.scalar(sa.text("SELECT 1")) or 0
        finally:
            await db.session.remove()

    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(query()) == 1
    # The connection's socket stays open: uvloop warns when the loop closes,
    # asyncio when the socket is collected (below).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop.close()

    async def again() -> int:
        try:
            return await query()
        finally:
            await db.dispose()

    assert asyncio.run(again()) == 1
    assert len(opened) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    first = weakref.ref(opened[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del opened[0]
        gc.collect()
    assert first() is None


@pytest.fixture
def postgres_url_sync() -> str:
    """The PostgreSQL URL, for tests that run their own event loops."""
    require_postgres()
    return POSTGRES_URL


async def test_dispose_closes_pooled_connections_of_every_engine(
    make_db: MakeDb, backend: Backend
) -> None:
    """async with db: disposes every engine on exit; the engines stay usable."""
    db = make_db(binds={"a": backend.bind()})
    async with db:
        for engine in db.engines.values():
            async with engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
        assert all(e.pool.checkedin() == 1 for e in db.engines.values())  # type: ignore[attr-defined]
    assert all(e.pool.checkedin() == 0 for e in db.engines.values())  # type: ignore[attr-defined]
    async with db.engine.connect() as connection:
        assert await connection.scalar(sa.text("SELECT 1")) == 1


async def test_dispose_closes_the_connection_of_the_callers_session(
    make_db: MakeDb,
) -> None:
    """``finally: await db.dispose()`` in a task whose session still holds a
    connection: the session is closed first, so its connection is closed rather
    than returned to the disposed pool, where nothing would ever close it."""
    db = make_db()
    opened: list[object] = []
    closed: list[object] = []
    sa.event.listen(db.engine.sync_engine, "connect", lambda c, _r: opened.append(c))
    sa.event.listen(db.engine.sync_engine, "close", lambda c, _r: closed.append(c))
    assert await db.session.scalar(sa.text("SELECT 1")) == 1
    await db.dispose()
    assert opened and closed == opened
    assert not db.session.registry.has()


class SqliteGate:
    """A SQL function, ``gate()``, that holds the aiosqlite worker thread running
    it until released: a statement that is still running exactly when a test
    wants it to be."""

    def __init__(self, db: SQLAlchemy) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.workers_before = set(threading.enumerate())
        sa.event.listen(db.engine.sync_engine, "connect", self._add_to)

    def _gate(self) -> int:
        self.entered.set()
        self.released.wait(10)
        return 1

    def _add_to(self, dbapi_connection: t.Any, _record: t.Any) -> None:
        dbapi_connection.run_async(
            lambda driver: driver.create_function("gate", 0, self._gate)
        )

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10)

    def release_later(self, seconds: float) -> None:
        threading.Timer(seconds, self.released.set).start()

    def join_workers(self) -> None:
        for thread in set(threading.enumerate()) - self.workers_before:
            thread.join(10)


def run_in_own_loop(main: t.Coroutine[t.Any, t.Any, None]) -> None:
    """``asyncio.run(main)`` in a daemon thread, failing instead of hanging."""
    runner = threading.Thread(target=asyncio.run, args=(main,), daemon=True)
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "asyncio.run did not return within 20 s"


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Exceptions that end any thread during the test."""
    errors: list[BaseException | None] = []
    monkeypatch.setattr(
        threading, "excepthook", lambda args: errors.append(args.exc_value)
    )
    return errors


def test_sqlite_statement_cancelled_twice_lets_its_loop_end(
    tmp_path: t.Any, thread_errors: list[BaseException | None]
) -> None:
    """A task cancelled during a SQLite statement, then again while SQLAlchemy
    closes the connection behind that statement (so it stops the driver, and the
    close stops it a second time): asyncio.run still returns, and the worker
    thread is done before the loop closes."""
    db = SQLAlchemy(url=f"sqlite:///{tmp_path / 'gate.db'}")
    gate = SqliteGate(db)

    async def cancel_twice() -> None:
        task = asyncio.create_task(db.session.execute(sa.text("SELECT gate()")))
        await gate.wait_entered()
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gate.release_later(0.2)

    run_in_own_loop(cancel_twice())
    gate.join_workers()
    assert thread_errors == []


def test_loop_waits_for_a_sqlite_worker_stopped_by_the_garbage_collector(
    tmp_path: t.Any, thread_errors: list[BaseException | None]
) -> None:
    """A checked-out connection garbage-collected mid-statement is stopped with
    nothing awaiting the stop: the loop's shutdown waits for the worker thread,
    which would otherwise hand its result to a closed loop."""
    db = SQLAlchemy(url=f"sqlite:///{tmp_path / 'gate.db'}")
    gate = SqliteGate(db)

    async def forget_mid_statement() -> None:
        connection = await db.engine.connect()
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        asyncio.ensure_future(driver.execute("SELECT gate()"))
        await gate.wait_entered()
        with pytest.warns(sa.exc.SAWarning, match="garbage collector"):
            del connection, driver
        gate.release_later(0.2)

    run_in_own_loop(forget_mid_statement())
    gate.join_workers()
    assert thread_errors == []

"""Connections and event loops: a loop's end, ``dispose()`` and several loops at
once leave no connection open and touch no other loop's connections."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import typing as t
import uuid
import warnings
import weakref

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import MakeDb

POOL_SIZE = 3
SHORT_LOOPS = 20
SHORT_LOOPS_AT_ONCE = 4
LOOPS_KEPT_ALIVE_CHECK = 1_000
LOOPS_KEPT_ALIVE_CHECK_SERVER = 200  # each opens a server connection


class Connections:
    """Counts the connections an engine opens and closes, and, on a server,
    its server backends (tagged with an application name of their own)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.application_name = f"async_sa_loops_{uuid.uuid4().hex[:12]}"
        self.opened = 0
        self.closed = 0
        self._lock = threading.Lock()

    def engine_options(self, **options: t.Any) -> dict[str, t.Any]:
        """The backend's engine options, tagged, plus ``options``."""
        return self.backend.tagged(self.application_name, **options)

    def watch(self, db: SQLAlchemy) -> None:
        sa.event.listen(db.engine.sync_engine, "connect", self._on_connect)
        sa.event.listen(db.engine.sync_engine, "close", self._on_close)

    def _on_connect(self, _connection: t.Any, _record: t.Any) -> None:
        with self._lock:
            self.opened += 1

    def _on_close(self, _connection: t.Any, _record: t.Any) -> None:
        with self._lock:
            self.closed += 1

    @property
    def open(self) -> int:
        return self.opened - self.closed

    async def backends(self) -> int:
        """Our server connections now (0 on SQLite)."""
        return await self.backend.count_connections(self.application_name)

    async def wait_backends_gone(self) -> int:
        """Our server connections once the server has ended the closed ones
        (it does so shortly after the client leaves): 0 unless some leaked."""
        deadline = time.monotonic() + 10
        while (left := await self.backends()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return left


def collect_without_resource_warnings() -> None:
    """Collect garbage; any connection the collector has to close fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught] == []


def test_asyncio_run_closes_connections_of_tasks_still_holding_sessions(
    backend: Backend,
) -> None:
    """main() returns while 5 tasks hold sessions (asyncio.run cancels them):
    every connection is closed before the loop closes, none is left to the
    garbage collector, and no server connection stays open."""
    connections = Connections(backend)
    db = SQLAlchemy(url=backend.url, engine_options=connections.engine_options())
    connections.watch(db)

    holding: list[None] = []

    async def hold() -> None:
        await db.session.execute(sa.text("SELECT 1"))
        holding.append(None)
        await asyncio.sleep(3600)

    async def main() -> None:
        for _ in range(5):
            asyncio.create_task(hold())
        while len(holding) < 5:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert connections.opened == 5
    assert connections.open == 0
    assert asyncio.run(connections.wait_backends_gone()) == 0
    collect_without_resource_warnings()


async def test_dispose_closes_connections_other_tasks_hold_when_they_come_back(
    make_db: MakeDb, backend: Backend
) -> None:
    """``await db.dispose()`` while two other tasks hold connections: they keep
    working, and their connections are closed when they come back, not
    returned to the discarded pool."""
    connections = Connections(backend)
    db = make_db(engine_options=connections.engine_options())
    connections.watch(db)
    holding: list[None] = []
    disposed = asyncio.Event()

    async def hold() -> int:
        await db.session.execute(sa.text("SELECT 1"))
        holding.append(None)
        await disposed.wait()
        value = await db.session.scalar(sa.text("SELECT 2")) or 0
        await db.session.remove()
        return value

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    while len(holding) < 2:
        await asyncio.sleep(0.01)
    await db.dispose()
    assert connections.open == 2
    disposed.set()
    assert await asyncio.gather(*holders) == [2, 2]
    assert connections.open == 0
    assert await connections.wait_backends_gone() == 0
    collect_without_resource_warnings()


async def test_dispose_closes_a_running_loops_idle_connections_in_that_loop(
    backend: Backend,
    new_db: t.Callable[..., SQLAlchemy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``await db.dispose()`` in this loop while another loop, in a thread,
    keeps idle pooled connections: they are closed by that loop, while it
    runs (never from this one), and it goes on working."""
    connections = Connections(backend)
    db = new_db(url=backend.url, engine_options=connections.engine_options())
    connections.watch(db)
    used = threading.Event()
    disposed = threading.Event()
    seen: list[object] = []

    async def query() -> None:
        await db.session.execute(sa.text("SELECT 1"))
        await db.session.remove()

    async def other_loop() -> None:
        await asyncio.gather(query(), query())
        used.set()
        while not disposed.is_set():
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 10
        while connections.open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen.append(connections.open)
        seen.append(await db.session.scalar(sa.text("SELECT 2")))
        await db.session.remove()

    thread = threading.Thread(target=asyncio.run, args=(other_loop(),))
    thread.start()
    try:
        assert await asyncio.to_thread(used.wait, 10)
        assert connections.open == 2
        await db.dispose()
    finally:
        disposed.set()
        await asyncio.to_thread(thread.join, 20)
    assert seen == [0, 2]
    assert connections.open == 0
    assert await connections.wait_backends_gone() == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    collect_without_resource_warnings()


async def test_short_loops_in_threads_leave_a_long_running_loop_alone(
    backend: Backend, new_db: t.Callable[..., SQLAlchemy]
) -> None:
    """This test's loop works without pause while 20 jobs run
    ``asyncio.to_thread(asyncio.run, job)`` on the same ``db``: no error in
    either, each live loop holds at most its own pool's connections, every job
    loop's end closes exactly its own, and nothing is left after dispose."""
    connections = Connections(backend)
    db = new_db(
        url=backend.url,
        engine_options=connections.engine_options(
            pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30
        ),
    )
    connections.watch(db)

    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        origin: Mapped[str] = mapped_column(sa.String(20))

    await db.create_all()
    done = asyncio.Event()
    most_backends = 0

    async def insert(origin: str) -> None:
        db.session.add(Item(origin=origin))
        await db.session.commit()
        await db.session.remove()

    async def work_continuously() -> int:
        nonlocal most_backends
        rounds = 0
        while not done.is_set():
            await asyncio.gather(*(insert("long") for _ in range(POOL_SIZE)))
            most_backends = max(most_backends, await connections.backends())
            rounds += 1
        return rounds

    async def job(number: int) -> int:
        await asyncio.gather(*(insert(f"job {number}") for _ in range(POOL_SIZE)))
        return (
            await db.session.scalar(
                sa.select(sa.func.count()).where(Item.origin == f"job {number}")
            )
            or 0
        )

    limit = asyncio.Semaphore(SHORT_LOOPS_AT_ONCE)

    async def run_job(number: int) -> int:
        async with limit:
            return await asyncio.to_thread(asyncio.run, job(number))

    worker = asyncio.create_task(work_continuously())
    try:
        counts = await asyncio.gather(*(run_job(n) for n in range(SHORT_LOOPS)))
    finally:
        done.set()
        rounds = await worker
    assert counts == [POOL_SIZE] * SHORT_LOOPS
    assert rounds > 0
    assert most_backends <= POOL_SIZE * (1 + SHORT_LOOPS_AT_ONCE)
    # Every job loop closed its own connections when it ended; only this
    # loop's pool still holds some.
    assert connections.open <= POOL_SIZE
    await db.dispose()
    assert connections.open == 0
    assert await connections.wait_backends_gone() == 0
    collect_without_resource_warnings()


def test_ended_event_loops_are_not_kept_alive(backend: Backend) -> None:
    """1,000 ``asyncio.run`` calls that use the same ``db`` (200 on
    PostgreSQL): once they have returned, none of their loops (nor anything
    finished in them) is kept."""
    connections = Connections(backend)
    db = SQLAlchemy(url=backend.url, engine_options=connections.engine_options())
    connections.watch(db)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        assert await db.session.scalar(sa.text("SELECT 1")) == 1

    runs = LOOPS_KEPT_ALIVE_CHECK
    if backend.has_server:
        runs = LOOPS_KEPT_ALIVE_CHECK_SERVER
    for _ in range(runs):
        asyncio.run(use())
    collect_without_resource_warnings()
    assert sum(loop() is not None for loop in loops) == 0
    assert connections.open == 0

"""Memory: 100,000 tasks use the task-scoped session and never call ``remove()``.

Each side runs in a fresh subprocess (``python -m benchmarks.memory``), so
its RSS numbers start clean. The tasks run in waves of 100 concurrent tasks;
RSS is read from ``/proc/self/status`` after a warm-up of 2,000 tasks and
again after all of them, once finished sessions are closed and the garbage
collector has run.

- ``db.session`` with a query (``get`` by primary key, which checks out a
  connection) on a pool of 5 connections, no overflow. Targets: RSS growth
  ≤ 5 MiB, the registry empty, 0 connections checked out.
- ``db.session`` and plain ``async_scoped_session(..., scopefunc=current_task)``
  with a session that is only touched (``add`` of a new object, no IO):
  the plain registry keeps every task and its session, so it grows. (The
  plain side cannot run the query: its forgotten sessions keep their
  connections, and the sixth task would wait out the pool timeout.)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import subprocess
import sys
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from benchmarks import _backends
from benchmarks._harness import Settings

MAX_GROWTH_MIB = 5.0
WAVE = 100
WARMUP_TASKS = 2_000
TABLE = "bench_memory_item"


@dataclasses.dataclass
class MemoryResult:
    """What one child process measured."""

    side: str
    """``db.session`` or ``async_scoped_session``."""
    workload: str
    """``query`` or ``touch``."""
    backend: str
    tasks: int
    rss_before_mib: float
    rss_after_mib: float
    registry: int
    """Sessions the registry still holds afterwards."""
    checked_out: int
    """Connections still checked out afterwards."""
    seconds: float
    checked: bool
    """Whether the targets apply (async_sa's side) or the row is for contrast."""

    @property
    def growth_mib(self) -> float:
        return self.rss_after_mib - self.rss_before_mib

    @property
    def passed(self) -> bool:
        if not self.checked:
            return True
        return (
            self.growth_mib <= MAX_GROWTH_MIB
            and self.registry == 0
            and self.checked_out == 0
        )

    def line(self) -> str:
        verdict = ("PASS" if self.passed else "MISS") if self.checked else "(contrast)"
        return (
            f"memory: {self.side:<20} {self.workload:<5} {self.backend:<10} "
            f"{self.tasks:,} tasks: RSS +{self.growth_mib:.1f} MiB "
            f"({self.rss_before_mib:.0f} → {self.rss_after_mib:.0f}), "
            f"registry {self.registry}, checked out {self.checked_out}, "
            f"{self.seconds:.0f} s  {verdict}"
        )


def rss_mib() -> float:
    """This process's resident set size, in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PlainBase(sa_orm.DeclarativeBase):
    pass


class PlainItem(PlainBase):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


async def measure(
    side: str, workload: str, backend: _backends.Backend, tasks: int
) -> MemoryResult:
    """Run in the child: warm up, read RSS, run ``tasks`` tasks, read it again."""
    options = backend.engine_options(pool_size=5, max_overflow=0, pool_timeout=30)
    use: t.Callable[[], t.Awaitable[None]]
    if side == "db.session":
        from async_sa import SQLAlchemy

        db = SQLAlchemy(url=backend.url, engine_options=options)

        class Item(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = TABLE
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(sa.String(50))

        engine = db.engine
        registry: dict[t.Any, t.Any] = db.session.registry.registry

        async def query() -> None:
            assert await db.session.get(Item, 1) is not None

        async def touch_async_sa() -> None:
            db.session.add(Item(name="new"))

        use = query if workload == "query" else touch_async_sa

        async def settle() -> None:
            await db.session.registry.wait_closed()

    else:
        engine = backend.plain_engine(**options)
        scoped = sa_async.async_scoped_session(
            sa_async.async_sessionmaker(engine, expire_on_commit=False),
            scopefunc=asyncio.current_task,
        )
        registry = scoped.registry.registry

        async def touch_plain() -> None:
            scoped.add(PlainItem(name="new"))

        use = touch_plain

        async def settle() -> None:
            await asyncio.sleep(0)

    async def run_tasks(count: int) -> None:
        for start in range(0, count, WAVE):
            wave = [asyncio.create_task(use()) for _ in range(min(WAVE, count - start))]
            await asyncio.gather(*wave)
            del wave
        await settle()
        gc.collect()

    loop = asyncio.get_running_loop()
    await run_tasks(WARMUP_TASKS)
    before = rss_mib()
    started = loop.time()
    await run_tasks(tasks)
    seconds = loop.time() - started
    after = rss_mib()
    checked_out = engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    result = MemoryResult(
        side=side,
        workload=workload,
        backend=backend.label,
        tasks=tasks,
        rss_before_mib=before,
        rss_after_mib=after,
        registry=len(registry),
        checked_out=checked_out,
        seconds=seconds,
        checked=side == "db.session" and workload == "query",
    )
    await engine.dispose()
    return result


async def prepare(backend: _backends.Backend) -> None:
    engine = backend.plain_engine()
    async with engine.begin() as connection:
        await connection.run_sync(PlainBase.metadata.create_all)
        await connection.execute(sa.insert(PlainItem), [{"id": 1, "name": "a"}])
    await engine.dispose()


def run_child(
    side: str, workload: str, backend: _backends.Backend, tasks: int
) -> MemoryResult:
    """One measurement in a fresh interpreter."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--side",
        side,
        "--workload",
        workload,
        "--backend",
        json.dumps(dataclasses.asdict(backend)),
        "--tasks",
        str(tasks),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=900
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory child {side} {workload} failed:\n{completed.stderr[-3000:]}"
        )
    data = json.loads(completed.stdout.strip().splitlines()[-1])
    return MemoryResult(**data)


def run(backends: list[str], settings: Settings) -> list[MemoryResult]:
    """Every memory measurement, each in its own subprocess."""
    tasks = 10_000 if settings.quick else 100_000
    results: list[MemoryResult] = []
    for name in backends:

        async def open_and_measure(name: str = name) -> None:
            async with _backends.open_backend(name, "memory") as backend:
                await prepare(backend)
                runs = [("db.session", "query")]
                if name == "sqlite":
                    runs += [("db.session", "touch"), ("async_scoped_session", "touch")]
                for side, workload in runs:
                    result = await asyncio.to_thread(
                        run_child, side, workload, backend, tasks
                    )
                    print(result.line(), flush=True)
                    results.append(result)

        print(f"-- memory on {_backends.LABELS[name]}", flush=True)
        asyncio.run(open_and_measure())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--side", choices=["db.session", "async_scoped_session"])
    parser.add_argument("--workload", choices=["query", "touch"])
    parser.add_argument("--backend", help="a Backend as JSON")
    parser.add_argument("--tasks", type=int)
    args = parser.parse_args()
    backend = _backends.Backend(**json.loads(args.backend))
    result = asyncio.run(measure(args.side, args.workload, backend, args.tasks))
    print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main()

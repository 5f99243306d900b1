"""End to end with a read replica: the Quart JSON API of :mod:`benchmarks.end_to_end`
served with its reads on a streaming standby, against the same app on the
primary alone.

The runner makes its own PostgreSQL primary and hot standby (``pg_basebackup
-R``, no apply delay) on spare loopback ports, with :mod:`tests.clusters`, and
drops them afterwards; without the server binaries it is skipped with the
reason. Both apps are ``--app async_sa`` of :mod:`benchmarks.e2e_server`, one
with ``SQLALCHEMY_REPLICAS`` naming the standby, each in its own hypercorn
processes, loaded by :mod:`benchmarks.loadgen` in interleaved slices
(60 % ``GET /items/<id>``, 20 % ``POST /items``, 20 % ``GET /items?page=N``:
80 % of the requests only read; a POST writes, commits, and answers from the
primary). The ratio (with replica / primary only, throughput at 64
connections) is reported without a target: on one small box the standby
shares the CPUs with the primary, the servers and the load generator, so it
shows what routing costs or saves here, not what a replica on its own machine
would bring.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import _backends
from benchmarks import end_to_end
from benchmarks._harness import Comparison
from benchmarks._harness import Settings

PORTS = range(55500, 55510)
"""Loopback ports the benchmark's primary and standby may use."""
APPS = ("async_sa_replica", "async_sa")
CONCURRENCY = end_to_end.MAIN_CONCURRENCY


def run(settings: Settings) -> tuple[list[Comparison], list[str]]:
    """The comparison, or why it was skipped."""
    from tests.clusters import ClusterUnavailable
    from tests.clusters import create_cluster
    from tests.clusters import create_standby

    try:
        with (
            create_cluster(PORTS, "async_sa_bench_primary_") as primary,
            create_standby(
                primary,
                apply_delay=0.0,
                ports=PORTS,
                name_prefix="async_sa_bench_standby_",
            ) as standby,
        ):
            print("-- end to end with a read replica", flush=True)
            return [measure(primary.url, standby.url, settings)], []
    except ClusterUnavailable as error:
        reason = f"end to end with a replica skipped: {error}"
        print(reason, flush=True)
        return [], [reason]


def measure(primary_url: str, standby_url: str, settings: Settings) -> Comparison:
    """Block after block: seed the primary, wait for the standby, start both
    apps' servers, load them in slices."""
    backend = _backends.Backend(
        "postgresql",
        primary_url,
        {"server_settings": {"synchronous_commit": "off"}},
    )
    replica = _backends.Backend("postgresql", standby_url, {})
    throughput: dict[str, list[float]] = {app: [] for app in APPS}
    extra_args = {"async_sa_replica": ["--replicas", json.dumps([standby_url])]}
    with tempfile.TemporaryDirectory() as logs:
        for block in range(end_to_end.blocks_for(settings)):
            asyncio.run(seed(backend, replica))
            order = end_to_end.start_order(
                {app: sys.executable for app in APPS},
                block,
                end_to_end.processes_for(settings),
            )
            with end_to_end.servers(order, backend, Path(logs), extra_args) as running:
                load = end_to_end.load_rounds(
                    running,
                    CONCURRENCY,
                    end_to_end.rounds_for(CONCURRENCY, settings),
                    warm_up=end_to_end.WARM_UP_SLICES,
                )
            for app, per_round in load.throughput.items():
                throughput[app] += per_round
            print(
                f"   block {block + 1}: "
                + ", ".join(
                    f"{app} {statistics.median(per_round):.0f}"
                    for app, per_round in load.throughput.items()
                )
                + " req/s",
                flush=True,
            )
    # Target 0: reported only (see the module docstring).
    comparison = Comparison(
        f"end to end, {CONCURRENCY} connections, 80 % reads: replica vs primary",
        "PostgreSQL + standby",
        0.0,
        "with replica",
        "primary only",
        throughput["async_sa_replica"],
        throughput["async_sa"],
        [
            a / b
            for a, b in zip(
                throughput["async_sa_replica"], throughput["async_sa"], strict=True
            )
        ],
        unit="req/s",
        batch=f"{end_to_end.slices_per_app(len(APPS))} × "
        f"{end_to_end.slice_size(CONCURRENCY)} requests",
        higher_is_better=True,
    )
    print(comparison.line(), flush=True)
    return comparison


async def seed(backend: _backends.Backend, replica: _backends.Backend) -> None:
    """The table anew on the primary, then wait until the standby has it."""
    import asyncpg

    await end_to_end.seed(backend)
    primary = await asyncpg.connect(_backends.asyncpg_dsn(backend.url))
    standby = await asyncpg.connect(_backends.asyncpg_dsn(replica.url))
    try:
        lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
        for _ in range(600):
            if await standby.fetchval(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'"):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the standby did not replay up to {lsn} in 30 s")
    finally:
        await primary.close()
        await standby.close()

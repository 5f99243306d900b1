"""End to end: the same JSON API served three ways, under load from another process.

The three servers (:mod:`benchmarks.e2e_server`: async_sa's Quart extension,
the hand-written ``before_request``/``teardown_appcontext`` app, and
quart-sqlalchemy 3.0.4) run at once, each a hypercorn process on 127.0.0.1,
each on the same database table and pool options. :mod:`benchmarks.loadgen`
runs as a separate process per concurrency level, connected to all of them,
and loads one server at a time in slices of a fixed number of requests: a
round runs the apps in a rotated order and back, twice (A B C C B A A B C C B
A). An app's throughput in a round is its requests over its seconds in that
round. A shared box drifts over seconds; slices of a fraction of a second side
by side see nearly the same machine (runs of a thousand requests each, one
after the other, gave round ratios spread 2.5 times wider between two copies
of the same app). The rounds run in blocks, each with freshly started servers
(see :func:`blocks_for`).

Targets at 64 connections (median of the per-round ratios): async_sa ≥ 0.97 ×
the hand-written app, and ≥ 1.0 × quart-sqlalchemy. The sweep over 8, 32, 64
and 128 connections is plotted to ``benchmarks/throughput.png``.

quart-sqlalchemy pins Quart < 0.20 and SQLAlchemy < 2.1, so it gets a virtual
environment of its own under the system temp dir, made on first use and reused
(never committed); without network access to PyPI it is skipped with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa

from benchmarks import _backends
from benchmarks._harness import Comparison
from benchmarks._harness import Settings

HERE = Path(__file__).resolve().parent
SERVER = HERE / "e2e_server.py"
LOADGEN = HERE / "loadgen.py"
ROWS = 1000
SLICE = 256
"""Requests per slice (at least; see :func:`slice_size`)."""
REPEATS = 2
"""Times a round runs the apps in a rotated order and back."""
WARM_UP_SLICES = 4
"""Unmeasured slices per app before the first concurrency level of a block."""
CONCURRENCY = (8, 32, 64, 128)
MAIN_CONCURRENCY = 64
BY_HAND_TARGET = 0.97
QUART_SQLALCHEMY_TARGET = 1.0
QUART_SQLALCHEMY = "quart-sqlalchemy==3.0.4"
APP_LABELS = {
    "async_sa": "async_sa (Quart extension)",
    "by_hand": "hand-written async_sessionmaker",
    "quart_sqlalchemy": "quart-sqlalchemy 3.0.4",
}


@dataclasses.dataclass
class Sweep:
    """Throughputs (req/s) by backend, app and concurrency, one per round."""

    throughput: dict[str, dict[str, dict[int, list[float]]]] = dataclasses.field(
        default_factory=dict
    )
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    plot: Path | None = None


def pool_options(backend: _backends.Backend) -> dict[str, t.Any]:
    """The pool every app gets. SQLite (in WAL mode here) serializes writers, so
    it gets fewer connections than PostgreSQL."""
    if backend.name == "sqlite":
        return {"pool_size": 5, "max_overflow": 0}
    return {"pool_size": 10, "max_overflow": 0}


def quart_sqlalchemy_python() -> tuple[str | None, str]:
    """The interpreter of quart-sqlalchemy's virtual environment, made on first
    use; or ``None`` and why it could not be made."""
    venv = Path(tempfile.gettempdir()) / "async_sa_bench_quart_sqlalchemy_3.0.4"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return str(python), ""
    print(f"creating {venv} for {QUART_SQLALCHEMY} (first run only)", flush=True)
    pins = [QUART_SQLALCHEMY, "aiosqlite", "asyncpg"]
    with contextlib.suppress(metadata.PackageNotFoundError):
        pins.append(f"hypercorn=={metadata.version('hypercorn')}")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *pins],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        output = getattr(error, "stderr", b"") or b""
        return None, f"could not install {QUART_SQLALCHEMY}: {output.decode()[-300:]}"
    marker.write_text("ok\n")
    return str(python), ""


def package_versions(python: str) -> str:
    code = (
        "from importlib.metadata import version as v; "
        "print(', '.join(f'{p} {v(p)}' for p in "
        "('quart-sqlalchemy', 'quart', 'sqlalchemy', 'hypercorn')))"
    )
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclasses.dataclass
class Server:
    app: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def servers(
    apps: dict[str, str], backend: _backends.Backend, log_dir: Path
) -> Iterator[dict[str, Server]]:
    """Start one hypercorn process per app (``app`` → interpreter), wait until
    each accepts connections; stop them all afterwards."""
    options = json.dumps(backend.engine_options(**pool_options(backend)))
    started: dict[str, Server] = {}
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    try:
        for app, python in apps.items():
            port = free_port()
            log = log_dir / f"{app}.log"
            with open(log, "wb") as output:
                process = subprocess.Popen(
                    [
                        python,
                        str(SERVER),
                        "--app",
                        app,
                        "--url",
                        backend.url,
                        "--engine-options",
                        options,
                        "--port",
                        str(port),
                    ],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env if app == "async_sa" else None,
                )
            started[app] = Server(app, port, process, log)
        for server in started.values():
            wait_until_listening(server)
        yield started
    finally:
        for server in started.values():
            server.process.terminate()
        for server in started.values():
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def wait_until_listening(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the {server.app} server exited:\n{server.log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"the {server.app} server did not listen within {timeout} s")


def slice_size(concurrency: int) -> int:
    """Requests per slice: at least four per connection, so that the ramp up and
    the drain at the slice's edges stay a small part of it."""
    return max(SLICE, 4 * concurrency)


def load_rounds(
    running: dict[str, Server], concurrency: int, rounds: int, *, warm_up: int
) -> dict[str, list[float]]:
    """Load every server from one load-generator process, in slices (see
    :mod:`benchmarks.loadgen`); each app's throughput (req/s) per round."""
    by_port = {str(server.port): app for app, server in running.items()}
    completed = subprocess.run(
        [
            sys.executable,
            str(LOADGEN),
            "--ports",
            ",".join(by_port),
            "--connections",
            str(concurrency),
            "--slice",
            str(slice_size(concurrency)),
            "--rounds",
            str(rounds),
            "--repeats",
            str(REPEATS),
            "--rows",
            str(ROWS),
            "--warm-up",
            str(warm_up),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    logs = "\n".join(
        f"{server.app} server log:\n{server.log.read_text()[-2000:]}"
        for server in running.values()
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the load generator failed: {completed.stderr[-2000:]}\n{logs}"
        )
    result = json.loads(completed.stdout)
    for port, statuses in result["statuses"].items():
        bad = {code: n for code, n in statuses.items() if code not in ("200", "201")}
        if bad:
            raise RuntimeError(f"{by_port[port]} answered {bad} under load\n{logs}")
    per_round: int = result["requests_per_round"]
    return {
        by_port[port]: [per_round / spent for spent in seconds]
        for port, seconds in result["seconds"].items()
    }


async def seed(backend: _backends.Backend) -> None:
    """The table every app serves, made anew with ``ROWS`` rows (ids 1..ROWS)."""
    metadata_ = sa.MetaData()
    table = sa.Table(
        "bench_e2e_item",
        metadata_,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String(200), nullable=False),
    )
    engine = backend.plain_engine()
    async with engine.begin() as connection:
        if backend.name == "sqlite":
            await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        await connection.run_sync(metadata_.drop_all)
        await connection.run_sync(metadata_.create_all)
        await connection.execute(
            sa.insert(table), [{"text": f"item {i}"} for i in range(1, ROWS + 1)]
        )
    await engine.dispose()


def blocks_for(settings: Settings) -> int:
    """Blocks of rounds, each with freshly started servers and a freshly seeded
    table. Two processes of the same app, started side by side, kept a speed
    gap of up to 7 % through a run (pinning them to CPUs or fixing the hash
    seed did not remove it), so each app is measured in several processes,
    started and loaded in a rotated order."""
    return 2 if settings.quick else 6


def rounds_for(concurrency: int, settings: Settings) -> int:
    """Rounds per block: many at the concurrency the targets are for, one
    elsewhere (the plot)."""
    if concurrency == MAIN_CONCURRENCY:
        return 2 if settings.quick else 8
    return 1


def run(backends: list[str], settings: Settings, *, plot: Path | None) -> Sweep:
    """Every end-to-end measurement; the sweep is drawn to ``plot`` if given."""
    sweep = Sweep()
    apps = {"async_sa": sys.executable, "by_hand": sys.executable}
    qsa_python, why = quart_sqlalchemy_python()
    if qsa_python is None:
        print(f"skipping quart-sqlalchemy: {why}", flush=True)
        sweep.skipped.append(f"quart-sqlalchemy skipped: {why}")
    else:
        apps["quart_sqlalchemy"] = qsa_python
        sweep.versions["quart_sqlalchemy"] = package_versions(qsa_python)
    for name in backends:
        print(f"-- end to end on {_backends.LABELS[name]}", flush=True)
        by_app: dict[str, dict[int, list[float]]] = {app: {} for app in apps}
        sweep.throughput[_backends.LABELS[name]] = by_app

        asyncio.run(measure(name, apps, by_app, settings))
        label = _backends.LABELS[name]
        main = {app: by_app[app][MAIN_CONCURRENCY] for app in apps}
        for other, target in (
            ("by_hand", BY_HAND_TARGET),
            ("quart_sqlalchemy", QUART_SQLALCHEMY_TARGET),
        ):
            if other not in main:
                continue
            comparison = Comparison(
                f"end to end, {MAIN_CONCURRENCY} connections, vs {other}",
                label,
                target,
                "async_sa",
                other,
                main["async_sa"],
                main[other],
                unit="req/s",
                batch=f"{2 * REPEATS} × {slice_size(MAIN_CONCURRENCY)} requests",
                higher_is_better=True,
            )
            print(comparison.line(), flush=True)
            sweep.comparisons.append(comparison)
    if plot is not None:
        draw(sweep, plot)
        sweep.plot = plot
    return sweep


async def measure(
    name: str,
    apps: dict[str, str],
    by_app: dict[str, dict[int, list[float]]],
    settings: Settings,
) -> None:
    """On a fresh database on ``name``, block after block: seed the table,
    start the servers, run the sweep."""
    async with _backends.open_backend(name, "e2e") as backend:
        with tempfile.TemporaryDirectory() as logs:
            for block in range(blocks_for(settings)):
                print(f"   block {block + 1}:", flush=True)
                await seed(backend)
                names = list(apps)
                shift = block % len(names)
                rotated = {app: apps[app] for app in names[shift:] + names[:shift]}
                with servers(rotated, backend, Path(logs)) as running:
                    await asyncio.to_thread(sweep_backend, running, by_app, settings)


def sweep_backend(
    running: dict[str, Server],
    by_app: dict[str, dict[int, list[float]]],
    settings: Settings,
) -> None:
    """For each concurrency, round after round of slices (A B C C B A, twice),
    added to ``by_app``; the servers are warmed up first."""
    for index, concurrency in enumerate(CONCURRENCY):
        throughput = load_rounds(
            running,
            concurrency,
            rounds_for(concurrency, settings),
            warm_up=WARM_UP_SLICES if index == 0 else 1,
        )
        for app, per_round in throughput.items():
            by_app[app].setdefault(concurrency, []).extend(per_round)
        medians = ", ".join(
            f"{app} {statistics.median(per_round):.0f}"
            for app, per_round in throughput.items()
        )
        print(f"     {concurrency:>3} connections: {medians} req/s", flush=True)


def draw(sweep: Sweep, path: Path) -> None:
    """Throughput vs concurrency, one panel per backend, median of the rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(sweep.throughput)
    if not backends:
        return
    figure, axes = plt.subplots(
        1, len(backends), figsize=(6 * len(backends), 4.2), squeeze=False
    )
    for axis, backend in zip(axes[0], backends, strict=False):
        for app, by_concurrency in sweep.throughput[backend].items():
            levels = sorted(by_concurrency)
            axis.plot(
                levels,
                [statistics.median(by_concurrency[c]) for c in levels],
                marker="o",
                label=APP_LABELS[app],
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel("requests per second (median)")
        axis.set_title(f"{backend}: GET one / POST one / paginated list")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="lower right")
    figure.suptitle(
        "End-to-end throughput, hypercorn on 127.0.0.1, "
        f"slices of {SLICE} requests or 4 per connection"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

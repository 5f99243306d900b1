"""End to end: the same JSON API served three ways, under load from another process.

The three apps (:mod:`benchmarks.e2e_server`: async_sa's Quart extension, the
hand-written ``before_request``/``teardown_appcontext`` app, and
quart-sqlalchemy 3.0.4) are served at once, each by several hypercorn
processes on 127.0.0.1 (see :func:`processes_for`), all on the same database
table and pool options. :mod:`benchmarks.loadgen` runs as a separate process
per concurrency level, connected to every server, and loads one server at a
time in slices of a fixed number of requests, in a round that balances the
apps' positions and neighbours (A B C, B C A, C A B, C B A, B A C, A C B, in
an order where no app follows itself). An app's throughput in a round is its
requests over its seconds in that round. A shared box drifts over seconds;
slices of a fraction of a second side by side see nearly the same machine
(runs of a thousand requests each, one after the other, gave round ratios
spread 2.5 times wider between two copies of the same app). The rounds run in
blocks, each with freshly started servers (see :func:`blocks_for`).

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
from benchmarks import loadgen
from benchmarks._harness import Comparison
from benchmarks._harness import Settings

HERE = Path(__file__).resolve().parent
SERVER = HERE / "e2e_server.py"
LOADGEN = HERE / "loadgen.py"
ROWS = 1000
SLICE = 256
"""Requests per slice (at least; see :func:`slice_size`)."""
SLICES_PER_APP = 6
"""Slices per app per round, at least (the balanced order is repeated)."""
WARM_UP_SLICES = 1
"""Unmeasured slices per server before each concurrency level."""
CONCURRENCY = (8, 32, 64, 128)
MAIN_CONCURRENCY = 64
BY_HAND_TARGET = 0.97
QUART_SQLALCHEMY_TARGET = 1.0
QUART_SQLALCHEMY = "quart-sqlalchemy==3.0.4"
APP_LABELS = {
    "async_sa": "async_sa (Quart extension)",
    "async_sa_replica": "async_sa (Quart extension), reads on a replica",
    "by_hand": "hand-written async_sessionmaker",
    "quart_sqlalchemy": "quart-sqlalchemy 3.0.4",
    "starlette_async_sa": "async_sa (Starlette, ASGI middleware)",
    "starlette_by_hand": "Starlette, hand-written async_sessionmaker",
}
FRAMEWORKS = {
    "quart": (
        "async_sa",
        (("by_hand", BY_HAND_TARGET), ("quart_sqlalchemy", QUART_SQLALCHEMY_TARGET)),
    ),
    "starlette": ("starlette_async_sa", (("starlette_by_hand", BY_HAND_TARGET),)),
}
"""Framework → the async_sa app, and each app it is compared with (and the
target ratio)."""


@dataclasses.dataclass
class Sweep:
    """Throughputs (req/s) by backend, app and concurrency, one per round; and
    every slice as run (``slices``, by backend: see :func:`load_rounds`)."""

    throughput: dict[str, dict[str, dict[int, list[float]]]] = dataclasses.field(
        default_factory=dict
    )
    slices: dict[str, list[dict[str, t.Any]]] = dataclasses.field(default_factory=dict)
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    plot: Path | None = None
    slices_file: Path | None = None


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
    process_number: int
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def name(self) -> str:
        return f"{self.app} #{self.process_number}"


@contextlib.contextmanager
def servers(
    apps: list[tuple[str, str]],
    backend: _backends.Backend,
    log_dir: Path,
    extra_args: dict[str, list[str]] | None = None,
) -> Iterator[list[Server]]:
    """Start one hypercorn process per ``(app, interpreter)``, in that order
    (an app may come several times), wait until each accepts connections;
    stop them all afterwards. ``extra_args``: app → more arguments of its
    server."""
    options = json.dumps(backend.engine_options(**pool_options(backend)))
    started: list[Server] = []
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    try:
        for app, python in apps:
            port = free_port()
            number = 1 + sum(server.app == app for server in started)
            log = log_dir / f"{app}-{number}.log"
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
                        *(extra_args or {}).get(app, []),
                    ],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env if app.startswith("async_sa") else None,
                )
            started.append(Server(app, number, port, process, log))
        for server in started:
            wait_until_listening(server)
        yield started
    finally:
        for server in started:
            server.process.terminate()
        for server in started:
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
                f"the {server.name} server exited:\n{server.log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"the {server.name} server did not listen within {timeout} s")


def slice_size(concurrency: int) -> int:
    """Requests per slice: at least four per connection, so that the ramp up and
    the drain at the slice's edges stay a small part of it."""
    return max(SLICE, 4 * concurrency)


def repeats_for(apps: int) -> int:
    """Times a round runs the balanced order, for ``SLICES_PER_APP`` per app."""
    per_app = len(loadgen.williams_order(apps)) // apps
    return -(-SLICES_PER_APP // per_app)


@dataclasses.dataclass
class Load:
    """What one load-generator run measured: each app's throughput (req/s) per
    round, and every round's slices as ``[server name, seconds]``."""

    throughput: dict[str, list[float]]
    rounds: list[list[tuple[str, float]]]


def load_rounds(
    running: list[Server], concurrency: int, rounds: int, *, warm_up: int
) -> Load:
    """Load every server from one load-generator process, in slices (see
    :mod:`benchmarks.loadgen`)."""
    by_port = {server.port: server for server in running}
    apps = list(dict.fromkeys(server.app for server in running))
    completed = subprocess.run(
        [
            sys.executable,
            str(LOADGEN),
            *(f"--server={server.app}={server.port}" for server in running),
            "--connections",
            str(concurrency),
            "--slice",
            str(slice_size(concurrency)),
            "--rounds",
            str(rounds),
            "--repeats",
            str(repeats_for(len(apps))),
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
        f"{server.name} server log:\n{server.log.read_text()[-2000:]}"
        for server in running
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the load generator failed: {completed.stderr[-2000:]}\n{logs}"
        )
    result = json.loads(completed.stdout)
    for port, statuses in result["statuses"].items():
        bad = {code: n for code, n in statuses.items() if code not in ("200", "201")}
        if bad:
            name = by_port[int(port)].name
            raise RuntimeError(f"{name} answered {bad} under load\n{logs}")
    load = Load({app: [] for app in apps}, [])
    for slices in result["rounds"]:
        spent = dict.fromkeys(apps, 0.0)
        requests = dict.fromkeys(apps, 0)
        for app, _, seconds in slices:
            spent[app] += seconds
            requests[app] += result["slice"]
        for app in apps:
            load.throughput[app].append(requests[app] / spent[app])
        load.rounds.append(
            [(by_port[port].name, seconds) for _, port, seconds in slices]
        )
    return load


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
    table, started in a rotated order (see :func:`processes_for`)."""
    return 2 if settings.quick else 6


def processes_for(settings: Settings) -> int:
    """Server processes per app in a block. Two processes of the same app,
    started side by side, kept a speed gap of up to 7 % through a run (pinning
    them to CPUs or fixing the hash seed did not remove it), so each app is
    measured in several processes at once, and anew in every block."""
    return 1 if settings.quick else 3


def rounds_for(concurrency: int, settings: Settings) -> int:
    """Rounds per block: several at the concurrency the targets are for, one
    elsewhere (the plot)."""
    if concurrency == MAIN_CONCURRENCY:
        return 2 if settings.quick else 5
    return 1


def levels_for(block: int, settings: Settings) -> list[int]:
    """The concurrency levels a block runs: the one the targets are for in
    every block, the others (for the plot) in turn, one per block, or all of
    them in a quick run."""
    others = [level for level in CONCURRENCY if level != MAIN_CONCURRENCY]
    if settings.quick:
        return list(CONCURRENCY)
    return sorted([MAIN_CONCURRENCY, others[block % len(others)]])


def run(
    backends: list[str],
    settings: Settings,
    *,
    plot: Path | None,
    slices: Path | None = None,
    framework: str = "quart",
) -> Sweep:
    """Every end-to-end measurement of ``framework``'s apps (see
    :data:`FRAMEWORKS`); the sweep is drawn to ``plot`` and every slice written
    to ``slices`` (JSON) if given."""
    sweep = Sweep()
    ours, others = FRAMEWORKS[framework]
    apps = {ours: sys.executable}
    for other, _ in others:
        if other != "quart_sqlalchemy":
            apps[other] = sys.executable
            continue
        qsa_python, why = quart_sqlalchemy_python()
        if qsa_python is None:
            print(f"skipping quart-sqlalchemy: {why}", flush=True)
            sweep.skipped.append(f"quart-sqlalchemy skipped: {why}")
        else:
            apps["quart_sqlalchemy"] = qsa_python
            sweep.versions["quart_sqlalchemy"] = package_versions(qsa_python)
    per_round = slices_per_app(len(apps))
    for name in backends:
        label = _backends.LABELS[name]
        print(f"-- end to end on {label}", flush=True)
        by_app: dict[str, dict[int, list[float]]] = {app: {} for app in apps}
        sweep.throughput[label] = by_app
        sweep.slices[label] = []
        asyncio.run(measure(name, apps, sweep, settings))
        main = {app: by_app[app][MAIN_CONCURRENCY] for app in apps}
        for other, target in others:
            if other not in main:
                continue
            comparison = Comparison(
                f"end to end, {MAIN_CONCURRENCY} connections, vs {other}",
                label,
                target,
                ours,
                other,
                main[ours],
                main[other],
                [a / b for a, b in zip(main[ours], main[other], strict=True)],
                unit="req/s",
                batch=f"{per_round} × {slice_size(MAIN_CONCURRENCY)} requests",
                higher_is_better=True,
            )
            print(comparison.line(), flush=True)
            sweep.comparisons.append(comparison)
    if plot is not None:
        draw(sweep, plot)
        sweep.plot = plot
    if slices is not None:
        slices.write_text(json.dumps(sweep.slices, indent=1) + "\n")
        sweep.slices_file = slices
    return sweep


def slices_per_app(apps: int) -> int:
    """Slices each app gets in a round."""
    return repeats_for(apps) * len(loadgen.williams_order(apps)) // apps


def start_order(
    apps: dict[str, str], block: int, processes: int
) -> list[tuple[str, str]]:
    """The servers of a block, ``(app, interpreter)``, in the order they start:
    the apps in turn, rotated by one more every block."""
    names = list(apps)
    shift = block % len(names)
    rotated = names[shift:] + names[:shift]
    return [(app, apps[app]) for _ in range(processes) for app in rotated]


async def measure(
    name: str, apps: dict[str, str], sweep: Sweep, settings: Settings
) -> None:
    """On a fresh database on ``name``, block after block: seed the table,
    start the servers, run the sweep."""
    async with _backends.open_backend(name, "e2e") as backend:
        with tempfile.TemporaryDirectory() as logs:
            for block in range(blocks_for(settings)):
                print(f"   block {block + 1}:", flush=True)
                await seed(backend)
                order = start_order(apps, block, processes_for(settings))
                with servers(order, backend, Path(logs)) as running:
                    await asyncio.to_thread(
                        sweep_block, running, block, sweep, backend.label, settings
                    )


def sweep_block(
    running: list[Server],
    block: int,
    sweep: Sweep,
    label: str,
    settings: Settings,
) -> None:
    """For each concurrency, round after round of slices, added to ``sweep``
    under ``label``; the servers are warmed up first."""
    for concurrency in levels_for(block, settings):
        load = load_rounds(
            running,
            concurrency,
            rounds_for(concurrency, settings),
            warm_up=WARM_UP_SLICES,
        )
        for app, per_round in load.throughput.items():
            sweep.throughput[label][app].setdefault(concurrency, []).extend(per_round)
        sweep.slices[label] += [
            {"block": block + 1, "connections": concurrency, "slices": slices}
            for slices in load.rounds
        ]
        medians = ", ".join(
            f"{app} {statistics.median(per_round):.0f}"
            for app, per_round in load.throughput.items()
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

"""End to end: the same JSON API served three ways, under load from another process.

The three servers (:mod:`benchmarks.e2e_server`: async_sa's Quart extension,
the hand-written ``before_request``/``teardown_appcontext`` app, and
quart-sqlalchemy 3.0.4) run at once, each a hypercorn process on 127.0.0.1,
each on the same database table and pool options. :mod:`benchmarks.loadgen`
runs as a separate process per measurement, against one server at a time,
in a rotated order and back every round (A B C C B A). Throughput is requests
/ wall time for a fixed number of requests.

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
    requests: int = 0
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


def load(server: Server, connections: int, requests: int, seed: int) -> float:
    """One load run from a separate process; its throughput in req/s."""
    completed = subprocess.run(
        [
            sys.executable,
            str(LOADGEN),
            "--port",
            str(server.port),
            "--connections",
            str(connections),
            "--requests",
            str(requests),
            "--rows",
            str(ROWS),
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"load on {server.app} failed: {completed.stderr[-2000:]}\n"
            f"server log:\n{server.log.read_text()[-2000:]}"
        )
    result = json.loads(completed.stdout)
    bad = {
        code: n for code, n in result["statuses"].items() if code not in ("200", "201")
    }
    if bad:
        raise RuntimeError(
            f"{server.app} answered {bad} under load; server log:\n"
            f"{server.log.read_text()[-2000:]}"
        )
    rps: float = result["rps"]
    return rps


async def seed(backend: _backends.Backend) -> None:
    """The table every app serves, with ``ROWS`` rows (ids 1..ROWS)."""
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
        await connection.run_sync(metadata_.create_all)
        await connection.execute(
            sa.insert(table), [{"text": f"item {i}"} for i in range(1, ROWS + 1)]
        )
    await engine.dispose()


def rounds_for(concurrency: int, settings: Settings) -> int:
    """Many short runs at the concurrency the targets are for: on a shared box
    the load changes from one second to the next, and short runs next to each
    other see more nearly the same machine."""
    if concurrency == MAIN_CONCURRENCY:
        return 3 if settings.quick else 12
    return 1 if settings.quick else 2


def run(backends: list[str], settings: Settings, *, plot: Path | None) -> Sweep:
    """Every end-to-end measurement; the sweep is drawn to ``plot`` if given."""
    sweep = Sweep()
    requests = 400 if settings.quick else 1000
    sweep.requests = requests
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

        asyncio.run(measure(name, apps, by_app, requests, settings))
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
                batch=f"{requests} requests",
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
    requests: int,
    settings: Settings,
) -> None:
    """Seed a fresh database on ``name``, start the servers, run the sweep."""
    async with _backends.open_backend(name, "e2e") as backend:
        await seed(backend)
        with tempfile.TemporaryDirectory() as logs:
            with servers(apps, backend, Path(logs)) as running:
                await asyncio.to_thread(
                    sweep_backend, running, by_app, requests, settings
                )


def sweep_backend(
    running: dict[str, Server],
    by_app: dict[str, dict[int, list[float]]],
    requests: int,
    settings: Settings,
) -> None:
    """Warm every server up, then for each concurrency run round after round,
    all on the same request sequence per round. A round loads the apps in a
    rotated order and then in the reverse one (A B C C B A), so a machine
    getting faster or slower during the round weighs on every app alike; an
    app's throughput in the round is over both of its runs."""
    order = list(running)
    for server in running.values():
        load(server, 16, max(200, requests // 4), seed=999)
    for concurrency in CONCURRENCY:
        for round_ in range(rounds_for(concurrency, settings)):
            shift = round_ % len(order)
            rotated = order[shift:] + order[:shift]
            seconds = dict.fromkeys(order, 0.0)
            for app in rotated + rotated[::-1]:
                rps = load(running[app], concurrency, requests, seed=round_)
                seconds[app] += requests / rps
            for app in order:
                throughput = 2 * requests / seconds[app]
                by_app[app].setdefault(concurrency, []).append(throughput)
        medians = ", ".join(
            f"{app} {statistics.median(by_app[app][concurrency]):.0f}" for app in order
        )
        print(f"   {concurrency:>3} connections: {medians} req/s", flush=True)


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
        f"{sweep.requests} requests per run"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

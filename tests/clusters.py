"""PostgreSQL clusters of the tests' own (and the benchmarks'), on spare
loopback ports: a plain one, which a test may freeze or stop, and a hot standby
streaming from one with lag.

The shared server is never touched: clusters are made with ``pg_createcluster``
(Debian's ``postgresql-common``) and dropped afterwards; without those tools (or
the rights to use them) :class:`ClusterUnavailable` says why. No pytest here, so
the benchmarks use it too; the fixtures are in :mod:`tests.pg_cluster`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

PORTS = range(55410, 55420)
"""Loopback ports the clusters may use; one free one is picked."""
NAME_PREFIX = "async_sa_fault_"
_TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_conftool")
REPLICATION_PORTS = range(55430, 55440)
"""Loopback ports the ``pg_replication`` fixture's primary and standby may use."""


@dataclasses.dataclass
class PgCluster:
    """A running cluster: ``url`` reaches its ``postgres`` database (trust auth)."""

    version: str
    name: str
    port: int
    data_dir: pathlib.Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def pids(self) -> list[int]:
        """The postmaster's pid, then its children's (backends and workers)."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        command = pathlib.Path(f"/proc/{postmaster}/cmdline").read_bytes()
        if str(self.data_dir).encode() not in command:
            raise RuntimeError(
                f"pid {postmaster} is not the postmaster of {self.data_dir}"
            )
        children = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # The command name, in parentheses, may hold spaces: split after it.
                fields = stat.read_text().rpartition(")")[2].split()
                if int(fields[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def url_for(self, driver: str) -> str:
        """:attr:`url` through ``driver`` (``asyncpg`` or ``psycopg``)."""
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server (fast shutdown: its sessions are terminated)."""
        _run(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            self.version,
            self.name,
            "stop",
            "-m",
            "fast",
        )

    def start(self) -> None:
        """Start the server again; returns once it accepts connections."""
        _run(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            self.version,
            self.name,
            "start",
        )

    @contextlib.contextmanager
    def frozen(self, thaw_after: float) -> Iterator[None]:
        """Stop every process of the cluster (``SIGSTOP``) for the block.

        The postmaster is stopped first, so it forks no backend meanwhile. All
        are continued (``SIGCONT``) on exit, whatever happened, or by a timer
        after ``thaw_after`` seconds: code that waits for the server (the hang
        a test pins down) then ends late instead of never.
        """
        stopped: list[int] = []
        lock = threading.Lock()

        def thaw() -> None:
            with lock:
                for pid in reversed(stopped):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                stopped.clear()

        timer = threading.Timer(thaw_after, thaw)
        try:
            with lock:
                postmaster, *_ = self.pids()
                os.kill(postmaster, signal.SIGSTOP)
                stopped.append(postmaster)
                for pid in self.pids()[1:]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
            timer.start()
            yield
        finally:
            timer.cancel()
            thaw()


class ClusterUnavailable(Exception):
    """A cluster cannot be made here; the message says why."""


def _free_port(ports: range) -> int | None:
    """The first port of ``ports`` nothing listens on (connections of a server
    that listened there before may linger, as servers allow)."""
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def _newest_version() -> str | None:
    """The newest PostgreSQL major version installed (Debian layout)."""
    found = [
        path.parent.parent.name
        for path in pathlib.Path("/usr/lib/postgresql").glob("*/bin/postgres")
    ]
    return max(found, key=lambda v: int(v) if v.isdigit() else 0, default=None)


@contextlib.contextmanager
def create_cluster(
    ports: range = PORTS, name_prefix: str = NAME_PREFIX
) -> Iterator[PgCluster]:
    """Create and start a cluster, yield it, then stop and drop it.

    :param ports: the loopback ports it may listen on (a free one is picked).
    :param name_prefix: begins its name, which ends with a random suffix.
    :raises ClusterUnavailable: the tools, a free port or the rights are missing.
    """
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise ClusterUnavailable(
            f"{', '.join(missing)} not found (install postgresql and postgresql-common)"
        )
    version = _newest_version()
    if version is None:
        raise ClusterUnavailable("no PostgreSQL server under /usr/lib/postgresql")
    port = _free_port(ports)
    if port is None:
        raise ClusterUnavailable(f"no free port in {ports.start}-{ports.stop - 1}")
    name = f"{name_prefix}{uuid.uuid4().hex[:8]}"
    _create_cluster(version, name, port)
    try:
        try:
            _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
            shown = _run("pg_conftool", "-s", version, name, "show", "data_directory")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            raise ClusterUnavailable(f"starting the cluster failed: {error}") from None
        yield PgCluster(version, name, port, pathlib.Path(shown.strip()))
    finally:
        _run("pg_dropcluster", "--stop", version, name)


def _create_cluster(version: str, name: str, port: int) -> None:
    """``pg_createcluster`` (trust auth, no fsync) on ``port``, not started.

    :raises ClusterUnavailable: it failed.
    """
    try:
        _run(
            "pg_createcluster",
            version,
            name,
            "-p",
            str(port),
            "-o",
            "fsync=off",
            "--",
            "--auth=trust",
        )
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        raise ClusterUnavailable(f"pg_createcluster failed: {error}") from None


@contextlib.contextmanager
def create_standby(
    primary: PgCluster,
    *,
    apply_delay: float,
    ports: range = REPLICATION_PORTS,
    name_prefix: str = "async_sa_standby_",
) -> Iterator[PgCluster]:
    """Create and start a hot standby of ``primary``, yield it, then drop it.

    Its data is a ``pg_basebackup -R`` of ``primary`` (so it streams from it),
    and it applies each transaction ``apply_delay`` seconds after its commit
    (``recovery_min_apply_delay``): a replica with lag one can see.

    :raises ClusterUnavailable: the tools, a free port or the rights are missing.
    """
    basebackup = pathlib.Path(
        f"/usr/lib/postgresql/{primary.version}/bin/pg_basebackup"
    )
    if not basebackup.exists():
        raise ClusterUnavailable(f"{basebackup} not found (install postgresql)")
    port = _free_port(ports)
    if port is None:
        raise ClusterUnavailable(f"no free port in {ports.start}-{ports.stop - 1}")
    version, name = primary.version, f"{name_prefix}{uuid.uuid4().hex[:8]}"
    _create_cluster(version, name, port)
    try:
        data_dir = pathlib.Path(
            _run("pg_conftool", "-s", version, name, "show", "data_directory").strip()
        )
        for entry in data_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        try:
            _run(
                *as_postgres,
                str(basebackup),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(data_dir),
                "-R",
                "-X",
                "stream",
            )
            for setting, value in (
                ("recovery_min_apply_delay", f"{int(apply_delay * 1000)}ms"),
                ("hot_standby_feedback", "on"),
            ):
                _run("pg_conftool", version, name, "set", setting, value)
            standby = PgCluster(version, name, port, data_dir)
            standby.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            raise ClusterUnavailable(f"making the standby failed: {error}") from None
        yield standby
    finally:
        _run("pg_dropcluster", "--stop", version, name)

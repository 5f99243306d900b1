"""A PostgreSQL cluster of the tests' own, which a test may freeze, and a
PgBouncer to put in front of it.

Freezing (``SIGSTOP`` of the postmaster and every backend) makes the server hang
the way a silent network partition does: connections stay open, nothing answers.
The shared server is never touched: the cluster is made with ``pg_createcluster``
(Debian's ``postgresql-common``) on a spare loopback port and dropped afterwards.
Without those tools (or the rights to use them) the tests that need it are
skipped with the reason, unless ``ASYNC_SA_REQUIRE_POSTGRES=1``, which makes
that a failure.

Import the ``pg_cluster`` fixture into a test module; it is module-scoped, as
making a cluster takes seconds. The ``pgbouncer`` fixture is a PgBouncer (Debian's
``pgbouncer``) in transaction pooling mode on a loopback port, new for each test,
in front of a cluster of the module's own (``pgbouncer_cluster``); without
PgBouncer its tests are skipped with the reason, unless
``ASYNC_SA_REQUIRE_PGBOUNCER=1``, which makes that a failure.
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
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import REQUIRE_POSTGRES

PORTS = range(55410, 55420)
"""Loopback ports the clusters may use; one free one is picked."""
NAME_PREFIX = "async_sa_fault_"
PGBOUNCER_PORTS = range(55420, 55430)
"""Loopback ports the ``pgbouncer`` fixture's cluster and PgBouncer may use."""
REQUIRE_PGBOUNCER = os.environ.get("ASYNC_SA_REQUIRE_PGBOUNCER") == "1"
_TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_conftool")


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
    try:
        try:
            _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
            shown = _run("pg_conftool", "-s", version, name, "show", "data_directory")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            raise ClusterUnavailable(f"starting the cluster failed: {error}") from None
        yield PgCluster(version, name, port, pathlib.Path(shown.strip()))
    finally:
        _run("pg_dropcluster", "--stop", version, name)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test module's own, dropped afterwards."""
    try:
        with create_cluster() as cluster:
            yield cluster
    except ClusterUnavailable as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"a PostgreSQL cluster is required: {error}")
        pytest.skip(f"{error} (ASYNC_SA_REQUIRE_POSTGRES=1 makes this a failure)")


@dataclasses.dataclass
class PgBouncer:
    """A running PgBouncer: ``url(driver)`` reaches the ``postgres`` database of
    ``cluster`` through it (trust auth)."""

    cluster: PgCluster
    port: int
    pool_size: int

    def url(self, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/postgres"


class PgBouncerUnavailable(Exception):
    """PgBouncer cannot be started here; the message says why."""


@contextlib.contextmanager
def run_pgbouncer(
    cluster: PgCluster,
    *,
    ports: range,
    pool_size: int = 3,
) -> Iterator[PgBouncer]:
    """Run PgBouncer in transaction pooling mode in front of ``cluster`` for the
    block, then stop it.

    Its pool holds at most ``pool_size`` server connections, so many clients
    share each of them. It runs as ``postgres`` when started by root (PgBouncer
    refuses to run as root), in the foreground, its log kept for the error
    message when it does not start.

    :param ports: the loopback ports it may listen on (a free one is picked).
    :raises PgBouncerUnavailable: ``pgbouncer`` or a free port is missing.
    """
    executable = shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer")
    if executable is None:
        raise PgBouncerUnavailable("pgbouncer not found (apt-get install pgbouncer)")
    port = _free_port(ports)
    if port is None:
        raise PgBouncerUnavailable(f"no free port in {ports.start}-{ports.stop - 1}")
    with tempfile.TemporaryDirectory(prefix="async_sa_pgbouncer_") as name:
        directory = pathlib.Path(name)
        directory.chmod(0o755)
        (directory / "userlist.txt").write_text('"postgres" ""\n')
        config = directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"postgres = host=127.0.0.1 port={cluster.port} dbname=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 200\nquery_wait_timeout = 30\n"
        )
        log = directory / "pgbouncer.log"
        with log.open("w") as log_file:
            process = subprocess.Popen(
                [executable, str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user="postgres" if os.geteuid() == 0 else None,
            )
        try:
            _wait_for_port(port, process, log)
            yield PgBouncer(cluster, port, pool_size)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: pathlib.Path
) -> None:
    """Return once ``port`` accepts connections; fail if ``process`` ends first."""
    for _ in range(100):
        if process.poll() is not None:
            raise PgBouncerUnavailable(
                f"pgbouncer exited ({process.returncode}): {log.read_text().strip()}"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise PgBouncerUnavailable(f"pgbouncer did not listen on {port} within 10 s")


@pytest.fixture(scope="module")
def pgbouncer_cluster() -> Iterator[PgCluster]:
    """The cluster behind the ``pgbouncer`` fixture, one per test module."""
    try:
        with create_cluster(PGBOUNCER_PORTS, "async_sa_pgbouncer_") as cluster:
            yield cluster
    except ClusterUnavailable as error:
        if REQUIRE_PGBOUNCER or REQUIRE_POSTGRES:
            pytest.fail(f"a PostgreSQL cluster is required: {error}")
        pytest.skip(f"{error} (ASYNC_SA_REQUIRE_PGBOUNCER=1 makes this a failure)")


@pytest.fixture
def pgbouncer(pgbouncer_cluster: PgCluster) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode, in front of ``pgbouncer_cluster``:
    a new one for each test, so no server connection carries over."""
    try:
        with run_pgbouncer(pgbouncer_cluster, ports=PGBOUNCER_PORTS) as bouncer:
            yield bouncer
    except PgBouncerUnavailable as error:
        if REQUIRE_PGBOUNCER:
            pytest.fail(f"PgBouncer is required: {error}")
        pytest.skip(f"{error} (ASYNC_SA_REQUIRE_PGBOUNCER=1 makes this a failure)")

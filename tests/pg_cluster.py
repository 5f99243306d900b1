"""A PostgreSQL cluster of the tests' own, which a test may freeze, a primary
with a streaming standby, and a PgBouncer to put in front of a cluster.

Freezing (``SIGSTOP`` of the postmaster and every backend) makes the server hang
the way a silent network partition does: connections stay open, nothing answers.
The shared server is never touched: the clusters are made with
``pg_createcluster`` on spare loopback ports and dropped afterwards (see
:mod:`tests.clusters`). Without those tools (or the rights to use them) the tests
that need them are skipped with the reason, unless ``ASYNC_SA_REQUIRE_POSTGRES=1``,
which makes that a failure.

Import the ``pg_cluster`` fixture into a test module; it is module-scoped, as
making a cluster takes seconds. So is ``pg_replication``: a primary and a hot
standby made from it with ``pg_basebackup -R``, which applies each transaction
:data:`APPLY_DELAY` seconds after its commit. The ``pgbouncer`` fixture is a
PgBouncer (Debian's ``pgbouncer``) in transaction pooling mode on a loopback
port, new for each test,
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
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.clusters import _free_port
from tests.clusters import ClusterUnavailable
from tests.clusters import create_cluster
from tests.clusters import create_standby
from tests.clusters import PgCluster as PgCluster
from tests.clusters import REPLICATION_PORTS
from tests.conftest import REQUIRE_POSTGRES

PGBOUNCER_PORTS = range(55420, 55430)
"""Loopback ports the ``pgbouncer`` fixture's cluster and PgBouncer may use."""
REQUIRE_PGBOUNCER = os.environ.get("ASYNC_SA_REQUIRE_PGBOUNCER") == "1"
APPLY_DELAY = 2.0
"""Seconds the ``pg_replication`` standby lags behind its primary."""


@pytest.fixture(scope="module")
def pg_replication() -> Iterator[tuple[PgCluster, PgCluster]]:
    """A primary of this test module's own and a hot standby streaming from
    it with :data:`APPLY_DELAY` seconds of lag; dropped afterwards."""
    try:
        with (
            create_cluster(REPLICATION_PORTS, "async_sa_primary_") as primary,
            create_standby(primary, apply_delay=APPLY_DELAY) as standby,
        ):
            yield primary, standby
    except ClusterUnavailable as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"a PostgreSQL primary and standby are required: {error}")
        pytest.skip(f"{error} (ASYNC_SA_REQUIRE_POSTGRES=1 makes this a failure)")


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

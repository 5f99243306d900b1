"""The databases the scenarios run on: a SQLite file, a PostgreSQL schema
(through asyncpg, and through psycopg) and a MariaDB database.

PostgreSQL is reached at ``ASYNC_SA_BENCH_POSTGRES_URL`` (else
``ASYNC_SA_TEST_POSTGRES_URL``, else ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``),
through psycopg on the same server, and MariaDB at ``ASYNC_SA_BENCH_MARIADB_URL``
(else ``ASYNC_SA_TEST_MARIADB_URL``, else ``mysql+asyncmy://root@127.0.0.1:3306/test``).
Each scenario gets a schema or database of its own, dropped afterwards; when no
server answers, its runs are skipped with the reason printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import tempfile
import typing as t
import uuid
from collections.abc import AsyncIterator

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.pool import NullPool

POSTGRES_URL = os.environ.get(
    "ASYNC_SA_BENCH_POSTGRES_URL",
    os.environ.get(
        "ASYNC_SA_TEST_POSTGRES_URL",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    ),
)
MARIADB_URL = os.environ.get(
    "ASYNC_SA_BENCH_MARIADB_URL",
    os.environ.get(
        "ASYNC_SA_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
    ),
)
SQLITE_TIMEOUT = 30.0
"""The busy timeout both sides get on SQLite (async_sa's default)."""

SQLITE_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""SQLite files live in memory-backed storage where there is some, and
PostgreSQL sessions set ``synchronous_commit=off``: both sides then wait for no
disk flush on commit, whose jitter would drown what is measured."""

NAMES = ("sqlite", "postgresql", "psycopg", "mariadb")
LABELS = {
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL",
    "psycopg": "PostgreSQL (psycopg)",
    "mariadb": "MariaDB",
}
SERVED = ("sqlite", "postgresql")
"""The databases of the memory and end-to-end scenarios (the others run the
in-process ones only)."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """One database: its async URL and the connect arguments every engine on it
    gets (async_sa's and the baseline's alike)."""

    name: str
    url: str
    connect_args: dict[str, t.Any]

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def engine_options(self, **options: t.Any) -> dict[str, t.Any]:
        """``create_async_engine`` options for this database, plus ``options``."""
        return {"connect_args": dict(self.connect_args), **options}

    def second_url(self) -> str:
        """Another database like this one: a second SQLite file beside the
        first (one session writing to both files of one database would wait on
        its own lock); the same PostgreSQL database."""
        if self.name == "sqlite":
            return self.url.replace("bench.db", "bench_second.db")
        return self.url

    def plain_engine(self, **options: t.Any) -> sa_async.AsyncEngine:
        """A plain SQLAlchemy engine, as hand-written code would make it."""
        return sa_async.create_async_engine(self.url, **self.engine_options(**options))


def asyncpg_dsn(url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes for a SQLAlchemy URL."""
    plain = sa.make_url(url).set(drivername="postgresql")
    return plain.render_as_string(hide_password=False)


async def unavailable(name: str) -> str | None:
    """Why the database ``name`` cannot be used, or ``None`` when it answers."""
    if name == "sqlite":
        return None
    url = _server_url(name)
    driver = url.get_driver_name()
    if importlib.util.find_spec(driver) is None:
        return f"{driver} is not installed"
    try:
        await _run_outside_transactions(url)
    except Exception as error:
        shown = url.render_as_string(hide_password=True)
        return f"no server answers at {shown} ({type(error).__name__})"
    return None


def _server_url(name: str) -> sa.URL:
    if name == "mariadb":
        return sa.make_url(MARIADB_URL)
    driver = "psycopg" if name == "psycopg" else "asyncpg"
    return sa.make_url(POSTGRES_URL).set(drivername=f"postgresql+{driver}")


async def _run_outside_transactions(url: sa.URL, *statements: str) -> None:
    """Connect to ``url`` and run ``statements``, each committed on its own."""
    engine = sa_async.create_async_engine(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(sa.text(statement))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def open_backend(name: str, tag: str) -> AsyncIterator[Backend]:
    """A fresh, empty database on ``name``: a new SQLite file, a new PostgreSQL
    schema (``search_path`` set on every connection) or a new MariaDB database;
    removed after."""
    suffix = uuid.uuid4().hex[:10]
    if name == "sqlite":
        directory = tempfile.mkdtemp(prefix=f"async_sa_bench_{tag}_", dir=SQLITE_DIR)
        try:
            path = os.path.join(directory, "bench.db")
            yield Backend(
                "sqlite",
                f"sqlite+aiosqlite:///{path}",
                {"timeout": SQLITE_TIMEOUT},
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    if name == "mariadb":
        database = f"async_sa_bench_{tag}_{suffix}"
        url = _server_url(name)
        await _run_outside_transactions(url, f"CREATE DATABASE `{database}`")
        try:
            yield Backend(
                name,
                url.set(database=database).render_as_string(hide_password=False),
                {},
            )
        finally:
            await _run_outside_transactions(
                url, f"DROP DATABASE IF EXISTS `{database}`"
            )
        return
    import asyncpg

    schema = f"async_sa_bench_{tag}_{suffix}"
    connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        async_url = _server_url(name)
        if name == "psycopg":
            connect_args: dict[str, t.Any] = {
                "options": f"-csearch_path={schema} -csynchronous_commit=off"
            }
        else:
            connect_args = {
                "server_settings": {
                    "search_path": schema,
                    "synchronous_commit": "off",
                }
            }
        yield Backend(
            name, async_url.render_as_string(hide_password=False), connect_args
        )
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()

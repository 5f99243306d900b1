"""The databases every scenario runs on: a SQLite file and a PostgreSQL schema.

PostgreSQL is reached at ``ASYNC_SA_BENCH_POSTGRES_URL`` (else
``ASYNC_SA_TEST_POSTGRES_URL``, else ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``).
Each scenario gets a schema of its own, dropped afterwards; when no server
answers, the PostgreSQL runs are skipped with the reason printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import typing as t
import uuid
from collections.abc import AsyncIterator

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async

POSTGRES_URL = os.environ.get(
    "ASYNC_SA_BENCH_POSTGRES_URL",
    os.environ.get(
        "ASYNC_SA_TEST_POSTGRES_URL",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    ),
)
SQLITE_TIMEOUT = 30.0
"""The busy timeout both sides get on SQLite (async_sa's default)."""

SQLITE_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""SQLite files live in memory-backed storage where there is some, and
PostgreSQL sessions set ``synchronous_commit=off``: both sides then wait for no
disk flush on commit, whose jitter would drown what is measured."""

NAMES = ("sqlite", "postgresql")
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


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


async def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or ``None`` when it answers."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"
    try:
        connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL), timeout=3)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as error:
        shown = sa.make_url(POSTGRES_URL).render_as_string(hide_password=True)
        return f"no PostgreSQL server answers at {shown} ({type(error).__name__})"
    await connection.close()
    return None


@contextlib.asynccontextmanager
async def open_backend(name: str, tag: str) -> AsyncIterator[Backend]:
    """A fresh, empty database on ``name``: a new SQLite file, or a new
    PostgreSQL schema (``search_path`` set on every connection); removed after."""
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
    import asyncpg

    schema = f"async_sa_bench_{tag}_{suffix}"
    connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        async_url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg")
        yield Backend(
            "postgresql",
            async_url.render_as_string(hide_password=False),
            {
                "server_settings": {
                    "search_path": schema,
                    "synchronous_commit": "off",
                }
            },
        )
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()

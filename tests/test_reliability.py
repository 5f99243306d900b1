"""Reliability without a web framework: contention, killed connections, bad config.

Bounded in count and time; every server is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from async_sa import UnknownBindKeyError
from tests.conftest import Backend
from tests.conftest import MakeDb
from tests.conftest import MARIADB_URL
from tests.conftest import require_mariadb

pytestmark = pytest.mark.reliability

WRITERS = 50
COMMITS_PER_WRITER = 20
SECRET = "pw-n3ver-l0gged"


async def test_contended_sqlite_file_loses_nothing(tmp_path: Path) -> None:
    """50 writer tasks committing 20 rows each into one file: no "database is
    locked", all 1,000 rows stored."""
    async with SQLAlchemy(url=f"sqlite:///{tmp_path / 'contended.db'}") as db:

        class Row(db.Model):  # type: ignore[name-defined,misc]
            id: Mapped[int] = mapped_column(primary_key=True)
            writer: Mapped[int]

        await db.create_all()

        async def writer(number: int) -> None:
            for _ in range(COMMITS_PER_WRITER):
                db.session.add(Row(writer=number))
                await db.session.commit()

        results = await asyncio.gather(
            *(writer(number) for number in range(WRITERS)), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        async with db.sessionmaker() as session:
            total = await session.scalar(sa.select(sa.func.count()).select_from(Row))
        assert total == WRITERS * COMMITS_PER_WRITER


async def test_killed_connections_fail_cleanly_then_recover(server: Backend) -> None:
    """Server connections killed while sessions hold them: those fail with a
    clear error, nothing hangs, nothing stays checked out, and new sessions
    succeed."""
    name = f"async_sa_restart_{uuid.uuid4().hex[:12]}"
    db = SQLAlchemy(
        url=server.url, engine_options=server.tagged(name, pool_size=5, max_overflow=0)
    )
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold_connection() -> None:
        await db.session.execute(sa.text("SELECT 1"))
        holding.set()
        await release.wait()
        await db.session.execute(sa.text("SELECT 1"))

    try:
        in_flight = [asyncio.create_task(hold_connection()) for _ in range(5)]
        await asyncio.wait_for(holding.wait(), 10)
        await asyncio.sleep(0.1)
        assert await server.kill_connections(name) >= 1
        release.set()
        results = await asyncio.wait_for(
            asyncio.gather(*in_flight, return_exceptions=True), 30
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures
        # A clean failure is an ordinary error from the database layer: not a
        # timeout, not a cancellation (SQLAlchemy before 2.0.3x wraps fewer of
        # asyncpg's errors, so the exact class varies).
        assert all(
            isinstance(f, Exception) and not isinstance(f, asyncio.TimeoutError)
            for f in failures
        ), failures
        await db.session.registry.wait_closed()
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

        async def fresh_query() -> int:
            return await db.session.scalar(sa.text("SELECT 42")) or 0

        answers = await asyncio.wait_for(
            asyncio.gather(*(fresh_query() for _ in range(10))), 30
        )
        assert answers == [42] * 10
    finally:
        await db.dispose()


MISCONFIGURATIONS: list[tuple[str, dict[str, t.Any], type[Exception], str]] = [
    ("nothing configured", {}, RuntimeError, "pass url="),
    ("sync driver", {"url": "sqlite+pysqlite://"}, ValueError, r"sqlite\+aiosqlite"),
    (
        "sync driver in a bind",
        {"url": "sqlite://", "binds": {"x": "postgresql+psycopg2://h/d"}},
        ValueError,
        r"binds=\['x'\].*postgresql\+asyncpg",
    ),
    ("not a URL", {"url": "::::"}, ValueError, "is not a database URL"),
    (
        "unknown dialect",
        {"url": "nosuchdb://h/d"},
        ValueError,
        "unknown database dialect",
    ),
    ("bind without url", {"binds": {"x": {}}}, ValueError, "has no 'url'"),
    ("bind of wrong type", {"binds": {"x": 1}}, TypeError, "must be a URL string"),
    (
        "driver not installed",
        {"url": "mssql+aioodbc://h/d"},
        ImportError,
        "pip install",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [case[1:] for case in MISCONFIGURATIONS],
    ids=[case[0] for case in MISCONFIGURATIONS],
)
def test_each_misconfiguration_gives_its_clear_error(
    kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    """Every misconfiguration fails with the cause and the fix in the message."""
    db = SQLAlchemy(**kwargs)
    with pytest.raises(error, match=message):
        db.engines  # noqa: B018


async def test_unknown_bind_key_lists_configured_keys(make_db: MakeDb) -> None:
    """The unknown-key error names the key and the keys that exist."""
    db = make_db(binds={"reports": "sqlite://"})
    with pytest.raises(UnknownBindKeyError, match=r"'audit'.*'reports'"):
        db.get_engine("audit")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{SECRET}@127.0.0.1:1/test",
        f"postgresql://no_such_role:{SECRET}@127.0.0.1:5432/test",
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432/no_such_database",
        f"postgresql://user:{SECRET}@no-such-host.invalid/test",
    ],
    ids=["refused", "bad role", "bad database", "bad host"],
)
async def test_password_absent_from_logs_reprs_and_errors_when_connecting_fails(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Connecting fails in several ways; the password shows up nowhere."""
    caplog.set_level(logging.DEBUG)
    async with SQLAlchemy(
        url=url, engine_options={"echo": "debug", "echo_pool": "debug"}
    ) as db:
        with pytest.raises(Exception) as info:  # noqa: B017 - any failure will do
            await asyncio.wait_for(db.session.execute(sa.text("SELECT 1")), 20)
        texts = [
            str(info.value),
            repr(info.value),
            repr(db),
            repr(db.engine),
            caplog.text,
        ]
        cause = info.value.__cause__
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__
    assert all(SECRET not in text for text in texts)


async def test_wrong_password_is_absent_from_logs_and_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that checks passwords (MariaDB; our PostgreSQL trusts every
    client) rejects a wrong one: the password shows up nowhere."""
    require_mariadb()
    caplog.set_level(logging.DEBUG)
    url = sa.make_url(MARIADB_URL).set(password=SECRET)
    async with SQLAlchemy(url=url, engine_options={"echo": "debug"}) as db:
        with pytest.raises(sa.exc.OperationalError) as info:
            await asyncio.wait_for(db.session.execute(sa.text("SELECT 1")), 20)
        assert "Access denied" in str(info.value)
        texts = [str(info.value), repr(info.value), repr(db), caplog.text]
    assert all(SECRET not in text for text in texts)

"""PgBouncer in transaction pooling mode: the ``pgbouncer`` bind option.

A real PgBouncer (see :mod:`tests.pg_cluster`) lends each of its 3 server
connections to one transaction at a time; 10 client connections and 30 tasks
share them. Each case runs on asyncpg and psycopg.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import random
import re
import typing as t

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import signals
from async_sa import SQLAlchemy
from async_sa.engines import resolve_engine_options
from tests.conftest import asyncpg_dsn
from tests.conftest import checked_out
from tests.conftest import NewDb
from tests.conftest import note_model
from tests.pg_cluster import PgBouncer
from tests.pg_cluster import pgbouncer
from tests.pg_cluster import pgbouncer_cluster

__all__ = ["pgbouncer", "pgbouncer_cluster"]

UNITS = 300
CONCURRENCY = 30
REPEATS = 8
"""Executions of one query per transaction: past psycopg's prepare threshold (5)."""
PREPARED_STATEMENT_ERROR = re.compile(
    r'prepared statement "\w+" (does not exist|already exists)'
)


DRIVER_EXTRAS = {"asyncpg": "postgresql", "psycopg": "psycopg"}


@pytest.fixture(params=list(DRIVER_EXTRAS))
def driver(request: pytest.FixtureRequest) -> str:
    """Each PostgreSQL driver the switch knows."""
    name = t.cast(str, request.param)
    if importlib.util.find_spec(name) is None:
        pytest.skip(
            f"{name} is not installed (pip install 'async_sa[{DRIVER_EXTRAS[name]}]')"
        )
    return name


@pytest.fixture
def bounced(
    pgbouncer: PgBouncer, driver: str, new_db: NewDb
) -> t.Callable[..., SQLAlchemy]:
    """Build a ``SQLAlchemy`` reaching the cluster through PgBouncer with
    ``driver``: 10 client connections; keyword arguments as for ``SQLAlchemy``,
    ``engine_options`` added to those."""

    def make(**kwargs: t.Any) -> SQLAlchemy:
        options = {"pool_size": 10, "max_overflow": 0, "pool_timeout": 30}
        options.update(kwargs.pop("engine_options", {}))
        return new_db(url=pgbouncer.url(driver), engine_options=options, **kwargs)

    return make


async def run_units(
    db: SQLAlchemy, note: type[t.Any], units: int = UNITS
) -> list[BaseException | None]:
    """``units`` units of work, :data:`CONCURRENCY` at a time, each a task of
    its own: insert and commit, then count :data:`REPEATS` times and commit.
    Returns each one's exception, or ``None``."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def unit(number: int) -> None:
        async with limit:
            db.session.add(note(text=f"note {number}"))
            await db.session.commit()
            for _ in range(REPEATS):
                await db.session.scalar(sa.select(sa.func.count()).select_from(note))
            await db.session.commit()

    tasks = [asyncio.create_task(unit(number)) for number in range(units)]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await db.session.registry.wait_closed()
    return [
        outcome if isinstance(outcome, BaseException) else None for outcome in outcomes
    ]


async def on_every_server(pgbouncer: PgBouncer, query: str) -> list[int]:
    """Run ``query`` on each of PgBouncer's server connections at once (one
    transaction each, held open until all have run), with asyncpg
    configured as the ``pgbouncer`` switch configures it."""
    import asyncpg

    ran = 0
    everyone_ran = asyncio.Event()

    async def run() -> int:
        nonlocal ran
        connection = await asyncpg.connect(
            asyncpg_dsn(pgbouncer.url()), statement_cache_size=0
        )
        try:
            async with connection.transaction():
                result = t.cast(int, await connection.fetchval(query))
                ran += 1
                if ran == pgbouncer.pool_size:
                    everyone_ran.set()
                await everyone_ran.wait()
                return result
        finally:
            await connection.close()

    return list(await asyncio.gather(*(run() for _ in range(pgbouncer.pool_size))))


async def idle_in_transaction(pgbouncer: PgBouncer) -> int:
    """Server connections left idle in a transaction, as the cluster sees them."""
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(pgbouncer.cluster.url))
    try:
        return t.cast(
            int,
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
            ),
        )
    finally:
        await connection.close()


SQLITE_BIND = {"url": "sqlite://", "pgbouncer": True}
POSTGRES_URL = "postgresql://user:secret@db.example/app"
MISCONFIGURATIONS: list[tuple[str, dict[str, t.Any], type[Exception], str]] = [
    (
        "own option on a SQLite bind",
        {"url": POSTGRES_URL, "binds": {"cache": SQLITE_BIND}},
        ValueError,
        r"binds=\['cache'\] \(sqlite\+aiosqlite://\) has pgbouncer=True, but "
        r"PgBouncer pools PostgreSQL connections only: remove 'pgbouncer' from "
        r"this bind's options\.",
    ),
    (
        "shared option reaching a MySQL bind",
        {
            "url": POSTGRES_URL,
            "binds": {"shop": "mysql://user:secret@db.example/shop"},
            "engine_options": {"pgbouncer": True},
        },
        ValueError,
        r"binds=\['shop'\] \(mysql\+\w+://user:\*\*\*@db\.example/shop\) "
        r"has pgbouncer=True, .* comes from the engine options every bind shares: "
        r"set it in the PostgreSQL binds' own options instead .*, or turn it off "
        r"in this bind's \(\{\.\.\., 'pgbouncer': False\}\)\.",
    ),
    (
        "shared option on a SQLite default engine",
        {"url": "sqlite://", "engine_options": {"pgbouncer": True}},
        ValueError,
        r"url= \(sqlite\+aiosqlite://\) has pgbouncer=True, .* set it in the "
        r"PostgreSQL binds' own options instead \(\{'url': \.\.\., 'pgbouncer': "
        r"True\}\)\.$",
    ),
    (
        "not a boolean",
        {"url": POSTGRES_URL, "engine_options": {"pgbouncer": "transaction"}},
        TypeError,
        r"url=: 'pgbouncer' must be True or False, not 'transaction'\.",
    ),
    (
        "a PostgreSQL driver it does not know",
        {
            "url": "postgresql+async_sa_test://db.example/app",
            "engine_options": {"pgbouncer": True},
        },
        ValueError,
        r"url= \(postgresql\+async_sa_test://db\.example/app\) has pgbouncer=True, "
        r"which knows the asyncpg and psycopg drivers only",
    ),
]
"""Each wrong use of the switch: id, ``SQLAlchemy`` arguments, error, message."""
# An async PostgreSQL driver of a third party, as the switch sees one.
sa.dialects.registry.register(
    "postgresql.async_sa_test",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "PGDialect_asyncpg",
)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [case[1:] for case in MISCONFIGURATIONS],
    ids=[case[0] for case in MISCONFIGURATIONS],
)
def test_each_misuse_of_the_switch_is_a_configuration_error_naming_the_bind(
    kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    """The switch where it cannot apply fails at configuration, naming the bind,
    the cause and the fix, and never the password."""
    db = SQLAlchemy(**kwargs)
    with pytest.raises(error, match=message) as info:
        db.engines  # noqa: B018
    assert "secret" not in str(info.value)


async def test_switch_turned_off_in_a_bind_leaves_it_as_it_was(new_db: NewDb) -> None:
    """``"pgbouncer": False`` in a SQLite bind overrides the shared switch."""
    db = new_db(
        url="postgresql://user@db.example/app",
        binds={"cache": {"url": "sqlite://", "pgbouncer": False}},
        engine_options={"pgbouncer": True},
    )
    async with db.get_engine("cache").connect() as connection:
        assert await connection.scalar(sa.text("SELECT 1")) == 1


@pytest.mark.parametrize(
    ("drivername", "expected"),
    [
        (
            "postgresql+asyncpg",
            {"statement_cache_size": 0, "prepared_statement_cache_size": 0},
        ),
        ("postgresql+psycopg", {"prepare_threshold": None}),
        ("postgresql+psycopg_async", {"prepare_threshold": None}),
    ],
)
def test_switch_sets_the_drivers_connect_args_and_the_users_win(
    drivername: str, expected: dict[str, t.Any]
) -> None:
    """Each driver gets the settings the README lists (asyncpg's statements
    unnamed), beside the user's own ``connect_args``, which win key by key."""
    overridden = next(iter(expected))
    user_args = {"a_setting_of_the_users": "kept", overridden: "the user's"}
    options = resolve_engine_options(
        url=None,
        binds={"app": {"url": f"{drivername}://db.example/app", "pgbouncer": True}},
        engine_options={"connect_args": user_args},
        echo=None,
        sqlite_base_dir=".",
        url_source="url=",
        binds_source="binds=",
    )["app"]
    assert "pgbouncer" not in options
    connect_args = dict(options["connect_args"])
    if drivername.endswith("asyncpg"):
        assert connect_args.pop("prepared_statement_name_func")() == ""
    assert connect_args == {**expected, **user_args}


async def test_transaction_pooling_breaks_prepared_statements_without_the_switch(
    bounced: t.Callable[..., SQLAlchemy],
) -> None:
    """Without the switch, the drivers' named prepared statements meet other
    transactions' server connections: "prepared statement ... does not exist"."""
    db = bounced()
    note = note_model(db)
    await db.create_all()
    try:
        failures = [error for error in await run_units(db, note) if error is not None]
        assert any(PREPARED_STATEMENT_ERROR.search(str(error)) for error in failures)
        assert checked_out(db) == 0
    finally:
        await db.drop_all()


async def test_concurrent_units_of_work_succeed_and_leave_no_prepared_statement(
    bounced: t.Callable[..., SQLAlchemy], pgbouncer: PgBouncer
) -> None:
    """With ``pgbouncer=True`` every unit of work succeeds, nothing stays checked
    out, and no server connection keeps a prepared statement."""
    db = bounced(engine_options={"pgbouncer": True})
    note = note_model(db)
    await db.create_all()
    try:
        assert await run_units(db, note) == [None] * UNITS
        assert checked_out(db) == 0
        assert (
            await db.session.scalar(sa.select(sa.func.count()).select_from(note))
            == UNITS
        )
        await db.session.remove()
        counts = await on_every_server(
            pgbouncer, "SELECT count(*) FROM pg_prepared_statements"
        )
        assert counts == [0] * pgbouncer.pool_size
    finally:
        await db.drop_all()


class Mood(enum.Enum):
    happy = "happy"
    sad = "sad"


async def test_streams_bulk_inserts_and_introspected_types_work_with_the_switch(
    bounced: t.Callable[..., SQLAlchemy],
) -> None:
    """Concurrent units using a server-side cursor (``stream_scalars``), a bulk
    insert (``executemany``), and types the driver introspects (an enum, JSON,
    an array): all succeed through transaction pooling."""
    db = bounced(engine_options={"pgbouncer": True})

    class Thing(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        mood: Mapped[Mood] = mapped_column(sa.Enum(Mood, name="async_sa_mood"))
        data: Mapped[dict[str, int]] = mapped_column(sa.JSON)
        tags: Mapped[list[str]] = mapped_column(sa.ARRAY(sa.String))

    await db.create_all()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def unit(number: int) -> int:
        async with limit:
            rows = [{"mood": Mood.happy, "data": {"n": number}, "tags": ["bulk"]}] * 10
            await db.session.execute(sa.insert(Thing), rows)
            db.session.add(Thing(mood=Mood.sad, data={"n": number}, tags=["one"]))
            await db.session.flush()
            mine = sa.select(Thing).where(Thing.data["n"].as_integer() == number)
            streamed = await db.session.stream_scalars(
                mine.execution_options(yield_per=3)
            )
            moods = [thing.mood async for thing in streamed]
            await db.session.commit()
            return moods.count(Mood.happy) * 100 + moods.count(Mood.sad)

    try:
        assert (
            await asyncio.gather(*(unit(number) for number in range(100)))
            == [1001] * 100
        )
        await db.session.registry.wait_closed()
        assert checked_out(db) == 0
    finally:
        await db.drop_all()


async def test_savepoints_roll_back_and_commit_signals_stay_exact(
    bounced: t.Callable[..., SQLAlchemy],
) -> None:
    """Concurrent units with a rolled-back and a released savepoint each: the
    database and ``models_committed`` hold exactly the kept rows."""
    db = bounced(engine_options={"pgbouncer": True}, track_modifications=True)
    note = note_model(db)
    await db.create_all()
    signalled: list[tuple[str, str]] = []

    def record(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        signalled.extend((instance.text, operation) for instance, operation in changes)

    limit = asyncio.Semaphore(CONCURRENCY)

    async def unit(number: int) -> None:
        async with limit:
            db.session.add(note(text=f"kept {number}"))
            savepoint = await db.session.begin_nested()
            db.session.add(note(text=f"dropped {number}"))
            await db.session.flush()
            await savepoint.rollback()
            async with db.session.begin_nested():
                db.session.add(note(text=f"released {number}"))
            await db.session.commit()

    try:
        with signals.models_committed.connected_to(record, sender=db):
            await asyncio.gather(*(unit(number) for number in range(100)))
        await db.session.registry.wait_closed()
        expected = sorted(
            (f"{kind} {number}", "insert")
            for number in range(100)
            for kind in ("kept", "released")
        )
        assert sorted(signalled) == expected
        stored = await db.session.scalars(sa.select(note.text))
        assert sorted(stored) == [text for text, _ in expected]
        await db.session.remove()
        assert checked_out(db) == 0
    finally:
        await db.drop_all()


async def test_cancelled_units_leave_no_server_connection_in_a_transaction(
    bounced: t.Callable[..., SQLAlchemy], pgbouncer: PgBouncer
) -> None:
    """Units cancelled at random awaits: only whole pairs stored, nothing checked
    out, no server connection idle in transaction, and PgBouncer still serves."""
    db = bounced(engine_options={"pgbouncer": True})
    note = note_model(db)
    await db.create_all()
    rng = random.Random(1234)

    async def insert_pair(number: int) -> None:
        db.session.add(note(text=f"pair {number}"))
        await db.session.flush()
        db.session.add(note(text=f"pair {number}"))
        await db.session.commit()

    try:
        tasks = [asyncio.create_task(insert_pair(number)) for number in range(UNITS)]
        # 7 in 10 cancelled within 0.2 s: waiting for a connection, in a
        # statement, in the commit, or in its cleanup.
        loop = asyncio.get_running_loop()
        for task in tasks:
            if rng.random() < 0.7:
                loop.call_later(rng.random() * 0.2, task.cancel)
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.session.registry.wait_closed()
        assert checked_out(db) == 0
        assert any(task.cancelled() for task in tasks)
        for _ in range(50):
            if await idle_in_transaction(pgbouncer) == 0:
                break
            await asyncio.sleep(0.1)
        assert await idle_in_transaction(pgbouncer) == 0
        per_pair = sa.select(note.text, sa.func.count()).group_by(note.text)
        counts = (await db.session.execute(per_pair)).all()
        await db.session.remove()
        assert 0 < len(counts) < UNITS
        assert all(count == 2 for _, count in counts)
    finally:
        await db.drop_all()


async def test_switch_in_a_bind_of_its_own_keeps_the_users_connect_args(
    bounced: t.Callable[..., SQLAlchemy], pgbouncer: PgBouncer, driver: str
) -> None:
    """``{"url": ..., "pgbouncer": True}`` configures that bind, and a
    ``connect_args`` of the user's own is kept beside the switch's."""
    name = "async_sa_bounced"
    connect_args: dict[str, t.Any] = (
        {"server_settings": {"application_name": name}}
        if driver == "asyncpg"
        else {"application_name": name}
    )
    db = bounced(
        binds={
            "bounced": {
                "url": pgbouncer.url(driver),
                "pgbouncer": True,
                "connect_args": connect_args,
            }
        }
    )

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "bounced"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(50))

    await db.create_all()
    try:
        assert await run_units(db, Note, units=100) == [None] * 100
        shown = await db.session.scalar(
            sa.text("SELECT current_setting('application_name')"),
            bind_arguments={"bind_key": "bounced"},
        )
        assert shown == name
        await db.session.remove()
    finally:
        await db.drop_all()

"""Read replicas: routing, read-your-writes, failures, configuration.

The replicas here stand in for real ones: each is another database of the
test's backend (a second SQLite file, PostgreSQL schema or MariaDB database)
holding other rows than the primary, so every read shows where it went. The
behaviour on a real PostgreSQL streaming replica, lag included, is pinned in
``test_replicas_streaming.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import typing as t
import uuid
from collections.abc import AsyncIterator
from collections.abc import Coroutine
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import get_recorded_queries
from async_sa import models_committed
from async_sa import NotFound
from async_sa import replicas as replicas_module
from async_sa import SQLAlchemy
from async_sa.session import Session
from tests.conftest import _on_mariadb
from tests.conftest import asyncpg_dsn
from tests.conftest import Backend
from tests.conftest import NewDb

_T = t.TypeVar("_T")
SECRET = "s3cret-pw"


async def _second_database(backend: Backend, tmp_path: Path, name: str) -> Backend:
    """Another database like ``backend``'s, on the same server (a file beside
    it for SQLite): a stand-in replica. Dropped by :func:`_drop_database`."""
    if backend.is_sqlite:
        return Backend("sqlite_file", f"sqlite:///{tmp_path / f'{name}.db'}")
    namespace = f"{backend.namespace}_{name}"
    if backend.is_mariadb:
        await _on_mariadb(f"CREATE DATABASE `{namespace}`")
        url = sa.make_url(backend.url).set(database=namespace)
        return Backend(
            backend.name, url.render_as_string(hide_password=False), {}, namespace
        )
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(backend.url))
    try:
        await connection.execute(f'CREATE SCHEMA "{namespace}"')
    finally:
        await connection.close()
    options = copy.deepcopy(backend.engine_options)
    if backend.name == "psycopg":
        options["connect_args"]["options"] = f"-csearch_path={namespace}"
    else:
        options["connect_args"]["server_settings"]["search_path"] = namespace
    return Backend(backend.name, backend.url, options, namespace)


async def _drop_database(database: Backend) -> None:
    if database.is_mariadb:
        await _on_mariadb(f"DROP DATABASE `{database.namespace}`")
    elif database.is_postgres:
        import asyncpg

        connection = await asyncpg.connect(asyncpg_dsn(database.url))
        try:
            await connection.execute(f'DROP SCHEMA "{database.namespace}" CASCADE')
        finally:
            await connection.close()


@pytest.fixture
async def replica(backend: Backend, tmp_path: Path) -> AsyncIterator[Backend]:
    """A stand-in replica of ``backend``: another database on its server."""
    database = await _second_database(backend, tmp_path, "replica")
    try:
        yield database
    finally:
        await _drop_database(database)


def item_model(db: SQLAlchemy) -> type[t.Any]:
    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        source: Mapped[str] = mapped_column(sa.String(20))

    return Item


async def seed(
    db: SQLAlchemy,
    engines: t.Iterable[t.Any],
    item: type[t.Any],
    *,
    primary: bool = True,
) -> None:
    """Create the tables on the primary (unless not ``primary``) and each
    replica; row 1 says where it is (``primary``, ``replica 0``...)."""
    table = item.__table__
    if primary:
        await db.create_all()
        async with db.engine.begin() as connection:
            await connection.execute(sa.insert(table).values(id=1, source="primary"))
    for index, engine in enumerate(engines):
        async with engine.begin() as connection:
            await connection.run_sync(db.metadata.drop_all)
            await connection.run_sync(db.metadata.create_all)
            await connection.execute(
                sa.insert(table).values(id=1, source=f"replica {index}")
            )


def make_replicated_db(
    new_db: NewDb, backend: Backend, replicas: list[Backend], **kwargs: t.Any
) -> SQLAlchemy:
    """A db whose default bind is ``backend`` with ``replicas``."""
    return new_db(
        binds={None: backend.bind(replicas=[r.bind() for r in replicas])}, **kwargs
    )


@pytest.fixture
async def replicated(
    new_db: NewDb, backend: Backend, replica: Backend
) -> AsyncIterator[tuple[SQLAlchemy, type[t.Any]]]:
    """A db on ``backend`` with one stand-in replica, both seeded."""
    db = make_replicated_db(new_db, backend, [replica])
    item = item_model(db)
    await seed(db, db.replicas[None], item)
    yield db, item
    await db.session.remove()
    await db.drop_all()


async def source(db: SQLAlchemy, item: type[t.Any]) -> str:
    """Where a plain read of row 1 goes: ``primary`` or ``replica N``."""
    return t.cast(
        str, await db.session.scalar(sa.select(item.source).where(item.id == 1))
    )


def in_fresh_context(coro: Coroutine[t.Any, t.Any, _T]) -> asyncio.Task[_T]:
    """``coro`` as a task of its own that has not written anything, as a new
    request would be (a task started from another copies its context)."""
    return contextvars.Context().run(asyncio.ensure_future, coro)


def checked_out(db: SQLAlchemy) -> list[int]:
    """Connections checked out of every engine, primaries and replicas."""
    engines = [*db.engines.values(), *(e for r in db.replicas.values() for e in r)]
    return [engine.pool.checkedout() for engine in engines]  # type: ignore[attr-defined]


async def test_reads_go_to_the_replica_until_the_task_writes(
    replicated: tuple[SQLAlchemy, type[t.Any]],
) -> None:
    """Reads of a task that wrote nothing hit the replica; once it flushed,
    every later read of that task goes to the primary: after the commit, in a
    new session of the same task, and in gather children started after the
    write (not in those started before, nor in other tasks)."""
    db, item = replicated

    async def read() -> str:
        return await source(db, item)

    async def request() -> None:
        assert await read() == "replica 0"
        loaded = await db.session.get(item, 1)
        assert loaded is not None and loaded.source == "replica 0"
        assert list(await asyncio.gather(read(), read())) == ["replica 0"] * 2
        started_before = asyncio.ensure_future(asyncio.sleep(0.05, "later"))
        db.session.add(item(id=2, source="new"))
        await db.session.flush()
        assert await read() == "primary"
        await db.session.commit()
        assert await read() == "primary"
        assert await db.session.get(item, 2) is not None
        await db.session.remove()
        assert await read() == "primary"
        assert list(await asyncio.gather(read(), read())) == ["primary"] * 2
        await started_before

    await in_fresh_context(request())
    assert await in_fresh_context(read()) == "replica 0"
    await db.session.registry.wait_closed()
    assert checked_out(db) == [0, 0]


WRITES: dict[str, t.Callable[[SQLAlchemy, type[t.Any]], t.Awaitable[object]]] = {
    "flush": lambda db, item: db.session.merge(item(id=1, source="primary")),
    "insert": lambda db, item: db.session.execute(
        sa.insert(item).values(id=3, source="x")
    ),
    "update": lambda db, item: db.session.execute(
        sa.update(item).where(item.id == 1).values(source="primary")
    ),
    "delete": lambda db, item: db.session.execute(sa.delete(item).where(item.id == 99)),
    "select for update": lambda db, item: db.session.scalar(
        sa.select(item.source).where(item.id == 1).with_for_update()
    ),
    "text": lambda db, item: db.session.execute(sa.text("SELECT 1")),
    "connection": lambda db, item: db.session.connection(),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_each_kind_of_write_sends_later_reads_to_the_primary(
    replicated: tuple[SQLAlchemy, type[t.Any]], write: str
) -> None:
    """A flush, insert, update, delete, SELECT ... FOR UPDATE, text() (whose SQL
    may write) and session.connection() go to the primary, and so do the
    task's reads after them, across a commit."""
    db, item = replicated

    async def request() -> list[str]:
        sources = [await source(db, item)]
        await WRITES[write](db, item)
        await db.session.flush()
        sources.append(await source(db, item))
        await db.session.commit()
        sources.append(await source(db, item))
        return sources

    assert await in_fresh_context(request()) == ["replica 0", "primary", "primary"]


async def test_primary_block_and_the_replica_bind_argument(
    replicated: tuple[SQLAlchemy, type[t.Any]],
) -> None:
    """db.session.primary() sends the block's reads (its children's too) to the
    primary, and only the block's; bind_arguments={"replica": False} one
    statement; {"replica": True} reads a replica even after a write, and runs
    a text() query there."""
    db, item = replicated
    statement = sa.select(item.source).where(item.id == 1)

    async def request() -> None:
        async with db.session.primary():
            assert await source(db, item) == "primary"
            assert list(await asyncio.gather(source(db, item))) == ["primary"]
        with db.session.primary():
            assert await source(db, item) == "primary"
        assert await source(db, item) == "replica 0"
        on_primary = {"replica": False}
        assert await db.session.scalar(statement, bind_arguments=on_primary) == (
            "primary"
        )
        assert await source(db, item) == "replica 0"
        text = sa.text("SELECT source FROM item WHERE id = 1")
        on_replica = {"replica": True}
        assert await db.session.scalar(text, bind_arguments=on_replica) == ("replica 0")
        db.session.add(item(id=2, source="new"))
        await db.session.commit()
        assert await source(db, item) == "primary"
        assert await db.session.scalar(statement, bind_arguments=on_replica) == (
            "replica 0"
        )

    await in_fresh_context(request())


async def test_writes_inside_a_primary_block_still_count_after_it(
    replicated: tuple[SQLAlchemy, type[t.Any]],
) -> None:
    """A write made inside db.session.primary() keeps the task's reads on the
    primary once the block is left."""
    db, item = replicated

    async def request() -> str:
        async with db.session.primary():
            db.session.add(item(id=2, source="new"))
            await db.session.commit()
        await db.session.remove()
        return await source(db, item)

    assert await in_fresh_context(request()) == "primary"


async def test_signals_recorded_queries_pagination_and_404_on_a_replica(
    new_db: NewDb, backend: Backend, replica: Backend
) -> None:
    """With replicas, commit signals report the writes, recorded queries
    include the replica's reads (with the caller's location), pagination and
    get_or_404 read the replica."""
    db = make_replicated_db(
        new_db, backend, [replica], track_modifications=True, record_queries=True
    )
    item = item_model(db)
    await seed(db, db.replicas[None], item)
    committed: list[list[tuple[t.Any, str]]] = []

    def receiver(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        committed.append(changes)

    async def request() -> None:
        page = await db.paginate(sa.select(item))
        assert [row.source for row in page.items] == ["replica 0"]
        assert page.total == 1
        assert (await db.get_or_404(item, 1)).source == "replica 0"
        with pytest.raises(NotFound):
            await db.get_or_404(item, 2)
        queries = get_recorded_queries()
        assert len(queries) == 3  # count, page, get(2): row 1 is in the session
        assert all(__file__ in query.location for query in queries)
        new = item(id=2, source="new")
        db.session.add(new)
        with models_committed.connected_to(receiver):
            await db.session.commit()
        assert committed == [[(new, "insert")]]
        assert (await db.get_or_404(item, 2)).source == "new"

    try:
        await in_fresh_context(request())
    finally:
        await db.drop_all()


async def test_test_isolation_reads_the_primary(
    replicated: tuple[SQLAlchemy, type[t.Any]],
) -> None:
    """Inside db.test_isolation() every read goes to the primary, where the
    test's writes are."""
    db, item = replicated
    async with db.test_isolation():
        assert await source(db, item) == "primary"
        db.session.add(item(id=2, source="new"))
        await db.session.commit()
        assert await in_fresh_context(db.session.get(item, 2)) is not None
    assert await in_fresh_context(source(db, item)) == "replica 0"


async def test_a_write_to_one_bind_keeps_the_replica_reads_of_another(
    new_db: NewDb, backend: Backend, replica: Backend, tmp_path: Path
) -> None:
    """Read-your-writes is per bind: writing to a bind without replicas does
    not send another bind's reads to its primary; sessions of an owner
    without replicas are not routed at all."""
    db = new_db(
        url=f"sqlite:///{tmp_path / 'local.db'}",
        binds={"remote": backend.bind(replicas=[replica.bind()])},
    )

    class Local(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    class Remote(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "remote"
        id: Mapped[int] = mapped_column(primary_key=True)
        source: Mapped[str] = mapped_column(sa.String(20))

    await db.create_all()
    async with db.get_engine("remote").begin() as connection:
        await connection.execute(sa.insert(Remote).values(id=1, source="primary"))
    async with db.replicas["remote"][0].begin() as connection:
        await connection.run_sync(db.metadata.drop_all)
        await connection.run_sync(db.metadatas["remote"].create_all)
        await connection.execute(sa.insert(Remote).values(id=1, source="replica"))

    async def request() -> str:
        db.session.add(Local(id=1))
        await db.session.commit()
        remote = await db.session.get(Remote, 1)
        assert remote is not None
        return remote.source

    try:
        assert await in_fresh_context(request()) == "replica"
        plain = new_db(url=f"sqlite:///{tmp_path / 'plain.db'}")
        assert type(plain.session().sync_session) is Session
    finally:
        await db.session.remove()
        await db.drop_all()


async def test_sessions_take_replicas_in_turn_and_keep_theirs(
    new_db: NewDb, tmp_path: Path
) -> None:
    """Round robin: each session picks the next replica at its first read and
    keeps it for the rest of its reads."""
    primary, *replicas = (
        Backend("sqlite_file", f"sqlite:///{tmp_path / f'{name}.db'}")
        for name in ("primary", "replica0", "replica1")
    )
    db = make_replicated_db(new_db, primary, replicas)
    item = item_model(db)
    await seed(db, db.replicas[None], item)

    async def session_reads() -> set[str]:
        return {await source(db, item) for _ in range(4)}

    seen = [await in_fresh_context(session_reads()) for _ in range(4)]
    assert all(len(sources) == 1 for sources in seen)
    assert [next(iter(sources)) for sources in seen] in (
        ["replica 0", "replica 1"] * 2,
        ["replica 1", "replica 0"] * 2,
    )


async def test_a_replica_that_refuses_connections_costs_no_request(
    new_db: NewDb,
    backend: Backend,
    replica: Backend,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica refusing connections: reads go to the other replica (or the
    primary once none is up), it is logged once, not tried again until its
    down time is over, and gets reads again once it answers."""
    if backend.is_sqlite:
        missing = tmp_path / "missing"
        down = Backend("sqlite_file", f"sqlite:///{missing / 'replica.db'}")
    else:
        closed_port = sa.make_url(backend.url).set(port=1, password=SECRET)
        down = Backend(
            backend.name,
            closed_port.render_as_string(hide_password=False),
            backend.engine_options,
        )
    monkeypatch.setattr(replicas_module, "DOWN_FOR", 0.5)
    db = make_replicated_db(new_db, backend, [down, replica])
    item = item_model(db)
    await seed(db, db.replicas[None][1:], item)
    caplog.set_level(logging.INFO, logger="async_sa.replicas")

    async def requests() -> list[str]:
        return [await in_fresh_context(source(db, item)) for _ in range(6)]

    assert await requests() == ["replica 0"] * 6
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert "replica 0 of the default bind" in failures[0].getMessage()
    assert SECRET not in caplog.text
    await asyncio.sleep(0.6)
    assert await requests() == ["replica 0"] * 6
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    if backend.is_sqlite:
        missing.mkdir()
        await seed(db, db.replicas[None], item, primary=False)
        await asyncio.sleep(0.6)
        sources = await requests()
        assert set(sources) == {"replica 0", "replica 1"}
        assert "answers again" in caplog.text
    await db.session.registry.wait_closed()
    assert checked_out(db) == [0, 0, 0]
    await db.drop_all()
    # Every replica down: the primary.
    if backend.is_sqlite:
        down = Backend("sqlite_file", f"sqlite:///{tmp_path / 'gone' / 'r.db'}")
    broken = make_replicated_db(new_db, backend, [down])
    broken_item = item_model(broken)
    await seed(broken, [], broken_item)
    assert await in_fresh_context(source(broken, broken_item)) == "primary"
    await broken.session.registry.wait_closed()
    assert checked_out(broken) == [0, 0]
    await broken.drop_all()


async def test_a_replica_connection_broken_mid_transaction_costs_no_request(
    new_db: NewDb, server: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica's server connection killed while a session holds it: the
    next read runs on the primary instead, the broken connection leaves the
    transaction (the commit succeeds) and the pool, nothing stays checked
    out."""
    tag = f"async_sa_replica_{uuid.uuid4().hex[:8]}"
    replica = await _second_database(server, tmp_path, "replica")
    try:
        db = new_db(
            binds={
                None: server.bind(
                    replicas=[{"url": replica.url, **replica.tagged(tag)}]
                )
            }
        )
        item = item_model(db)
        await seed(db, db.replicas[None], item)

        async def request() -> list[str]:
            sources = [await source(db, item)]
            assert await replica.kill_connections(tag) >= 1
            await asyncio.sleep(0.1)
            sources.append(await source(db, item))
            sources.append(await source(db, item))
            await db.session.commit()
            return sources

        with caplog.at_level(logging.WARNING, logger="async_sa.replicas"):
            assert await in_fresh_context(request()) == [
                "replica 0",
                "primary",
                "primary",
            ]
        assert "replica 0 of the default bind" in caplog.text
        await db.session.registry.wait_closed()
        assert checked_out(db) == [0, 0]
        await db.drop_all()
    finally:
        await _drop_database(replica)


async def test_dispose_closes_the_replicas_connections(
    replicated: tuple[SQLAlchemy, type[t.Any]],
) -> None:
    """db.dispose() closes the replicas' pooled connections too."""
    db, item = replicated
    assert await in_fresh_context(source(db, item)) == "replica 0"
    await db.session.registry.wait_closed()
    pool = db.replicas[None][0].pool
    assert pool.checkedin() >= 1  # type: ignore[attr-defined]
    await db.dispose()
    assert pool.checkedin() == 0  # type: ignore[attr-defined]


# -- configuration ------------------------------------------------------------------


def test_replicas_take_their_primarys_engine_options(
    new_db: NewDb, tmp_path: Path
) -> None:
    """engine_options and the bind's own options apply to its replicas; a
    replica's dict form overrides them."""
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    db = new_db(
        engine_options={"pool_size": 3, "echo": False},
        binds={
            None: {
                "url": primary,
                "pool_size": 4,
                "replicas": [
                    f"sqlite:///{tmp_path / 'r0.db'}",
                    {"url": f"sqlite:///{tmp_path / 'r1.db'}", "pool_size": 6},
                ],
            }
        },
    )
    sizes = [e.pool.size() for e in (db.engine, *db.replicas[None])]  # type: ignore[attr-defined]
    assert sizes == [4, 4, 6]


async def test_quart_config_keys_give_replicas(tmp_path: Path, new_db: NewDb) -> None:
    """SQLALCHEMY_DATABASE_URI + SQLALCHEMY_REPLICAS and SQLALCHEMY_BINDS'
    dict form give replicas, with SQLALCHEMY_ENGINE_OPTIONS."""
    quart = pytest.importorskip("quart")
    app = quart.Quart("replicated", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite:///primary.db",
        SQLALCHEMY_REPLICAS=["sqlite:///r0.db", "sqlite:///r1.db"],
        SQLALCHEMY_BINDS={
            "other": {"url": "sqlite:///other.db", "replicas": ["sqlite:///o0.db"]}
        },
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2},
    )
    db = new_db()
    db.init_app(app)
    async with app.app_context():
        assert [e.url.database for e in db.replicas[None]] == [
            str(tmp_path / "instance" / "r0.db"),
            str(tmp_path / "instance" / "r1.db"),
        ]
        assert [e.pool.size() for e in db.replicas["other"]] == [2]  # type: ignore[attr-defined]
        await db.dispose()


BAD_REPLICAS: list[tuple[str, dict[str, t.Any], type[Exception], str]] = [
    (
        "another database system",
        {
            "binds": {
                "users": {
                    "url": f"postgresql://app:{SECRET}@db/users",
                    "replicas": [f"mysql://app:{SECRET}@replica/users"],
                }
            }
        },
        ValueError,
        r"binds=\['users'\]\['replicas'\]\[0\] .* is a mysql database, but its "
        r"primary .* is postgresql",
    ),
    (
        "empty list",
        {"binds": {None: {"url": "sqlite:///p.db", "replicas": []}}},
        ValueError,
        r"binds=\[None\]\['replicas'\] is empty",
    ),
    (
        "SQLite in memory",
        {"binds": {"x": {"url": "sqlite:///p.db", "replicas": ["sqlite://"]}}},
        ValueError,
        r"binds=\['x'\]\['replicas'\]\[0\] .* in-memory SQLite",
    ),
    (
        "a single URL instead of a list",
        {"binds": {"x": {"url": "sqlite:///p.db", "replicas": "sqlite:///r.db"}}},
        TypeError,
        r"binds=\['x'\]\['replicas'\] must be a list",
    ),
    (
        "replica without url",
        {"binds": {"x": {"url": "sqlite:///p.db", "replicas": [{"echo": True}]}}},
        ValueError,
        r"binds=\['x'\]\['replicas'\]\[0\] must have a 'url'",
    ),
    (
        "lag bound without replicas",
        {"binds": {"x": {"url": "postgresql://h/d", "max_replica_lag": 5}}},
        ValueError,
        r"binds=\['x'\] has 'max_replica_lag' but no 'replicas'",
    ),
    (
        "lag bound of zero",
        {
            "binds": {
                "x": {
                    "url": "postgresql://h/d",
                    "replicas": ["postgresql://r/d"],
                    "max_replica_lag": 0,
                }
            }
        },
        ValueError,
        r"binds=\['x'\]\['max_replica_lag'\] must be a number of seconds",
    ),
    (
        "lag bound on SQLite",
        {
            "binds": {
                "x": {
                    "url": "sqlite:///p.db",
                    "replicas": ["sqlite:///r.db"],
                    "max_replica_lag": 5,
                }
            }
        },
        ValueError,
        "measured on PostgreSQL only",
    ),
    (
        "lag bound for every engine",
        {"url": "sqlite:///p.db", "engine_options": {"max_replica_lag": 5}},
        ValueError,
        "'max_replica_lag' is not an engine option every engine shares",
    ),
    (
        "replicas for every engine",
        {"url": "sqlite:///p.db", "engine_options": {"replicas": ["sqlite:///r.db"]}},
        ValueError,
        "not an engine option every engine shares",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [case[1:] for case in BAD_REPLICAS],
    ids=[case[0] for case in BAD_REPLICAS],
)
def test_bad_replica_configuration_names_the_bind(
    kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    """A replica on another database system, an empty list, an in-memory
    SQLite replica, a URL instead of a list: an error naming the bind (and
    never the password)."""
    db = SQLAlchemy(**kwargs)
    with pytest.raises(error, match=message) as raised:
        _ = db.engines
    assert SECRET not in str(raised.value)


def test_replicas_config_without_a_default_bind_is_an_error(tmp_path: Path) -> None:
    """SQLALCHEMY_REPLICAS without a default database says what to set."""
    quart = pytest.importorskip("quart")
    app = quart.Quart("replicated", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_BINDS={"x": "sqlite:///x.db"},
        SQLALCHEMY_REPLICAS=["sqlite:///r.db"],
    )
    with pytest.raises(ValueError, match="SQLALCHEMY_REPLICAS .* set SQLALCHEMY_"):
        SQLAlchemy(app)

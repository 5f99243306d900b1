"""Read replicas on a real PostgreSQL streaming replica, with lag.

The module's own primary cluster and a hot standby made from it with
``pg_basebackup -R``, applying every transaction
:data:`~tests.pg_cluster.APPLY_DELAY` seconds late (see
:mod:`tests.pg_cluster`), through asyncpg and psycopg, in plain asyncio, under
Quart and behind the ASGI middleware. Pins SPEC §13: (a) reads of a task that
wrote nothing run on the standby (``pg_is_in_recovery()``); (b) a request reads
its own writes across a commit, and so do the tasks it starts afterwards,
while the standby does not have them yet; (c) a stopped standby, or one
stopped mid-read, costs no request; (d) nothing is left checked out on the
primary's engine or the standby's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import typing as t
import uuid
from collections.abc import AsyncIterator
from collections.abc import Coroutine
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import replicas as replicas_module
from async_sa import SQLAlchemy
from tests.conftest import asyncpg_dsn
from tests.pg_cluster import APPLY_DELAY
from tests.pg_cluster import pg_replication
from tests.pg_cluster import PgCluster

__all__ = ["pg_replication"]

pytestmark = pytest.mark.reliability
_T = t.TypeVar("_T")
IN_RECOVERY = sa.select(sa.func.pg_is_in_recovery())


@pytest.fixture(params=["asyncpg", "psycopg"])
def driver(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


@pytest.fixture(scope="module")
def table(pg_replication: tuple[PgCluster, PgCluster]) -> Iterator[str]:
    """The module's table, created on the primary; the standby has it once
    each test begins (see :func:`caught_up`)."""
    primary, _ = pg_replication

    async def create() -> None:
        await _fetch(primary, "CREATE TABLE item (id serial PRIMARY KEY, note text)")

    asyncio.run(create())
    yield "item"


async def _fetch(cluster: PgCluster, query: str) -> t.Any:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(cluster.url))
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


async def caught_up(primary: PgCluster, standby: PgCluster) -> None:
    """Wait until the standby streams from the primary again (after a restart)
    and has applied everything the primary committed."""
    lsn = await _fetch(primary, "SELECT pg_current_wal_lsn()::text")
    query = (
        "SELECT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming') "
        f"AND pg_last_wal_replay_lsn() >= '{lsn}'"
    )
    for _ in range(int(APPLY_DELAY * 40) + 200):
        if await _fetch(standby, query):
            return
        await asyncio.sleep(0.05)
    state = await _fetch(
        standby,
        "SELECT concat_ws(' ', pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), "
        "(SELECT status FROM pg_stat_wal_receiver))",
    )
    raise AssertionError(f"the standby did not replay up to {lsn}: {state}")


def item_model(db: SQLAlchemy) -> type[t.Any]:
    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        note: Mapped[str | None]

    return Item


def tagged(driver: str, tag: str) -> dict[str, t.Any]:
    """Engine options whose connections ``pg_stat_activity`` shows as ``tag``."""
    if driver == "psycopg":
        return {"connect_args": {"application_name": tag}}
    return {"connect_args": {"server_settings": {"application_name": tag}}}


@pytest.fixture
async def replicated(
    pg_replication: tuple[PgCluster, PgCluster], table: str, driver: str
) -> AsyncIterator[tuple[SQLAlchemy, type[t.Any], str]]:
    """A db whose default bind is the primary with the standby as replica,
    all its connections tagged; afterwards nothing is checked out and, once
    disposed, no connection is left on either server."""
    primary, standby = pg_replication
    await caught_up(primary, standby)
    tag = f"async_sa_replica_{uuid.uuid4().hex[:8]}"
    db = SQLAlchemy(
        binds={
            None: {
                "url": primary.url_for(driver),
                **tagged(driver, tag),
                "replicas": [standby.url_for(driver)],
            }
        }
    )
    try:
        yield db, item_model(db), tag
        await db.session.remove()
        await db.session.registry.wait_closed()
        assert checked_out(db) == [0, 0]
    finally:
        await db.dispose()
    for cluster in pg_replication:
        assert await _connections(cluster, tag) == 0


async def _connections(cluster: PgCluster, tag: str) -> int:
    return t.cast(
        int,
        await _fetch(
            cluster,
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{tag}'",
        ),
    )


def checked_out(db: SQLAlchemy) -> list[int]:
    engines = [db.engine, *db.replicas[None]]
    return [engine.pool.checkedout() for engine in engines]  # type: ignore[attr-defined]


def in_fresh_context(coro: Coroutine[t.Any, t.Any, _T]) -> asyncio.Task[_T]:
    """``coro`` as a task that has written nothing, as a new request."""
    return contextvars.Context().run(asyncio.ensure_future, coro)


async def test_reads_without_writes_run_on_the_standby(
    replicated: tuple[SQLAlchemy, type[t.Any], str],
) -> None:
    """A task that wrote nothing reads from the standby (in recovery); one
    that wrote reads from the primary; so do ORM reads, pagination and
    get_or_404."""
    db, item, _ = replicated

    async def reader() -> list[bool | None]:
        in_recovery = [await db.session.scalar(IN_RECOVERY)]
        page = await db.paginate(sa.select(item).order_by(item.id), per_page=5)
        assert page.total is not None
        in_recovery.append(await db.session.scalar(IN_RECOVERY))
        return in_recovery

    async def writer() -> bool | None:
        db.session.add(item(note="writer"))
        await db.session.commit()
        return await db.session.scalar(IN_RECOVERY)

    assert await in_fresh_context(reader()) == [True, True]
    assert await in_fresh_context(writer()) is False


async def test_a_request_reads_its_own_writes_despite_the_lag(
    replicated: tuple[SQLAlchemy, type[t.Any], str],
    pg_replication: tuple[PgCluster, PgCluster],
) -> None:
    """After a commit the writing task, its later sessions and the gather
    children it starts read the new row, while a task that wrote nothing does
    not find it on the lagging standby until the standby has applied it."""
    db, item, _ = replicated

    async def get(ident: int) -> str | None:
        found = await db.session.get(item, ident)
        return None if found is None else t.cast(str | None, found.note)

    async def request() -> int:
        assert await db.session.scalar(IN_RECOVERY) is True
        new = item(note="mine")
        db.session.add(new)
        await db.session.commit()
        ident = t.cast(int, new.id)
        db.session.expunge_all()
        assert await get(ident) == "mine"
        assert await db.session.scalar(
            sa.select(sa.func.count()).select_from(item).where(item.id == ident)
        )
        await db.session.remove()
        assert await get(ident) == "mine"
        assert list(await asyncio.gather(get(ident), get(ident))) == ["mine"] * 2
        return ident

    ident = await in_fresh_context(request())
    assert await in_fresh_context(get(ident)) is None  # the standby lags
    await caught_up(*pg_replication)
    assert await in_fresh_context(get(ident)) == "mine"


async def test_a_stopped_standby_costs_no_request(
    replicated: tuple[SQLAlchemy, type[t.Any], str],
    pg_replication: tuple[PgCluster, PgCluster],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The standby stopped while a read runs there and while requests come:
    the read is run again on the primary, every request succeeds, the failure
    is logged once; once the standby is back (and its down time is over) it
    gets the reads again."""
    db, _, _ = replicated
    primary, standby = pg_replication
    monkeypatch.setattr(replicas_module, "DOWN_FOR", 1.0)
    caplog.set_level(logging.INFO, logger="async_sa.replicas")

    async def slow_read() -> bool | None:
        await db.session.scalar(IN_RECOVERY)
        await db.session.execute(sa.select(sa.func.pg_sleep(1)))
        return await db.session.scalar(IN_RECOVERY)

    async def read() -> bool | None:
        return await db.session.scalar(IN_RECOVERY)

    try:
        reading = in_fresh_context(slow_read())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(standby.stop)
        assert await reading is False
        results = await asyncio.gather(*(in_fresh_context(read()) for _ in range(20)))
        assert list(results) == [False] * 20
    finally:
        await asyncio.to_thread(standby.start)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "replica 0 of the default bind" in warnings[0].getMessage()
    await caught_up(primary, standby)
    await asyncio.sleep(1.0)
    assert await in_fresh_context(read()) is True
    assert "answers again" in caplog.text


async def test_a_standby_lagging_more_than_the_bound_gets_no_reads(
    pg_replication: tuple[PgCluster, PgCluster],
    table: str,
    driver: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With max_replica_lag below the standby's lag, a read right after a
    commit on the primary goes to the primary (logged once); once the standby
    has applied everything, reads go to it again."""
    primary, standby = pg_replication
    await caught_up(primary, standby)
    monkeypatch.setattr(replicas_module, "LAG_CHECK_EVERY", 0.0)
    caplog.set_level(logging.INFO, logger="async_sa.replicas")
    db = SQLAlchemy(
        binds={
            None: {
                "url": primary.url_for(driver),
                "replicas": [standby.url_for(driver)],
                "max_replica_lag": APPLY_DELAY / 4,
            }
        }
    )
    item = item_model(db)

    async def write() -> None:
        db.session.add(item(note="lag"))
        await db.session.commit()

    async def read() -> bool | None:
        return await db.session.scalar(IN_RECOVERY)

    try:
        assert await in_fresh_context(read()) is True
        await in_fresh_context(write())
        await asyncio.sleep(APPLY_DELAY / 2)
        assert [await in_fresh_context(read()) for _ in range(3)] == [False] * 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "more than max_replica_lag" in warnings[0].getMessage()
        await caught_up(primary, standby)
        assert await in_fresh_context(read()) is True
        assert "within max_replica_lag again" in caplog.text
        await db.session.registry.wait_closed()
        assert checked_out(db) == [0, 0]
    finally:
        await db.dispose()


async def test_another_event_loop_reads_the_standby_and_leaves_nothing(
    replicated: tuple[SQLAlchemy, type[t.Any], str],
) -> None:
    """The same db used from another event loop (a thread's asyncio.run) reads
    from the standby with connections of its own loop, which the loop's end
    closes."""
    db, _, tag = replicated

    async def in_other_loop() -> bool | None:
        return await db.session.scalar(IN_RECOVERY)

    assert await asyncio.to_thread(asyncio.run, in_other_loop()) is True
    assert await in_fresh_context(db.session.scalar(IN_RECOVERY)) is True


# -- frameworks --------------------------------------------------------------------


async def test_quart_requests_read_their_writes_from_the_primary(
    pg_replication: tuple[PgCluster, PgCluster], table: str, driver: str
) -> None:
    """Under Quart (SQLALCHEMY_DATABASE_URI + SQLALCHEMY_REPLICAS): a request
    that commits reads its row back; a request that only reads runs on the
    standby, which does not have the row yet."""
    pytest.importorskip("quart")
    import quart

    primary, standby = pg_replication
    await caught_up(primary, standby)
    app = quart.Quart("replicated")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=primary.url_for(driver),
        SQLALCHEMY_REPLICAS=[standby.url_for(driver)],
    )
    db = SQLAlchemy(app)
    item = item_model(db)

    @app.post("/items")
    async def add() -> dict[str, t.Any]:
        new = item(note="posted")
        db.session.add(new)
        await db.session.commit()
        db.session.expunge_all()
        found = await db.get_or_404(item, new.id)
        in_recovery = await db.session.scalar(IN_RECOVERY)
        return {"id": found.id, "in_recovery": in_recovery}

    @app.get("/items/<int:ident>")
    async def get(ident: int) -> dict[str, t.Any]:
        found = await db.get_or_404(item, ident)
        return {"note": found.note}

    @app.get("/recovery")
    async def recovery() -> dict[str, t.Any]:
        return {"in_recovery": await db.session.scalar(IN_RECOVERY)}

    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            assert (await (await client.get("/recovery")).get_json()) == {
                "in_recovery": True
            }
            posted = await client.post("/items")
            body = await posted.get_json()
            assert posted.status_code == 200 and body["in_recovery"] is False
            assert (await client.get(f"/items/{body['id']}")).status_code == 404
            await caught_up(primary, standby)
            assert (await client.get(f"/items/{body['id']}")).status_code == 200
            async with app.app_context():
                assert checked_out(db) == [0, 0]
    finally:
        await db.dispose()


async def test_asgi_requests_read_their_writes_from_the_primary(
    pg_replication: tuple[PgCluster, PgCluster], table: str, driver: str
) -> None:
    """Behind the ASGI middleware (binds={None: {...}}): the same as under
    Quart."""
    pytest.importorskip("starlette")
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from async_sa.asgi import SessionMiddleware

    primary, standby = pg_replication
    await caught_up(primary, standby)
    db = SQLAlchemy(
        binds={
            None: {
                "url": primary.url_for(driver),
                "replicas": [standby.url_for(driver)],
            }
        }
    )
    item = item_model(db)

    async def add(request: Request) -> JSONResponse:
        new = item(note="posted")
        db.session.add(new)
        await db.session.commit()
        db.session.expunge_all()
        found = await db.get_or_404(item, new.id)
        in_recovery = await db.session.scalar(IN_RECOVERY)
        return JSONResponse({"id": found.id, "in_recovery": in_recovery})

    async def recovery(request: Request) -> JSONResponse:
        return JSONResponse({"in_recovery": await db.session.scalar(IN_RECOVERY)})

    app = Starlette(
        routes=[Route("/items", add, methods=["POST"]), Route("/recovery", recovery)]
    )
    app.add_middleware(SessionMiddleware, db=db)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test"
        ) as client:
            assert (await client.get("/recovery")).json() == {"in_recovery": True}
            posted = await client.post("/items")
            assert posted.status_code == 200
            assert posted.json()["in_recovery"] is False
            assert (await client.get("/recovery")).json() == {"in_recovery": True}
        await db.session.registry.wait_closed()
        assert checked_out(db) == [0, 0]
    finally:
        await db.dispose()

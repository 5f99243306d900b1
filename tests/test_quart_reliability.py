"""Reliability of served apps: disconnect storms, pool pressure, restarts, failed
commits. Every server runs on 127.0.0.1 under hypercorn; counts and times are
bounded so the whole file takes seconds.
"""

from __future__ import annotations

import asyncio
import random
import typing as t
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import quart
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy
from examples.notes_app import create_app
from examples.notes_app import db as notes_db
from examples.notes_app import Note
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import on_heavy_backends
from tests.servers import serving

pytestmark = pytest.mark.reliability

DISCONNECTING_CLIENTS = 500
NORMAL_REQUESTS = 100
PRESSURE_REQUESTS = 200
SETTLE_SECONDS = 15.0


async def settled(app: quart.Quart) -> None:
    """Wait (bounded) until the served app has given back every connection."""
    db = app.extensions["sqlalchemy"]
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while checked_out(db, app) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert checked_out(db, app) == 0


def slow_query(backend: Backend, seconds: float) -> sa.TextClause:
    """A query that keeps the database busy for about ``seconds``."""
    if backend.is_postgres:
        return sa.text(f"SELECT pg_sleep({seconds})")
    if backend.is_mariadb:
        return sa.text(f"SELECT SLEEP({seconds})")
    rows = int(seconds * 2_000_000)
    return sa.text(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        f"WHERE x < {rows}) SELECT count(*) FROM c"
    )


@pytest.fixture
async def notes_app(
    backend: Backend, tmp_path: Path
) -> AsyncIterator[tuple[quart.Quart, str]]:
    """The example app on the backend, plus a route that is slow in the database."""
    application_name = f"async_sa_{uuid.uuid4().hex[:12]}"
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": backend.url,
            "SQLALCHEMY_ENGINE_OPTIONS": backend.tagged(application_name),
        },
        instance_path=str(tmp_path),
    )

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        if backend.has_server:
            notes_db.session.add(Note(text="slow"))
            await notes_db.session.flush()
            await notes_db.session.execute(slow_query(backend, 0.1))
        else:
            await notes_db.session.execute(slow_query(backend, 0.02))
            notes_db.session.add(Note(text="slow"))
            await notes_db.session.flush()
        return {"slow": "done"}

    yield app, application_name


async def disconnect_mid_request(port: int, delay: float) -> None:
    """Ask for /slow, then hang up before the answer comes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(delay)
    writer.close()
    await writer.wait_closed()


@on_heavy_backends
async def test_disconnect_storm_loses_nothing_and_leaks_nothing(
    notes_app: tuple[quart.Quart, str], backend: Backend
) -> None:
    """500 clients hang up while their handler awaits the database, among 100
    normal requests: every normal request answered right and stored once, no
    connection checked out, none of our backends idle in transaction."""
    app, application_name = notes_app
    rng = random.Random(7)
    limit = asyncio.Semaphore(40)
    async with serving(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def normal(number: int) -> None:
                async with limit:
                    response = await client.post(
                        "/notes", json={"text": f"note {number}"}
                    )
                    assert response.status_code == 201, response.text
                    stored = await client.get(f"/notes/{response.json()['id']}")
                    assert stored.json()["text"] == f"note {number}"

            async def hang_up() -> None:
                async with limit:
                    await disconnect_mid_request(server.port, rng.uniform(0.0, 0.08))

            jobs = [hang_up() for _ in range(DISCONNECTING_CLIENTS)]
            jobs += [normal(number) for number in range(NORMAL_REQUESTS)]
            rng.shuffle(jobs)
            await asyncio.wait_for(asyncio.gather(*jobs), 120)
            await settled(app)
            listing = await client.get("/notes", params={"per_page": 100})
            assert listing.status_code == 200
        assert (
            await backend.count_connections(application_name, "idle in transaction")
            == 0
        )
        async with app.app_context():
            texts = (await notes_db.session.scalars(sa.select(Note.text))).all()
    # A client that hung up only after its handler had finished got its note
    # committed, as it should; the normal notes are all there, once.
    normal_texts = sorted(text for text in texts if text != "slow")
    assert normal_texts == sorted(f"note {n}" for n in range(NORMAL_REQUESTS))


@pytest.fixture
async def pressure_app(
    backend: Backend, tmp_path: Path
) -> AsyncIterator[tuple[quart.Quart, SQLAlchemy]]:
    """An app on a pool of 5 connections and no overflow."""
    db = SQLAlchemy()
    app = quart.Quart("pressure", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=backend.url,
        SQLALCHEMY_ENGINE_OPTIONS=backend.tagged(
            f"async_sa_pressure_{uuid.uuid4().hex[:12]}",
            pool_size=5,
            max_overflow=0,
            pool_timeout=20,
        ),
    )
    db.init_app(app)
    background_done: list[int] = []

    async def query(number: int) -> int:
        return await db.session.scalar(sa.select(sa.literal(number))) or 0

    async def background(number: int) -> None:
        background_done.append(await query(number))

    @app.get("/work/<int:number>")
    async def work(number: int) -> dict[str, t.Any]:
        answer = await query(number)
        await db.session.commit()
        children: list[int] = []
        if number % 3 == 0:
            children = list(await asyncio.gather(query(1), query(2), query(3)))
        if number % 5 == 0:
            app.add_background_task(background, number)
        return {"answer": answer, "children": children}

    app.config["BACKGROUND_DONE"] = background_done
    yield app, db
    await db.dispose()


@on_heavy_backends
async def test_pool_pressure_with_children_and_background_tasks(
    pressure_app: tuple[quart.Quart, SQLAlchemy],
) -> None:
    """200 concurrent requests on a pool of 5, some with gather children and
    background tasks: no pool timeout, every answer right, nothing checked out."""
    app, db = pressure_app
    async with serving(app) as server:
        limits = httpx.Limits(max_connections=PRESSURE_REQUESTS)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, limits=limits
        ) as client:
            responses = await asyncio.wait_for(
                asyncio.gather(
                    *(client.get(f"/work/{n}") for n in range(PRESSURE_REQUESTS))
                ),
                120,
            )
        for number, response in enumerate(responses):
            assert response.status_code == 200, response.text
            children = [1, 2, 3] if number % 3 == 0 else []
            assert response.json() == {"answer": number, "children": children}
        deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
        expected = sorted(n for n in range(PRESSURE_REQUESTS) if n % 5 == 0)
        while sorted(app.config["BACKGROUND_DONE"]) != expected:
            assert asyncio.get_running_loop().time() < deadline, (
                "background tasks stuck"
            )
            await asyncio.sleep(0.05)
        await settled(app)
    assert not db.session.registry.registry


async def test_database_restart_fails_in_flight_requests_then_recovers(
    server: Backend, tmp_path: Path
) -> None:
    """Our server connections are killed while requests are in flight: those
    answer 500 without hanging, and with pool_pre_ping (which the idle pooled
    connections of the audit bind need too) every request after them succeeds."""
    application_name = f"async_sa_{uuid.uuid4().hex[:12]}"
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": server.url,
            "SQLALCHEMY_ENGINE_OPTIONS": server.tagged(
                application_name, pool_pre_ping=True
            ),
        },
        instance_path=str(tmp_path),
    )

    @app.get("/sleep")
    async def sleep() -> dict[str, str]:
        await notes_db.session.execute(slow_query(server, 2))
        return {"slept": "yes"}

    async with serving(app) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            in_flight = [asyncio.create_task(client.get("/sleep")) for _ in range(10)]
            deadline = asyncio.get_running_loop().time() + 10
            while await server.count_connections(application_name, "active") < 10:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert await server.kill_connections(application_name) >= 10
            failed = await asyncio.wait_for(asyncio.gather(*in_flight), 20)
            assert [r.status_code for r in failed] == [500] * 10
            later = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        client.post("/notes", json={"text": f"after {n}"})
                        for n in range(20)
                    )
                ),
                20,
            )
            assert [r.status_code for r in later] == [201] * 20
            await settled(app)


async def test_deferred_constraint_failing_at_commit_is_a_500(
    postgres: Backend, tmp_path: Path
) -> None:
    """A deferred foreign key only fails at COMMIT, after the handler: 500, and
    nothing of the request is stored."""
    db = SQLAlchemy()
    app = quart.Quart("deferred", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=postgres.url,
        SQLALCHEMY_ENGINE_OPTIONS=postgres.engine_options,
        SQLALCHEMY_COMMIT_ON_SUCCESS=True,
    )
    db.init_app(app)

    class Parent(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    class Child(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int] = mapped_column(
            sa.ForeignKey(Parent.id, deferrable=True, initially="DEFERRED")
        )

    @app.post("/children/<int:parent_id>")
    async def add_child(parent_id: int) -> tuple[str, int]:
        db.session.add(Child(parent_id=parent_id))
        await db.session.flush()
        return "created", 201

    try:
        async with app.app_context():
            await db.create_all()
        async with app.app_context():
            db.session.add(Parent(id=1))
            await db.session.commit()
        client = app.test_client()
        assert (await client.post("/children/1")).status_code == 201
        assert (await client.post("/children/999")).status_code == 500
        async with app.app_context():
            stored = (await db.session.scalars(sa.select(Child.parent_id))).all()
        assert stored == [1]
        await db.session.registry.wait_closed()
        assert checked_out(db, app) == 0
    finally:
        await db.dispose()

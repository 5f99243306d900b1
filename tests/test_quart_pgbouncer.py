"""The example Quart app behind PgBouncer in transaction pooling mode, configured
from the environment as a deployment would be (see :mod:`tests.pg_cluster`)."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path

import pytest
import quart
import sqlalchemy as sa

from examples import notes_app
from tests.pg_cluster import PgBouncer
from tests.pg_cluster import pgbouncer
from tests.pg_cluster import pgbouncer_cluster

__all__ = ["pgbouncer", "pgbouncer_cluster"]

POSTS = 300
CONCURRENCY = 30


async def post_notes(app: quart.Quart) -> collections.Counter[int]:
    """:data:`POSTS` note creations, :data:`CONCURRENCY` at a time: how many got
    each status code."""
    client = app.test_client()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def post(number: int) -> int:
        async with limit:
            response = await client.post("/notes", json={"text": f"note {number}"})
            return response.status_code

    return collections.Counter(
        await asyncio.gather(*(post(number) for number in range(POSTS)))
    )


@pytest.mark.parametrize("switch", [True, False], ids=["pgbouncer", "no switch"])
async def test_example_app_answers_every_post_behind_pgbouncer_with_the_switch(
    pgbouncer: PgBouncer,
    switch: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``QUART_SQLALCHEMY_ENGINE_OPTIONS='{"pgbouncer": true}'``: 300 concurrent
    POSTs are all 201, each audited on the bind that follows the default URL;
    without it, some are 500s (prepared statements lost between transactions)."""
    monkeypatch.setenv("QUART_SQLALCHEMY_DATABASE_URI", pgbouncer.url())
    if switch:
        monkeypatch.setenv(
            "QUART_SQLALCHEMY_ENGINE_OPTIONS", json.dumps({"pgbouncer": True})
        )
    app = notes_app.create_app(instance_path=str(tmp_path))
    async with app.app_context():
        await notes_app.db.create_all()
    try:
        statuses = await post_notes(app)
        if not switch:
            assert statuses[500] > 0
            return
        assert statuses == {201: POSTS}
        async with app.app_context():
            audited = sa.select(sa.func.count()).select_from(notes_app.AuditEntry)
            assert await notes_app.db.session.scalar(audited) == POSTS
    finally:
        async with app.app_context():
            await notes_app.db.drop_all()
        await notes_app.db.session.registry.wait_closed()
        engines = app.extensions["sqlalchemy"].state_for(app).engines.values()
        for engine in engines:
            assert engine.pool.checkedout() == 0
            await engine.dispose()


def test_switch_on_a_sqlite_bind_in_app_config_names_the_config_key(
    tmp_path: Path,
) -> None:
    """``SQLALCHEMY_BINDS`` with the switch on a SQLite bind fails at
    ``init_app``, naming the config key and the bind."""
    with pytest.raises(ValueError, match=r"SQLALCHEMY_BINDS\['audit'\] .* PgBouncer"):
        notes_app.create_app(
            {
                "SQLALCHEMY_DATABASE_URI": "postgresql://db.example/notes",
                "SQLALCHEMY_BINDS": {
                    "audit": {"url": "sqlite:///audit.db", "pgbouncer": True}
                },
            },
            instance_path=str(tmp_path),
        )

"""Quart's teardown is bounded: a request whose server hangs after the handler
ran gets its response about ``SQLALCHEMY_CLOSE_TIMEOUT`` later, not when the
server answers again. The hang is a frozen cluster (see :mod:`tests.pg_cluster`).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pytest
import quart
import sqlalchemy as sa

from tests.conftest import NewDb
from tests.pg_cluster import pg_cluster
from tests.pg_cluster import PgCluster
from tests.test_bounded_cleanup import CLOSE_TIMEOUT
from tests.test_bounded_cleanup import MARGIN
from tests.test_bounded_cleanup import no_backend_left
from tests.test_bounded_cleanup import THAW_AFTER
from tests.test_bounded_cleanup import timed

__all__ = ["pg_cluster"]


async def test_teardown_gives_up_on_a_hung_server(
    pg_cluster: PgCluster, new_db: NewDb, tmp_path: Path
) -> None:
    """The server freezing between the handler and the teardown delays the
    response by SQLALCHEMY_CLOSE_TIMEOUT at most; the connection is given back,
    and the next request works once the server answers."""
    application_name = f"async_sa_bounded_{uuid.uuid4().hex[:8]}"
    app = quart.Quart(__name__, instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=pg_cluster.url,
        SQLALCHEMY_ENGINE_OPTIONS={
            "connect_args": {"server_settings": {"application_name": application_name}}
        },
        SQLALCHEMY_CLOSE_TIMEOUT=CLOSE_TIMEOUT,
    )
    db = new_db()
    db.init_app(app)
    freeze = contextlib.ExitStack()

    @app.get("/")
    async def query_then_hang() -> str:
        value = await db.session.scalar(sa.text("SELECT 1"))
        if "freeze" in quart.request.args:
            freeze.enter_context(pg_cluster.frozen(THAW_AFTER))
        return str(value)

    client = app.test_client()
    with freeze, timed() as timer:
        response = await client.get("/?freeze")
    assert timer.elapsed < CLOSE_TIMEOUT + MARGIN
    assert await response.get_data(as_text=True) == "1"
    async with app.app_context():
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    response = await client.get("/")
    assert await response.get_data(as_text=True) == "1"
    await db.dispose()
    await no_backend_left(pg_cluster, application_name)


@pytest.mark.parametrize("value", [0, "2", False])
def test_close_timeout_config_must_be_a_positive_number(
    new_db: NewDb, tmp_path: Path, value: object
) -> None:
    """A bad SQLALCHEMY_CLOSE_TIMEOUT is an error naming the key."""
    app = quart.Quart(__name__, instance_path=str(tmp_path))
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://")
    app.config["SQLALCHEMY_CLOSE_TIMEOUT"] = value
    with pytest.raises(ValueError, match="SQLALCHEMY_CLOSE_TIMEOUT must be"):
        new_db().init_app(app)


async def test_close_timeout_config_beats_the_constructor(
    new_db: NewDb, tmp_path: Path
) -> None:
    """SQLALCHEMY_CLOSE_TIMEOUT beats close_timeout=, which applies when the
    config is silent."""
    db = new_db(close_timeout=7)
    configured = quart.Quart("configured", instance_path=str(tmp_path))
    configured.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://", SQLALCHEMY_CLOSE_TIMEOUT=0.5
    )
    silent = quart.Quart("silent", instance_path=str(tmp_path))
    silent.config.update(SQLALCHEMY_DATABASE_URI="sqlite://")
    db.init_app(configured)
    db.init_app(silent)
    assert db.state_for(configured).close_timeout == 0.5
    assert db.state_for(silent).close_timeout == 7.0

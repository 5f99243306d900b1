"""Differences between the databases and drivers that the README states."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from tests.conftest import Backend
from tests.conftest import MakeDb
from tests.conftest import NewDb

AWARE = datetime.datetime(
    2026, 1, 2, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
)


async def test_timezone_aware_datetime_in_a_naive_column_depends_on_the_driver(
    postgres: Backend, new_db: NewDb
) -> None:
    """asyncpg refuses a timezone-aware datetime for a ``TIMESTAMP WITHOUT TIME
    ZONE`` column; psycopg sends it as ``timestamptz``, and PostgreSQL stores
    it converted to the session's time zone, without the offset."""
    db = new_db(url=postgres.url, engine_options=postgres.engine_options)

    class Event(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        at: Mapped[datetime.datetime] = mapped_column(sa.DateTime())

    await db.create_all()
    db.session.add(Event(id=1, at=AWARE))
    if postgres.name == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="offset-naive and offset-aware"):
            await db.session.commit()
        await db.session.rollback()
        return
    await db.session.commit()
    zone = await db.session.scalar(sa.text("SHOW TIME ZONE"))
    stored = await db.session.scalar(sa.select(Event.at))
    assert stored == AWARE.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None)


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
async def test_mariadb_refuses_deferrable_foreign_keys(make_db: MakeDb) -> None:
    """MariaDB has no deferred constraints: a ``deferrable`` foreign key is a
    syntax error at ``create_all()``, so a violation fails at flush, never at
    commit."""
    db = make_db()
    db.Table(
        "node",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent", sa.ForeignKey("node.id", deferrable=True)),
    )
    with pytest.raises(sa.exc.ProgrammingError, match="DEFERRABLE"):
        await db.create_all()

"""Every SQLite connection aiosqlite opens is closed, even when the task that
opened it is cancelled meanwhile."""

from __future__ import annotations

import asyncio
import time
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa

from async_sa.sqlite import CursorClosingConnection
from tests.conftest import NewDb


async def test_connection_opened_by_a_cancelled_task_is_closed(
    new_db: NewDb, tmp_path: Path
) -> None:
    """The task is cancelled while aiosqlite's worker opens the database: the
    open completes, the connection is closed, then the task ends cancelled
    (aiosqlite alone drops it unclosed, omnilib/aiosqlite#259)."""
    opened: list[CursorClosingConnection] = []
    closed: list[CursorClosingConnection] = []

    class SlowToOpen(CursorClosingConnection):
        def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)
            time.sleep(0.05)

        def close(self) -> None:
            closed.append(self)
            super().close()

    db = new_db(
        url=f"sqlite:///{tmp_path / 'test.db'}",
        engine_options={"connect_args": {"factory": SlowToOpen}},
    )

    async def query() -> None:
        async with db.sessionmaker() as session:
            await session.execute(sa.text("SELECT 1"))

    task = asyncio.create_task(query())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(opened) == 1
    assert closed == opened

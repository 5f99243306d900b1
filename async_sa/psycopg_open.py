"""Open psycopg connections so that a cancelled open closes its connection.

psycopg re-raises a cancellation of ``AsyncConnection.connect`` from the frame
that holds the half-open connection, so the connection (and its server
backend) lives as long as the ``CancelledError`` is kept, by the cancelled task
for one: 1,000 randomly cancelled units of work could fill the server's
``max_connections``. Here the open runs to completion, and a cancellation
received meanwhile closes the connection before it is raised, as
:func:`async_sa.sqlite._open_aiosqlite` does for aiosqlite.
"""

from __future__ import annotations

import asyncio
import typing as t

from async_sa.cleanup import run_to_completion


async def open_psycopg(*args: t.Any, **kwargs: t.Any) -> t.Any:
    """Open a psycopg ``AsyncConnection`` (SQLAlchemy's ``async_creator_fn``)."""
    import psycopg

    connection: psycopg.AsyncConnection[t.Any] | None = None

    async def open_connection() -> None:
        nonlocal connection
        connection = await psycopg.AsyncConnection.connect(*args, **kwargs)

    try:
        await run_to_completion(open_connection())
    except asyncio.CancelledError:
        if connection is not None:
            await run_to_completion(connection.close())
        raise
    return connection

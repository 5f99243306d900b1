"""psycopg connections terminated without the server or SQLAlchemy's greenlet.

SQLAlchemy's psycopg adapter has no ``terminate()`` (asyncpg's, aiosqlite's and
asyncmy's have one): terminating falls back to its graceful close, which only
runs inside SQLAlchemy's greenlet. Outside it (a close past ``close_timeout``,
the pool invalidating a connection there) the connection stayed open: an
operation waiting on a hung server kept waiting, and the server's backend lived
on until garbage collection. Here the socket is shut down, so an operation
waiting on it sees the end of the stream and fails at once, and libpq's
connection is finished; nothing waits for the server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import typing as t

import sqlalchemy.ext.asyncio as sa_async


def install(engine: sa_async.AsyncEngine) -> None:
    """Make ``engine`` (on ``postgresql+psycopg``) terminate its connections so."""
    from psycopg.pq import ConnStatus

    def do_terminate(dbapi_connection: t.Any) -> None:
        pgconn = dbapi_connection.driver_connection.pgconn
        if pgconn.status == ConnStatus.BAD:
            return
        with contextlib.suppress(OSError):
            with socket.socket(fileno=os.dup(pgconn.socket)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        pgconn.finish()

    # An attribute of this engine's dialect only: no SQLAlchemy class is changed.
    setattr(engine.sync_engine.dialect, "do_terminate", do_terminate)  # noqa: B010

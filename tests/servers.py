"""Real servers for the integration tests: hypercorn on a free port of
127.0.0.1 in the test's event loop, a minimal websocket client, and the check
that a served app left nothing open."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import typing as t
import uuid
from collections.abc import AsyncIterator

import hypercorn
import hypercorn.asyncio
import wsproto
import wsproto.events

from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import checked_out

TIMEOUT = 10.0
"""Seconds any one step may take before the test fails instead of hanging."""


class Server:
    """A hypercorn server running ``app`` in this event loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def serving(app: t.Any) -> AsyncIterator[Server]:
    """Serve ``app`` on a free port of 127.0.0.1 until the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = Server(listener.getsockname()[1])
    config = hypercorn.Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.graceful_timeout = 2
    shutdown = asyncio.Event()
    task = asyncio.create_task(
        hypercorn.asyncio.serve(app, config, shutdown_trigger=shutdown.wait)
    )
    try:
        yield server
    finally:
        shutdown.set()
        await asyncio.wait_for(task, TIMEOUT)


async def websocket_exchange(port: int, path: str, message: str) -> str:
    """Open a websocket, send ``message`` and return the first text received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = wsproto.events.Request(host=f"127.0.0.1:{port}", target=path)
    writer.write(connection.send(request))
    received = ""
    try:
        while True:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("the server closed the websocket early")
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, wsproto.events.AcceptConnection):
                    writer.write(
                        connection.send(wsproto.events.TextMessage(data=message))
                    )
                elif isinstance(event, wsproto.events.TextMessage):
                    received += event.data
                    if event.message_finished:
                        writer.write(
                            connection.send(wsproto.events.CloseConnection(1000))
                        )
                        await writer.drain()
                        return received
    finally:
        writer.close()
        await writer.wait_closed()


async def assert_nothing_left_open(
    db: SQLAlchemy, owner: object | None, backend: Backend, tag: str
) -> None:
    """No session of ``db`` registered, no connection of its engines for
    ``owner`` (an app; ``None``: the ``db``'s own) checked out, and none of its
    server connections (tagged ``tag``, see :meth:`Backend.tagged`) idle in
    transaction."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while db.session.registry.registry or checked_out(db, owner):
        assert loop.time() < deadline, "connections still checked out"
        await db.session.registry.wait_closed()
        await asyncio.sleep(0.01)
    # MariaDB's INNODB_TRX is a snapshot the server refreshes at most every
    # 0.1 s, for all its clients: a transaction rolled back just now can still
    # be in it. One left open stays until the deadline.
    while await backend.count_connections(tag, "idle in transaction"):
        assert loop.time() < deadline, "connections still idle in transaction"
        await asyncio.sleep(0.05)


def named_engine_options(backend: Backend) -> tuple[dict[str, t.Any], str]:
    """``backend``'s engine options, its server connections tagged with a fresh
    name to find them by (see :meth:`Backend.tagged`), and that name."""
    application_name = f"async_sa_{uuid.uuid4().hex[:12]}"
    return backend.tagged(application_name), application_name

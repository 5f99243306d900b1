"""Real servers for the integration tests: hypercorn on a free port of
127.0.0.1 in the test's event loop, and a minimal websocket client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import typing as t
from collections.abc import AsyncIterator

import hypercorn
import hypercorn.asyncio
import wsproto
import wsproto.events

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

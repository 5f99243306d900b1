"""The demos' server: an app under hypercorn on a free port of 127.0.0.1, a few
requests sent to it and printed, then stopped."""

from __future__ import annotations

import asyncio
import json
import socket
import typing as t
from collections.abc import Sequence

import httpx
import hypercorn
import hypercorn.asyncio

Request = tuple[str, str, t.Any]
"""``(method, path, JSON body or None)``."""


async def show(app: t.Any, requests: Sequence[Request], where: str) -> None:
    """Serve ``app``, send ``requests`` one after the other, print each with its
    answer, and stop the server. ``where`` says which databases it uses."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = hypercorn.Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.loglevel = "WARNING"
    stop = asyncio.Event()
    server = asyncio.create_task(
        hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)
    )
    print(f"serving {url} ({where})")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for method, path, body in requests:
                response = await client.request(method, path, json=body)
                shown = json.dumps(body) if body is not None else ""
                print(f"\n{method} {path} {shown}".rstrip())
                print(f"  -> {response.status_code} {response.text.strip()}")
    finally:
        stop.set()
        await server
    print("\nserver stopped")

"""Serve the notes app with hypercorn on 127.0.0.1, or run a short demo.

``python -m examples.notes_app`` serves on http://127.0.0.1:5000 until Ctrl+C;
``--port N`` picks another port. ``--demo`` serves on a free port with fresh
databases in a temporary folder, sends a few requests, prints them and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

import hypercorn
import hypercorn.asyncio

from examples.demo import show
from examples.notes_app import create_app


async def serve(port: int) -> None:
    config = hypercorn.Config()
    config.bind = [f"127.0.0.1:{port}"]
    await hypercorn.asyncio.serve(create_app(), config)


async def demo() -> None:
    """Serve on a free port of 127.0.0.1 with fresh databases in a temporary
    folder, send a few requests, print them and stop."""
    app = create_app(instance_path=tempfile.mkdtemp(prefix="async_sa_notes_"))
    await show(
        app,
        [
            ("POST", "/notes", {"text": "buy milk"}),
            ("POST", "/notes", {"text": "write the README"}),
            ("POST", "/notes", {"text": "ship it"}),
            ("POST", "/notes", {"text": ""}),
            ("GET", "/notes?per_page=2", None),
            ("GET", "/notes?per_page=2&page=2", None),
            ("GET", "/notes/2", None),
            ("GET", "/notes/99", None),
            ("GET", "/audit", None),
        ],
        f"databases in {app.instance_path}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.notes_app")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--demo", action="store_true", help=demo.__doc__)
    args = parser.parse_args()
    asyncio.run(demo() if args.demo else serve(args.port))


if __name__ == "__main__":
    main()

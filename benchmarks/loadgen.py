"""A small HTTP/1.1 load generator, run in a process of its own.

``python benchmarks/loadgen.py --port P --connections 64 --requests 2000``
opens the connections (keep-alive) to 127.0.0.1, then sends a fixed number of
requests over them as fast as answers come: 60 % ``GET /items/<id>``, 20 %
``POST /items``, 20 % ``GET /items?page=N``, in an order fixed by ``--seed``.
It prints one JSON line: requests, seconds, requests per second, status counts.

Plain asyncio streams, no HTTP library: on a 2-core machine the client must
cost far less than the server it measures. Stdlib only, so it runs by path.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time

HOST = "127.0.0.1"


def build_requests(count: int, rows: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        kind = index % 10
        if kind < 6:
            target = f"/items/{rng.randint(1, rows)}"
            requests.append(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        elif kind < 8:
            body = json.dumps({"text": f"note {index}"}).encode()
            head = (
                f"POST /items HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            requests.append(head.encode() + body)
        else:
            target = f"/items?page={rng.randint(1, 10)}"
            requests.append(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    rng.shuffle(requests)
    return requests


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError(f"response without Content-Length: {head!r}")
    await reader.readexactly(length)
    return status


async def run(port: int, connections: int, requests: list[bytes]) -> dict[str, object]:
    streams = [await asyncio.open_connection(HOST, port) for _ in range(connections)]
    statuses: collections.Counter[int] = collections.Counter()
    pending = iter(requests)

    async def worker(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for request in pending:
            writer.write(request)
            statuses[await read_response(reader)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in streams))
    seconds = time.perf_counter() - started
    for _, writer in streams:
        writer.close()
    return {
        "requests": len(requests),
        "seconds": seconds,
        "rps": len(requests) / seconds,
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1000, help="ids to GET: 1..rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    requests = build_requests(args.requests, args.rows, args.seed)
    print(json.dumps(asyncio.run(run(args.port, args.connections, requests))))


if __name__ == "__main__":
    main()

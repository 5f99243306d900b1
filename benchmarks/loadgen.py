"""A small HTTP/1.1 load generator, run in a process of its own.

``python benchmarks/loadgen.py --ports P1,P2 --connections 64 --slice 256
--rounds 30 --repeats 2`` opens the connections (keep-alive) to every server on
127.0.0.1 at the start, then runs **slices**: a fixed number of requests sent to
one server over its connections as fast as answers come, the next slice going
to the next server. A round runs the servers in a rotated order and back
(A B C C B A), ``--repeats`` times; every server gets the same requests in the
same order. Short slices side by side see nearly the same machine, so the
load of a shared box, which drifts over seconds, weighs on every server alike.

Requests: 60 % ``GET /items/<id>``, 20 % ``POST /items``, 20 % ``GET
/items?page=N``, in an order fixed by the round. It prints one JSON object:
the requests per round per server, each server's seconds per round, and the
status counts.

Plain asyncio streams, no HTTP library: on a 2-core machine the client must
cost far less than the servers it measures. Stdlib only, so it runs by path.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time

HOST = "127.0.0.1"
WARM_UP_SEED = -1


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


Streams = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


class Slices:
    """The open connections to every server, and the status counts of each."""

    def __init__(self, streams: dict[int, Streams]) -> None:
        self.streams = streams
        self.statuses = {port: collections.Counter[int]() for port in streams}

    async def run(self, port: int, requests: list[bytes]) -> float:
        """Send ``requests`` to ``port`` over all its connections; the seconds."""
        pending = iter(requests)
        statuses = self.statuses[port]

        async def worker(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            for request in pending:
                writer.write(request)
                statuses[await read_response(reader)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(r, w) for r, w in self.streams[port]))
        return time.perf_counter() - started


async def run(
    ports: list[int],
    *,
    connections: int,
    slice_size: int,
    rounds: int,
    repeats: int,
    rows: int,
    warm_up: int,
) -> dict[str, object]:
    streams: dict[int, Streams] = {port: [] for port in ports}
    for _ in range(connections):
        for port in ports:
            streams[port].append(await asyncio.open_connection(HOST, port))
    slices = Slices(streams)
    warm = build_requests(slice_size, rows, WARM_UP_SEED)
    for _ in range(warm_up):
        for port in ports:
            await slices.run(port, warm)
    per_round = 2 * repeats * slice_size
    seconds: dict[int, list[float]] = {port: [] for port in ports}
    for round_ in range(rounds):
        requests = build_requests(per_round, rows, seed=round_)
        chunks = [requests[i : i + slice_size] for i in range(0, per_round, slice_size)]
        shift = round_ % len(ports)
        order = ports[shift:] + ports[:shift]
        spent = dict.fromkeys(ports, 0.0)
        done = dict.fromkeys(ports, 0)
        for port in (order + order[::-1]) * repeats:
            spent[port] += await slices.run(port, chunks[done[port]])
            done[port] += 1
        for port in ports:
            seconds[port].append(spent[port])
    for port_streams in streams.values():
        for _, writer in port_streams:
            writer.close()
    return {
        "requests_per_round": per_round,
        "seconds": {str(port): spent for port, spent in seconds.items()},
        "statuses": {
            str(port): {str(code): n for code, n in sorted(counts.items())}
            for port, counts in slices.statuses.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ports", required=True, help="the servers' ports, comma-separated"
    )
    parser.add_argument("--connections", type=int, default=64, help="per server")
    parser.add_argument("--slice", type=int, default=256, help="requests per slice")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--repeats", type=int, default=2, help="rotated order and back, per round"
    )
    parser.add_argument("--rows", type=int, default=1000, help="ids to GET: 1..rows")
    parser.add_argument(
        "--warm-up", type=int, default=1, help="unmeasured slices per server first"
    )
    args = parser.parse_args()
    result = asyncio.run(
        run(
            [int(port) for port in args.ports.split(",")],
            connections=args.connections,
            slice_size=args.slice,
            rounds=args.rounds,
            repeats=args.repeats,
            rows=args.rows,
            warm_up=args.warm_up,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

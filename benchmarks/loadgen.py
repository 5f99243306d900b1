"""A small HTTP/1.1 load generator, run in a process of its own.

``python benchmarks/loadgen.py --server a=8001 --server a=8002 --server b=8003
--connections 64 --slice 256 --rounds 5`` opens the connections (keep-alive) to
every server on 127.0.0.1 at the start, then runs **slices**: a fixed number of
requests sent to one server over its connections as fast as answers come, the
next slice going to another app. An app may have several servers (processes);
its slices go to them in turn, starting one further every round.

A round orders the apps by a Williams design (for three apps: A B C, B C A,
C A B, C B A, B A C, A C B, in an order that never puts an app right after
itself): every app runs in every position of a row equally often and follows
every other app equally often, so neither a warm neighbour nor the time within
a round favours one. Every app gets the same requests in the same order. Short
slices side by side see nearly the same machine, so the load of a shared box,
which drifts over seconds, weighs on every app alike.

Requests: 60 % ``GET /items/<id>``, 20 % ``POST /items``, 20 % ``GET
/items?page=N``, in an order fixed by the round. It prints one JSON object:
the requests per slice, every round's slices as ``[app, port, seconds]`` in
the order run, and the status counts per port.

Plain asyncio streams, no HTTP library: on a 2-core machine the client must
cost far less than the servers it measures. Stdlib only, so it runs by path.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
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


def williams_order(count: int) -> list[int]:
    """One round's order of ``count`` apps (by index): the rows of a Williams
    design, arranged so that no app follows itself where that can be avoided
    (across rounds too, as the order repeats)."""
    first = [0]
    low, high = 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    rows = [[(app + shift) % count for app in first] for shift in range(count)]
    if count % 2 and count > 1:
        rows += [row[::-1] for row in rows]

    def repeats_of_an_app(arrangement: tuple[list[int], ...]) -> int:
        order = [app for row in arrangement for app in row]
        return sum(order[i] == order[i - 1] for i in range(len(order)))

    best = min(itertools.permutations(rows), key=repeats_of_an_app)
    return [app for row in best for app in row]


async def run(
    servers: dict[str, list[int]],
    *,
    connections: int,
    slice_size: int,
    rounds: int,
    repeats: int,
    rows: int,
    warm_up: int,
) -> dict[str, object]:
    """Load ``servers`` (app → ports) round after round; see the module doc."""
    ports = [port for app_ports in servers.values() for port in app_ports]
    streams: dict[int, Streams] = {port: [] for port in ports}
    for _ in range(connections):
        for port in ports:
            streams[port].append(await asyncio.open_connection(HOST, port))
    slices = Slices(streams)
    warm = build_requests(slice_size, rows, WARM_UP_SEED)
    for _ in range(warm_up):
        for port in ports:
            await slices.run(port, warm)
    apps = list(servers)
    order = [apps[index] for index in williams_order(len(apps))] * repeats
    per_app = order.count(apps[0])
    measured = []
    for round_ in range(rounds):
        requests = build_requests(per_app * slice_size, rows, seed=round_)
        chunks = [
            requests[i : i + slice_size] for i in range(0, len(requests), slice_size)
        ]
        done = dict.fromkeys(apps, 0)
        ran = []
        for app in order:
            # The app's servers in turn, starting one further every round, so
            # that no server always gets the same places in the order.
            app_ports = servers[app]
            port = app_ports[(done[app] + round_) % len(app_ports)]
            ran.append([app, port, await slices.run(port, chunks[done[app]])])
            done[app] += 1
        measured.append(ran)
    for port_streams in streams.values():
        for _, writer in port_streams:
            writer.close()
    return {
        "slice": slice_size,
        "rounds": measured,
        "statuses": {
            str(port): {str(code): n for code, n in sorted(counts.items())}
            for port, counts in slices.statuses.items()
        },
    }


def parse_servers(specs: list[str]) -> dict[str, list[int]]:
    """``["a=8001", "b=8002", "a=8003"]`` → ``{"a": [8001, 8003], "b": [8002]}``."""
    servers: dict[str, list[int]] = {}
    for spec in specs:
        app, _, port = spec.partition("=")
        servers.setdefault(app, []).append(int(port))
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        action="append",
        required=True,
        metavar="APP=PORT",
        help="a server of APP on 127.0.0.1:PORT (repeatable, several per app)",
    )
    parser.add_argument("--connections", type=int, default=64, help="per server")
    parser.add_argument("--slice", type=int, default=256, help="requests per slice")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--repeats", type=int, default=1, help="times a round runs its order"
    )
    parser.add_argument("--rows", type=int, default=1000, help="ids to GET: 1..rows")
    parser.add_argument(
        "--warm-up", type=int, default=1, help="unmeasured slices per server first"
    )
    args = parser.parse_args()
    result = asyncio.run(
        run(
            parse_servers(args.server),
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

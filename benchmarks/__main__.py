"""``python -m benchmarks``: run the scenarios, print and write the results."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from pathlib import Path

from benchmarks import _backends
from benchmarks import bind_routing
from benchmarks import bulk_insert
from benchmarks import end_to_end
from benchmarks import memory
from benchmarks import replica_end_to_end
from benchmarks import replica_routing
from benchmarks import report
from benchmarks import unit_of_work
from benchmarks._harness import Comparison
from benchmarks._harness import Settings

MicroScenario = Callable[[_backends.Backend, Settings], Awaitable[list[Comparison]]]
MICRO: dict[str, MicroScenario] = {
    "unit_of_work": unit_of_work.run,
    "bulk_insert": bulk_insert.run,
    "bind_routing": bind_routing.run,
    "replica_routing": replica_routing.run,
}
SCENARIOS = [
    *MICRO,
    "memory",
    "end_to_end",
    "end_to_end_starlette",
    "end_to_end_replica",
]
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="async_sa against hand-written SQLAlchemy asyncio, "
        "interleaved in one run; median ratios with min/max.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (about 2 minutes)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=_backends.NAMES,
        help="run only on this database (repeatable); memory and end_to_end "
        f"run on {' and '.join(_backends.SERVED)} only",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per comparison")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the markdown results (default: benchmarks/RESULTS.md "
        "for a full run of every scenario, else nowhere)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; write no files"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each in-process scenario with pyinstrument; write the "
        "call trees to DIR (timings are then slower, ratios meaningless)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a target is missed",
    )
    return parser.parse_args(argv)


async def run_micro(
    names: list[str],
    backends: list[str],
    settings: Settings,
    profile: Path | None = None,
) -> list[Comparison]:
    results: list[Comparison] = []
    for name in names:
        for backend_name in backends:
            async with _backends.open_backend(backend_name, name) as backend:
                print(f"-- {name} on {backend.label}", flush=True)
                if profile is not None:
                    comparisons = await profiled(
                        MICRO[name](backend, settings),
                        profile / f"{name}-{backend_name}.txt",
                    )
                else:
                    comparisons = await MICRO[name](backend, settings)
                for comparison in comparisons:
                    print(comparison.line(), flush=True)
                    results.append(comparison)
    return results


async def profiled(
    scenario: Awaitable[list[Comparison]], path: Path
) -> list[Comparison]:
    """Run ``scenario`` under pyinstrument and write its call tree to ``path``."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    try:
        return await scenario
    finally:
        profiler.stop()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profiler.output_text(unicode=True, show_all=True))
        print(f"profile written to {path}", flush=True)


def beside(output: Path, name: str) -> Path:
    """A file written beside the results: ``name`` for ``RESULTS.md``, else
    ``<stem>-<name>`` (the plot, the end-to-end slices)."""
    if output.name == "RESULTS.md":
        return output.parent / name
    return output.parent / f"{output.stem}-{name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.make(quick=args.quick, rounds=args.rounds)
    names = args.only or SCENARIOS
    backends = list(args.backend or _backends.NAMES)
    skipped: list[str] = []
    for name in list(backends):
        reason = asyncio.run(_backends.unavailable(name))
        if reason is not None:
            label = _backends.LABELS[name]
            print(f"skipping {label}: {reason}", flush=True)
            skipped.append(f"{label} skipped: {reason}")
            backends.remove(name)
    served = [name for name in backends if name in _backends.SERVED]
    output: Path | None = args.output
    full = set(names) == set(SCENARIOS) and not args.quick
    if output is None and full:
        output = HERE / "RESULTS.md"
    if args.no_write:
        output = None
    plot = None if output is None else beside(output, "throughput.png")
    slices = None if output is None else beside(output, "end_to_end_slices.json")
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    results: list[Comparison] = []
    memory_results: list[memory.MemoryResult] = []
    sweep: end_to_end.Sweep | None = None
    micro = [name for name in names if name in MICRO]
    if micro:
        results += asyncio.run(run_micro(micro, backends, settings, args.profile))
    if "memory" in names:
        memory_results = memory.run(served, settings)
    if "end_to_end" in names:
        e2e = end_to_end.run(served, settings, plot=plot, slices=slices)
        results += e2e.comparisons
        sweep = e2e
        skipped += e2e.skipped
    if "end_to_end_starlette" in names:
        results += end_to_end.run(
            served, settings, plot=None, framework="starlette"
        ).comparisons
    if "end_to_end_replica" in names:
        comparisons, why = replica_end_to_end.run(settings)
        results += comparisons
        skipped += why
    elapsed = time.monotonic() - started
    print(f"\ndone in {elapsed / 60:.1f} min")
    if output is not None:
        text = report.render(
            results,
            memory_results,
            sweep,
            settings=settings,
            elapsed=elapsed,
            skipped=skipped,
            command=" ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
            load_average=(load_start, os.getloadavg()[0]),
        )
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    missed = [r.scenario for r in results if not r.passed]
    missed += [f"memory {m.side} {m.backend}" for m in memory_results if not m.passed]
    if missed:
        print(f"missed targets: {len(missed)}")
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

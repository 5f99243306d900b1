"""Interleaved A/B runs, paired ratios, and the settings every scenario reads."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import typing as t
from collections.abc import Awaitable
from collections.abc import Callable

Operation = Callable[[], Awaitable[None]]
"""One timed operation: a unit of work, a commit of 200 rows, ..."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How hard to measure.

    :param quick: a smoke run: fewer rounds and smaller batches.
    :param rounds: timed A/B pairs per comparison after warm-up.
    :param warmup: untimed A/B pairs first (connections, caches, JIT-less
        CPython's own warm-up: imports, compiled statements).
    """

    quick: bool
    rounds: int
    warmup: int

    @classmethod
    def make(cls, *, quick: bool, rounds: int | None = None) -> Settings:
        default_rounds = 8 if quick else 30
        return cls(quick=quick, rounds=rounds or default_rounds, warmup=1)

    def scale(self, full: int, quick: int) -> int:
        """A batch size: ``full``, or ``quick`` in a smoke run."""
        return quick if self.quick else full


@dataclasses.dataclass
class Comparison:
    """One scenario on one backend: async_sa (A) against its baseline (B), in
    the same run: one ratio of A to B per round (see :func:`interleave`), and
    each side's value per round for context.

    For times, lower is better and the target is a maximum; for throughputs
    (``higher_is_better``) it is a minimum.
    """

    scenario: str
    backend: str
    target: float
    a_label: str
    b_label: str
    a_values: list[float]
    b_values: list[float]
    ratios: list[float]
    unit: str = "ms"
    """How ``a_values``/``b_values`` are shown: ``ms`` (seconds, shown in ms per
    batch) or ``req/s``."""
    batch: str = ""
    """What one sample is, for the report (``"200 units of work"``)."""
    higher_is_better: bool = False

    @classmethod
    def of(
        cls,
        scenario: str,
        backend: str,
        target: float,
        labels: tuple[str, str],
        samples: Samples,
        **kwargs: t.Any,
    ) -> Comparison:
        """A comparison of timed ``samples`` (A: ``labels[0]``, B: ``labels[1]``)."""
        return cls(
            scenario,
            backend,
            target,
            labels[0],
            labels[1],
            samples.a,
            samples.b,
            samples.ratios,
            **kwargs,
        )

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.median >= self.target
        return self.median <= self.target

    @property
    def target_text(self) -> str:
        return f"{'≥' if self.higher_is_better else '≤'} {self.target:.2f}"

    def absolute(self, values: list[float]) -> str:
        middle = statistics.median(values)
        if self.unit == "ms":
            return f"{middle * 1000:.1f} ms"
        return f"{middle:.0f} {self.unit}"

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        return (
            f"{self.scenario:<44} {self.backend:<10} "
            f"{self.median:6.3f} [{self.low:.3f}–{self.high:.3f}] "
            f"target {self.target_text}  {verdict}   "
            f"({self.a_label} {self.absolute(self.a_values)}, "
            f"{self.b_label} {self.absolute(self.b_values)}"
            f"{', per ' + self.batch if self.batch else ''})"
        )


@dataclasses.dataclass
class Samples:
    """Per round, in round order: A's and B's total seconds, and the median of
    the ratios of each A operation to the B operation timed next to it."""

    a: list[float] = dataclasses.field(default_factory=list)
    b: list[float] = dataclasses.field(default_factory=list)
    ratios: list[float] = dataclasses.field(default_factory=list)


async def interleave(
    a: Operation, b: Operation, settings: Settings, ops: int
) -> Samples:
    """Time ``a`` and ``b`` alternately, one operation at a time (A B B A A B ...).

    Each round runs ``ops`` pairs of operations. Alternating single
    operations keeps the two sides under the same machine load even when it
    changes from one millisecond to the next (other processes on a small,
    shared box). A round's ratio is the median of its pairs' ratios, so a
    burst of load that hits one operation of a pair does not move it; the
    report takes the median over rounds. Warm-up rounds run first, untimed.
    """
    clock = time.perf_counter
    samples = Samples()
    for round_ in range(-settings.warmup, settings.rounds):
        gc.collect()
        a_times: list[float] = []
        b_times: list[float] = []
        for op in range(ops):
            if op % 2:
                start = clock()
                await b()
                middle = clock()
                await a()
                end = clock()
                b_times.append(middle - start)
                a_times.append(end - middle)
            else:
                start = clock()
                await a()
                middle = clock()
                await b()
                end = clock()
                a_times.append(middle - start)
                b_times.append(end - middle)
        if round_ >= 0:
            samples.ratios.append(
                statistics.median(
                    a / b for a, b in zip(a_times, b_times, strict=True) if b > 0
                )
            )
            a_time, b_time = sum(a_times), sum(b_times)
            samples.a.append(a_time)
            samples.b.append(b_time)
    return samples

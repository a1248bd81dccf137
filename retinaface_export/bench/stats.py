"""How long a benchmark row runs, and the statistics of what it measured.

A row runs for a time budget (like OpenVINO ``benchmark_app -t``) or a fixed count of runs; either way it
reports mean, std, min, median and p90, and is flagged unstable when its spread is too wide to compare.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retinaface_export.errors import UsageError

# A time-budgeted row still takes at least this many timed runs (a slow model would otherwise get one or two).
MIN_RUNS = 5
# The unstable rule: a row whose spread (sample std) exceeds this fraction of its mean is flagged.
UNSTABLE_SPREAD = 0.2
UNSTABLE_RULE = f"the request latencies' std is more than {UNSTABLE_SPREAD:.0%} of their mean"
# Bounds of a row's budget: a typo (--runs 10**12, --time 1e9) must not become a run that never ends.
MAX_SECONDS = 3600.0
MAX_RUNS = 100_000
MAX_WARMUP = 10_000


@dataclass(frozen=True)
class Budget:
    """How long one row runs: ``seconds`` of timed runs (at least MIN_RUNS), or exactly ``runs``."""

    seconds: float | None = 5.0
    runs: int | None = None
    warmup: int = 1

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.runs is None):
            raise UsageError("give either a time budget (--time) or a count of runs (--runs), not both")
        if self.seconds is not None and not (0 < self.seconds <= MAX_SECONDS):  # NaN fails this too
            raise UsageError(f"--time must be above 0 and at most {MAX_SECONDS:g} seconds, got {self.seconds}")
        if self.runs is not None and not (3 <= self.runs <= MAX_RUNS):
            raise UsageError(f"--runs must be from 3 to {MAX_RUNS}, got {self.runs}")
        if not (0 <= self.warmup <= MAX_WARMUP):
            raise UsageError(f"--warmup must be from 0 to {MAX_WARMUP}, got {self.warmup}")

    def done(self, runs: int, elapsed: float) -> bool:
        """Whether a row that has made ``runs`` timed runs in ``elapsed`` seconds is finished."""
        if self.runs is not None:
            return runs >= self.runs
        assert self.seconds is not None
        return runs >= MIN_RUNS and elapsed >= self.seconds

    def describe(self) -> str:
        """``5 s per row`` or ``30 runs``, for titles."""
        return f"{self.runs} runs" if self.runs is not None else f"{self.seconds:g} s per row"


@dataclass(frozen=True)
class Stats:
    """Summary of one series of samples."""

    runs: int
    mean: float
    std: float
    min: float
    median: float
    p90: float

    @classmethod
    def of(cls, samples: np.ndarray | list[float]) -> Stats:
        """Summary of ``samples`` (sample std, ddof 1; 0 for a single sample)."""
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no samples")
        return cls(
            runs=int(values.size),
            mean=float(values.mean()),
            std=float(values.std(ddof=1)) if values.size > 1 else 0.0,
            min=float(values.min()),
            median=float(np.median(values)),
            p90=float(np.percentile(values, 90)),
        )

    @property
    def spread(self) -> float:
        """The sample std as a fraction of the mean."""
        return self.std / self.mean if self.mean > 0 else float("inf")

    @property
    def unstable(self) -> bool:
        """The UNSTABLE_RULE."""
        return self.spread > UNSTABLE_SPREAD


def interleaved(fns: list[Callable[[], object]], budget: Budget) -> list[np.ndarray]:
    """Milliseconds of each of ``fns`` per run, the functions taking turns within every run.

    Taking turns puts every function under the same machine load (these machines are shared), so their
    ratios hold better than those of one function timed after another. The budget counts whole turns.
    """
    for _ in range(budget.warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while not budget.done(len(times[0]), time.perf_counter() - start):
        for j, fn in enumerate(fns):
            begin = time.perf_counter()
            fn()
            times[j].append((time.perf_counter() - begin) * 1e3)
    return [np.asarray(t) for t in times]

"""Timing loops and the statistics reported for them (median, p10, p90, coefficient of variation)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from effstudio.core.progress import Progress

DEFAULT_BUDGET_S = 2.0
MIN_RUNS = 10  # with the default budget, keep running past it until this many runs
MAX_RUNS = 1000
SLOW_STOP_FACTOR = 5.0  # a model too slow for MIN_RUNS stops after this × budget (with ≥ 3 runs)
WARMUP_RUNS = 3
WARMUP_MAX_S = 2.0


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """``{"median", "p10", "p90", "cv", "runs"}`` of a list of run times in milliseconds.

    Percentiles interpolate linearly (numpy's default); ``cv`` is the sample standard deviation
    (ddof=1) over the mean, 0 for a single run.
    """
    if not len(times_ms):
        raise ValueError("no timings to summarize")
    a = np.asarray(times_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "cv": std / mean if mean > 0 else 0.0,
        "runs": int(a.size),
    }


NOISY_SPREAD = 0.5  # p10–p90 range over the median above which the runs are called noisy


def noise_warning(e2e: Mapping[str, float]) -> str | None:
    """A sentence for people when the end-to-end runs spread widely, else None.

    The p10–p90 range over the median, not the CV: one stalled run in forty moves the CV past 1
    while the median stands.  Quiet runs here spread 0.05–0.3; with other programs keeping the
    cores busy, 2–5 (a 2 ms CNN measured 43 ms ± 106 ms), and small layers' times are noise then."""
    median, p10, p90 = e2e.get("median"), e2e.get("p10"), e2e.get("p90")
    if not median or p10 is None or p90 is None:
        return None
    spread = (p90 - p10) / median
    if spread <= NOISY_SPREAD:
        return None
    return (f"the runs spread widely (p10–p90 is {spread:.1f}× the median): other programs are probably "
            f"using the processor; measure again when the machine is quieter")


@dataclass(frozen=True)
class RunPlan:
    """How many timed runs to make: a fixed count, or until a time budget is spent."""

    runs: int | None = None
    budget_s: float | None = None

    @classmethod
    def make(cls, runs: int | None, budget_s: float | None) -> RunPlan:
        if runs is not None and runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs}")
        if budget_s is not None and budget_s <= 0:
            raise ValueError(f"budget must be positive, got {budget_s}")
        if runs is None and budget_s is None:
            budget_s = DEFAULT_BUDGET_S
        return cls(runs, budget_s)

    def done(self, n: int, elapsed_s: float) -> bool:
        if self.runs is not None:
            return n >= self.runs
        assert self.budget_s is not None
        if n >= MAX_RUNS:
            return True
        if elapsed_s >= self.budget_s and n >= MIN_RUNS:
            return True
        return elapsed_s >= SLOW_STOP_FACTOR * self.budget_s and n >= 3

    def fraction(self, n: int, elapsed_s: float) -> float:
        if self.runs is not None:
            return n / self.runs
        assert self.budget_s is not None
        return min(1.0, max(n / MAX_RUNS, elapsed_s / self.budget_s * min(1.0, n / MIN_RUNS)))


def warm_up(fn: Callable[[], object], progress: Progress, message: str) -> int:
    """A few untimed runs (allocations, lazy init, caches), at most ~``WARMUP_MAX_S``; how many ran."""
    start = time.perf_counter()
    n = 0
    while n < WARMUP_RUNS:
        progress.update(None, message)
        fn()
        n += 1
        if time.perf_counter() - start > WARMUP_MAX_S:
            break
    return n


def time_runs(fn: Callable[[], object], plan: RunPlan, progress: Progress, message: str,
              sync: Callable[[], None] | None = None, between: Callable[[], object] | None = None) -> list[float]:
    """Call ``fn`` until ``plan`` is met; the wall time of each call in ms.

    ``between``, when given, is called untimed after each timed call (runs interleaved with the
    timed ones see the same machine load).

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before the clock stops so that
    asynchronous devices are timed to completion.  ``progress.update`` is called per run and
    raises :class:`~effstudio.core.progress.Cancelled` when the caller cancelled.
    """
    times: list[float] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if plan.done(len(times), elapsed):
            return times
        progress.update(plan.fraction(len(times), elapsed), f"{message} (run {len(times) + 1})")
        t0 = time.perf_counter_ns()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if between is not None:
            between()


TYPICAL_SHARE = 0.2  # typical runs: this share of the runs, those whose totals rank around the median


def typical_breakdown(per_run: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key, its mean over the *typical* runs: the fifth of the runs (at least one) whose
    totals (sum over keys) rank around the median total; a key missing from a run counts 0 there.

    The parts then add up to about the median run.  A median per key would not: when each run
    is slowed at a random part (a preempted thread, a page fault) every part's median drops its
    slow runs while the median run keeps one, and on a loaded 2-core machine the sum of
    per-module medians came to 0.2× the end-to-end median.  The middle half was too wide there:
    with a quarter of the runs stalled 10×, its mean sat well above the median.
    """
    if not per_run:
        return {}
    order = sorted(range(len(per_run)), key=lambda i: sum(per_run[i].values()))
    k = max(1, round(len(order) * TYPICAL_SHARE))
    start = (len(order) - k) // 2
    typical = [per_run[i] for i in order[start:start + k]]
    keys = {k for r in per_run for k in r}
    return {key: sum(r.get(key, 0.0) for r in typical) / len(typical) for key in keys}

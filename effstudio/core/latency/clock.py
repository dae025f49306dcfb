"""Marks in time for per-layer timing: the host clock, or CUDA events on the current stream.

On the CPU a mark is ``time.perf_counter_ns()``.  On CUDA, kernel launches are asynchronous: a host
clock read inside the forward times the launch, not the kernel, and synchronizing at every
module boundary (what the first version did) serializes launch and execution, so the modules'
times added up to more than the run they came from.  A CUDA event recorded on the stream instead
marks the moment the GPU reaches that point of the work: consecutive marks tile the GPU's
timeline, the forward keeps its launch/execution overlap, and one synchronize after the run
(:meth:`Clock.settle`) makes every interval readable.

Both clocks share one interface so the same call-tree code runs, and is tested, on the CPU.
"""

from __future__ import annotations

import time
from typing import Any


class Clock:
    """Host clock: a mark is ``perf_counter_ns()``; intervals are readable at once."""

    device = "cpu"

    def mark(self) -> Any:
        return time.perf_counter_ns()

    def settle(self) -> None:
        """Wait until every mark taken so far has a time (nothing to wait for on the host)."""

    def ns(self, start: Any, end: Any) -> int:
        return end - start

    def reset(self) -> None:
        """The marks taken so far are no longer needed (their resources can be reused)."""


class CudaClock(Clock):
    """CUDA events recorded on the current stream; :meth:`settle` synchronizes once.

    Events come from a pool reused after :meth:`reset`, so a run costs one ``record`` per mark
    (a few µs of host time, measured as the hooks' cost and taken out like the CPU hooks')."""

    device = "cuda"

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._pool: list[Any] = []
        self._used = 0

    def mark(self) -> Any:
        if self._used == len(self._pool):
            self._pool.append(self._torch.cuda.Event(enable_timing=True))
        event = self._pool[self._used]
        self._used += 1
        event.record()
        return event

    def settle(self) -> None:
        self._torch.cuda.synchronize()

    def ns(self, start: Any, end: Any) -> int:
        return round(start.elapsed_time(end) * 1e6)  # elapsed_time is in ms, 0.5 µs resolution

    def reset(self) -> None:
        self._used = 0


def clock_for(device_type: str) -> Clock:
    return CudaClock() if device_type == "cuda" else Clock()

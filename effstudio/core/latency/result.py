"""The measured latency of one model, end to end and per layer (JSON-able)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

RUNTIME_KEY = "(runtime)"
"""Pseudo-layer for time the backend spent outside any layer of the model (layout reorders,
device copies, module-call overhead).  Listed separately, never dropped."""


@dataclass
class LatencyResult:
    backend: str  # "onnxruntime" | "torch"
    device: str  # "cpu" | "cuda"
    threads: int
    e2e_ms: dict[str, float]  # {"median", "p10", "p90", "cv", "runs"}
    per_layer_ms: dict[str, float] = field(default_factory=dict)  # layer -> median ms; may hold RUNTIME_KEY
    fused: dict[str, list[str]] = field(default_factory=dict)  # runtime node/kernel -> layers it covers
    # sum(per_layer_ms) / e2e median (onnxruntime: of the plain runs alternating with the profiled
    # ones, with 1 thread their CPU time: see method); None without per-layer times
    latency_sum_ratio: float | None = None
    latency_sum_ratio_raw: float | None = None  # the same before overhead_ms was taken out (onnxruntime)
    sum_ratio_e2e_ms: float | None = None  # the end-to-end median the two ratios divide by
    environment: dict[str, Any] = field(default_factory=dict)
    eliminated: list[str] = field(default_factory=list)  # layers the runtime removed (folded): 0 ms
    runtime_nodes: dict[str, float] = field(default_factory=dict)  # what makes up per_layer_ms[RUNTIME_KEY]
    per_layer_runs: int = 0  # profiled runs behind the per-layer medians
    overhead_ms: float | None = None  # measured instrumentation cost per run, already taken out of per_layer_ms
    method: str = ""  # one line: how the numbers were obtained

    @property
    def runtime_ms(self) -> float:
        return self.per_layer_ms.get(RUNTIME_KEY, 0.0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LatencyResult:
        return cls(**dict(d))


def split_time(total_ms: float, layers: Sequence[str], flops: Mapping[str, float] | None) -> dict[str, float]:
    """Share one kernel's time among the layers it covers: by static FLOPs when every covered
    layer has a count and they are not all zero, else equally."""
    if not layers:
        return {}
    weights = None
    if flops is not None and all(flops.get(n) is not None for n in layers):
        w = [float(flops[n]) for n in layers]
        if sum(w) > 0:
            weights = w
    if weights is None:
        weights = [1.0] * len(layers)
    s = sum(weights)
    return {n: total_ms * w / s for n, w in zip(layers, weights, strict=True)}


def in_graph_order(per_layer: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """``per_layer`` ordered like the graph's layers, the runtime pseudo-layer (and anything else) last."""
    out = {n: per_layer[n] for n in names if n in per_layer}
    out.update((k, v) for k, v in per_layer.items() if k not in out)
    return out


def add_times(into: dict[str, float], more: Mapping[str, float]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v

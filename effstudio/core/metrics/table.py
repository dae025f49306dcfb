"""The per-layer metrics table every view reads: metric name -> {layer name -> value}.

A layer missing from a metric's dict has an *unknown* value (not measured yet, or an op that
could not be counted) — views show it as such, never as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str  # for menus and axis titles
    unit: str  # "" (count), "B" (bytes), "MAC", "FLOP", "ms"
    measured: bool = False  # True for measured (noisy) numbers, False for exact static counts
    help: str = ""


METRICS: dict[str, MetricInfo] = {m.key: m for m in (
    MetricInfo("params", "Parameters", "", help="elements of float and quantized weight tensors"),
    MetricInfo("weight_bytes", "Weight bytes", "B", help="bytes by real dtype (fp32 4, fp16 2, int8 1, int4 ½)"),
    MetricInfo("macs", "MACs", "MAC", help="multiply-accumulates; 1 MAC = 2 FLOPs"),
    MetricInfo("flops", "FLOPs", "FLOP", help="2 × MACs plus elementwise work"),
    MetricInfo("activation_bytes", "Activation memory", "B", help="bytes of the layer's outputs"),
    MetricInfo("latency_ms", "Latency (measured)", "ms", measured=True,
               help="median per-layer time from the backend's profiler"),
)}


@dataclass
class MetricsTable:
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> layer -> value
    totals: dict[str, Any] = field(default_factory=dict)
    uncounted_ops: list[dict[str, Any]] = field(default_factory=list)  # [{"op_type": str, "count": int}]
    notes: dict[str, str] = field(default_factory=dict)  # metric -> how it was obtained

    def get(self, metric: str, layer: str) -> float | None:
        return self.values.get(metric, {}).get(layer)

    def column(self, metric: str) -> dict[str, float]:
        return self.values.get(metric, {})

    def available(self) -> list[str]:
        return [k for k in METRICS if self.values.get(k)]

    def merge(self, other: MetricsTable) -> MetricsTable:
        """A new table with ``other``'s metrics added (other wins on conflicts)."""
        values = {k: dict(v) for k, v in self.values.items()}
        for k, v in other.values.items():
            values.setdefault(k, {}).update(v)
        return MetricsTable(values, {**self.totals, **other.totals},
                            other.uncounted_ops or self.uncounted_ops, {**self.notes, **other.notes})

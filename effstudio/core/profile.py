"""One profile of a model: static counts and measured latency side by side.

``profile_model(loaded)`` counts (params, bytes, MACs/FLOPs, activation memory) and then times
the model (end to end and per layer; fused kernels' time shared by the static FLOPs);
``profile_json`` is the result as the JSON that ``effstudio profile --json`` prints: the layer
graph's JSON with the numbers added to each layer and to ``totals``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from effstudio.core.latency import LatencyResult, latency_metrics, measure_latency
from effstudio.core.latency.result import RUNTIME_KEY
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

STATIC_SHARE = 0.1  # of the progress bar


@dataclass
class ProfileResult:
    static: MetricsTable
    latency: LatencyResult
    table: MetricsTable  # static merged with latency_ms: what the views read

    def to_json(self, loaded: LoadedModel) -> dict[str, Any]:
        return profile_json(loaded, self.static, self.latency)


def profile_model(loaded: LoadedModel, *, device: str = "cpu", threads: int | None = None,
                  runs: int | None = None, budget_s: float | None = None, per_layer: bool = True,
                  inputs: Mapping[str, np.ndarray] | None = None,
                  progress: Progress | None = None) -> ProfileResult:
    """Static counts, then measured latency (see :func:`~effstudio.core.latency.measure_latency`)."""
    from effstudio.core.metrics.static import compute_static

    progress = progress or Progress()
    progress.update(0.0, "counting parameters, FLOPs and memory")
    static = compute_static(loaded, progress.sub(0.0, STATIC_SHARE))
    latency = measure_latency(loaded, device=device, threads=threads, runs=runs, budget_s=budget_s,
                              per_layer=per_layer, inputs=inputs, flops=static.column("flops"),
                              progress=progress.sub(STATIC_SHARE, 1.0))
    progress.update(1.0, "profiled")
    return ProfileResult(static, latency, static.merge(latency_metrics(latency, loaded.graph)))


def _num(v: Any) -> Any:
    """Counts as ints where they are whole, None for unknown."""
    if v is None:
        return None
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**63 else f


def profile_json(loaded: LoadedModel, static_table: MetricsTable,
                 latency: LatencyResult | None) -> dict[str, Any]:
    """``LayerGraph.to_json()`` plus, per layer, ``macs``, ``flops``, ``activation_bytes``,
    ``latency_ms`` and ``latency_share`` (of the summed per-layer times; null = unknown), and
    in ``totals`` the static totals, ``latency_ms`` {median, p10, p90, cv, runs} and
    ``latency_sum_ratio`` (``latency_sum_ratio_raw``: before the measured instrumentation cost
    ``latency.overhead_ms`` was taken out; null where none was); at the top ``uncounted_ops``,
    ``latency`` (the full measurement: fused kernels, runtime-only time, method) and ``environment``."""
    out = loaded.graph.to_json()
    per_layer = latency.per_layer_ms if latency is not None else {}
    layer_sum = sum(per_layer.values())
    for lay in out["layers"]:
        name = lay["name"]
        for key in ("macs", "flops", "activation_bytes"):
            lay[key] = _num(static_table.get(key, name))
        ms = per_layer.get(name)
        lay["latency_ms"] = ms
        lay["latency_share"] = ms / layer_sum if ms is not None and layer_sum > 0 else None
    totals = out["totals"]
    for key, value in static_table.totals.items():
        totals.setdefault(key, value)
    if latency is not None:
        totals["latency_ms"] = dict(latency.e2e_ms)
        totals["latency_sum_ratio"] = latency.latency_sum_ratio
        totals["latency_sum_ratio_raw"] = latency.latency_sum_ratio_raw  # before overhead_ms was taken out
        totals["latency_runtime_ms"] = per_layer.get(RUNTIME_KEY, 0.0)
        lat = latency.to_json()
        out["environment"] = lat.pop("environment")
        lat.pop("per_layer_ms")
        out["latency"] = lat
    else:
        out["environment"] = None
    out["uncounted_ops"] = list(static_table.uncounted_ops)
    out["notes"] = dict(static_table.notes)
    return out

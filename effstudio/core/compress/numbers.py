"""The numbers of one version, and how a step changed them.

``measure_numbers`` re-profiles a model after a step: static counts (``compute_static``), the
deflated weight size, measured latency (optional; it takes seconds), and the outputs on the
reference samples, from which fidelity (against the original's outputs) and accuracy follow.
The result is plain JSON, stored with the version.

``judge_step`` compares a version with its parent: whether the technique's expectation
(faster / smaller) was met on this machine, and a plain sentence when it made things worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from effstudio.core.compress.base import Expectation
from effstudio.core.compress.evaluate import EvalData, accuracy_from_outputs
from effstudio.core.compress.fidelity import FidelityInputs, compare_outputs, model_outputs
from effstudio.core.compress.sizes import compressed_weight_bytes
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

TOTAL_KEYS = ("params", "weight_bytes", "macs", "flops", "peak_activation_bytes", "uncounted_layers")
SIZE_KEYS = ("weight_bytes", "compressed_weight_bytes")
SPEED_MARGIN = 0.05  # a latency change under 5 % (or inside the runs' spread) is noise


def _json_num(v: Any) -> Any:
    if v is None:
        return None
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**63 else f


class Reference:
    """The original's outputs on the reference samples (computed once) and the labelled data."""

    def __init__(self, original: LoadedModel, inputs: FidelityInputs, names: list[str]) -> None:
        self.original = original
        self.inputs = inputs
        self.names = names
        self._outputs: list[np.ndarray] | None = None

    def outputs(self, progress: Progress | None = None) -> list[np.ndarray]:
        if self._outputs is None:
            self._outputs = model_outputs(self.original, self.inputs, progress)
        return self._outputs

    @property
    def labelled(self) -> EvalData | None:
        return self.inputs.data if self.inputs.data.labels is not None else None


def measure_numbers(loaded: LoadedModel, reference: Reference | None, *, is_original: bool = False,
                    measure: bool = True, latency: dict[str, Any] | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Static totals and per-layer counts, compressed weight bytes, latency (when ``measure``),
    fidelity against the reference (not for the original itself) and accuracy (labelled data)."""
    from effstudio.core.metrics.static import compute_static

    progress = progress or Progress()
    static = compute_static(loaded, progress.sub(0.0, 0.15))
    totals = {k: _json_num(static.totals.get(k)) for k in TOTAL_KEYS if k in static.totals}
    totals["layers"] = len(loaded.graph.layers)
    totals["compressed_weight_bytes"] = compressed_weight_bytes(loaded, progress.sub(0.15, 0.3))
    per_layer = {k: {n: _json_num(v) for n, v in static.column(k).items()}
                 for k in ("params", "weight_bytes", "macs", "flops", "activation_bytes")}
    numbers: dict[str, Any] = {"totals": totals, "per_layer": per_layer, "uncounted_ops": static.uncounted_ops,
                               "latency": None, "fidelity": None, "accuracy": None}
    if reference is not None:
        ref_out = reference.outputs(progress.sub(0.3, 0.45))
        outs = ref_out if is_original else model_outputs(loaded, reference.inputs, progress.sub(0.45, 0.6))
        if not is_original:
            numbers["fidelity"] = compare_outputs(ref_out, outs, reference.names,
                                                  source=reference.inputs.data.source)
        if reference.labelled is not None:
            numbers["accuracy"] = accuracy_from_outputs(outs, reference.labelled)
    if measure:
        merge_latency(numbers, measure_latency_numbers(loaded, static.column("flops"), latency,
                                                       progress.sub(0.6, 1.0)))
    progress.update(1.0, "measured")
    return numbers


def merge_latency(numbers: dict[str, Any], more: dict[str, Any]) -> None:
    """Put a latency measurement into a version's numbers (per-layer times under ``per_layer``)."""
    numbers["latency"] = more["latency"]
    if more.get("per_layer_latency_ms"):
        numbers.setdefault("per_layer", {})["latency_ms"] = more["per_layer_latency_ms"]


def metrics_table(numbers: dict[str, Any]) -> MetricsTable:
    """A version's stored numbers as the MetricsTable the views read (per-layer values, totals)."""
    totals = dict(numbers.get("totals", {}))
    if numbers.get("latency"):
        totals["latency_ms"] = dict(numbers["latency"])
    values = {k: {n: float(v) for n, v in col.items() if v is not None}
              for k, col in (numbers.get("per_layer") or {}).items()}
    return MetricsTable(values=values, totals=totals, uncounted_ops=list(numbers.get("uncounted_ops") or []))


def measure_latency_numbers(loaded: LoadedModel, flops: dict[str, float] | None, latency: dict[str, Any] | None,
                            progress: Progress) -> dict[str, Any]:
    """``{"latency": e2e stats + backend/device/threads, "per_layer": {"latency_ms": ...}}`` pieces."""
    from effstudio.core.latency import measure_latency

    kw = dict(latency or {})
    res = measure_latency(loaded, flops=flops, progress=progress, **kw)
    lat = {**res.e2e_ms, "backend": res.backend, "device": res.device, "threads": res.threads,
           "method": res.method}
    out: dict[str, Any] = {"latency": lat}
    if res.per_layer_ms:
        out["per_layer_latency_ms"] = {k: float(v) for k, v in res.per_layer_ms.items()}
    return out


def _ratio(after: Any, before: Any) -> float | None:
    if after is None or before is None or not before:
        return None
    return float(after) / float(before)


def speed_change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """"faster", "slower", "same" (within noise), or None when either was not measured."""
    if not before or not after:
        return None
    r = _ratio(after.get("median"), before.get("median"))
    if r is None:
        return None
    if r < 1 - SPEED_MARGIN and after["median"] < before.get("p10", before["median"]):
        return "faster"
    if r > 1 + SPEED_MARGIN and after["median"] > before.get("p90", before["median"]):
        return "slower"
    return "same"


def size_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """"smaller" when the raw or the deflated weight bytes went down by more than 1 %, "larger"
    when either went up by more than 1 % and neither went down, else "same"."""
    ratios = [_ratio(after.get(k), before.get(k)) for k in SIZE_KEYS]
    ratios = [r for r in ratios if r is not None]
    if any(r < 0.99 for r in ratios):
        return "smaller"
    if any(r > 1.01 for r in ratios):
        return "larger"
    return "same"


def _fmt_bytes(n: Any) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"


def judge_step(technique: str, expectation: Expectation | None, before: dict[str, Any],
               after: dict[str, Any]) -> dict[str, Any]:
    """The step's expectation against what was measured, and plain warnings when it got worse."""
    tb, ta = before.get("totals", {}), after.get("totals", {})
    size = size_change(tb, ta)
    speed = speed_change(before.get("latency"), after.get("latency"))
    parts = [f"weight bytes {_fmt_bytes(tb.get('weight_bytes'))} → {_fmt_bytes(ta.get('weight_bytes'))}",
             f"zipped {_fmt_bytes(tb.get('compressed_weight_bytes'))} → "
             f"{_fmt_bytes(ta.get('compressed_weight_bytes'))}"]
    if speed is not None:
        parts.append(f"latency {before['latency']['median']:.3f} → {after['latency']['median']:.3f} ms ({speed})")
    else:
        parts.append("latency not measured")
    measured = "; ".join(parts)
    kind = expectation.kind if expectation else None
    met: bool | None
    if kind in ("smaller", "smaller-only"):
        met = size == "smaller"
    elif kind == "faster":
        met = None if speed is None else speed == "faster"
    elif kind == "faster-and-smaller":
        met = None if speed is None else (speed == "faster" and size == "smaller")
    elif kind == "neither":
        met = True
    else:
        met = None
    warnings = []
    if speed == "slower":
        warnings.append(f"{technique} made the model slower on this machine: {before['latency']['median']:.3f} ms "
                        f"→ {after['latency']['median']:.3f} ms median.")
    if size == "larger":
        warnings.append(f"{technique} made the model larger: {_fmt_bytes(tb.get('weight_bytes'))} → "
                        f"{_fmt_bytes(ta.get('weight_bytes'))} of weights "
                        f"({_fmt_bytes(ta.get('compressed_weight_bytes'))} zipped).")
    return {"technique": technique, "expected": kind, "text": expectation.text if expectation else "",
            "measured": measured, "size": size, "speed": speed, "met": met, "warnings": warnings}

"""Measured latency: end to end and per layer, on onnxruntime or torch.

    result = measure_latency(loaded)              # LatencyResult (JSON-able)
    table = latency_metrics(result, loaded.graph)  # MetricsTable with "latency_ms"

Timings are noisy: every number is a median over repeated runs after a warm-up, reported with
its p10–p90 spread and coefficient of variation, and with the machine it was measured on.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.graph import LayerGraph
from effstudio.core.latency.environment import available_cores
from effstudio.core.latency.inputs import load_npz_inputs
from effstudio.core.latency.result import RUNTIME_KEY, LatencyResult
from effstudio.core.latency.stats import RunPlan, summarize
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

__all__ = ["RUNTIME_KEY", "LatencyResult", "device_label", "latency_metrics", "load_npz_inputs", "measure_latency",
           "summarize"]


def measure_latency(loaded: LoadedModel, *, device: str = "cpu", threads: int | None = None,
                    runs: int | None = None, budget_s: float | None = None, per_layer: bool = True,
                    inputs: Mapping[str, np.ndarray] | None = None, flops: Mapping[str, float] | None = None,
                    progress: Progress | None = None) -> LatencyResult:
    """Time ``loaded`` end to end and (with ``per_layer``) per layer.

    ``runs`` fixes the number of timed runs; otherwise runs go on until ``budget_s`` (default
    2 s) is spent and at least 10 were made (a very slow model stops after 5 × the budget with
    at least 3).  ``threads`` defaults to every core this process may use.  ``inputs`` defaults
    to ``loaded.example_inputs``.  ``flops`` (layer -> static FLOPs) shares a fused kernel's time
    among its layers; without it the share is equal.  Raises
    :class:`~effstudio.core.progress.Cancelled` when ``progress`` is cancelled.
    """
    progress = progress or Progress()
    plan = RunPlan.make(runs, budget_s)
    if threads is not None and threads < 1:
        raise EffstudioError(f"--threads must be at least 1, got {threads}")
    threads = threads or available_cores()
    data = dict(loaded.example_inputs if inputs is None else inputs)
    if loaded.onnx_model is not None:
        from effstudio.core.latency.ort_latency import measure_onnx

        return measure_onnx(loaded, device=device, threads=threads, plan=plan, per_layer=per_layer,
                            inputs=data, flops=flops, progress=progress)
    if loaded.torch_module is not None:
        from effstudio.core.latency.torch_latency import measure_torch

        return measure_torch(loaded, device=device, threads=threads, plan=plan, per_layer=per_layer,
                             inputs=data, flops=flops, progress=progress)
    raise EffstudioError(f"{loaded.path}: nothing runnable was loaded (neither ONNX nor torch)")


def device_label(result: LatencyResult) -> str:
    """Where ``result`` was measured, for people: ``"CPU, 2 threads"``, ``"CUDA (NVIDIA H100 80GB HBM3)"``."""
    if result.device == "cpu":
        return f"CPU, {result.threads} thread{'s' if result.threads != 1 else ''}"
    gpu = (result.environment or {}).get("gpu")
    return f"{result.device.upper()} ({gpu})" if gpu else result.device.upper()


def latency_metrics(result: LatencyResult, graph: LayerGraph) -> MetricsTable:
    """The ``latency_ms`` metric of ``graph``'s layers, with totals ``latency_ms`` (the e2e stats),
    ``latency_sum_ratio`` and ``latency_runtime_ms`` (time outside any layer).  Layers without a
    measured time are left out (unknown), never 0."""
    per_layer = {k: v for k, v in result.per_layer_ms.items() if k in graph}
    totals = {"latency_ms": dict(result.e2e_ms), "latency_sum_ratio": result.latency_sum_ratio,
              "latency_runtime_ms": result.runtime_ms, "latency_device": device_label(result)}
    note = result.method or "measured"
    return MetricsTable(values={"latency_ms": per_layer} if per_layer else {}, totals=totals,
                        notes={"latency_ms": note})

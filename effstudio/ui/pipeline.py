"""The background work behind opening a model, as plain functions (Qt-free).

``open_and_profile`` loads a model, counts its static numbers and publishes them (the window
shows them at once; for ONNX as soon as the layer graph exists, before the large weights are
read), then measures latency and returns that table.  They run in a worker via
``ui/workers.py``; ``publish`` and ``progress`` are given by the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from effstudio.core import layout
from effstudio.core.graph import LayerGraph
from effstudio.core.inputs import InputSpec
from effstudio.core.latency.isolated import MeasuringProcess, import_ahead, measure_latency_isolated
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

DRAW_WAIT_S = 3.0  # longest a load waits for the GUI to draw the graph it published


@dataclass
class Opened:
    """A loaded model with its static numbers (published before latency is measured)."""

    spec: str
    loaded: LoadedModel
    metrics: MetricsTable


@dataclass
class GraphShown:
    """A new model's layer graph and static numbers, published before its weights are all read
    (the ONNX loader's ``on_graph``); :class:`Opened` with the same graph and table follows."""

    spec: str
    graph: LayerGraph
    metrics: MetricsTable
    # set by the GUI once the graph is drawn; the worker waits for it (up to DRAW_WAIT_S) before
    # it reads the weights, so the first drawing does not compete with it for the GIL
    drawn: threading.Event = field(default_factory=threading.Event)


@dataclass
class Measured:
    """Measured latency: the per-layer table and the core's result (end-to-end median, spread)."""

    metrics: MetricsTable
    result: Any


def static_metrics(loaded: LoadedModel, progress: Progress) -> MetricsTable:
    from effstudio.core.metrics.static import compute_static

    return compute_static(loaded, progress)


def measure(loaded: LoadedModel, progress: Progress, process: MeasuringProcess | None = None,
            device: str = "cpu") -> Measured:
    """Time ``loaded`` on this machine's ``device`` (the core's defaults: warm-up, repeats,
    median), in a child process at a lower priority for ONNX (``process`` when started ahead)
    so the window stays smooth meanwhile."""
    from effstudio.core.latency import latency_metrics

    result = measure_latency_isolated(loaded, progress=progress, process=process, device=device)
    return Measured(latency_metrics(result, loaded.graph), result)


def open_and_profile(
    spec: str,
    *,
    trust: bool = False,
    inputs: dict[str, InputSpec] | None = None,
    latency: bool = True,
    device: str = "cpu",
    progress: Progress,
    publish: Callable[[object], None],
) -> Measured | None:
    """Load ``spec``, publish :class:`Opened` (static numbers), then return :class:`Measured`."""
    # an ONNX file's latency is measured in a child process: it starts now and imports
    # onnxruntime while the model loads and the window draws it, not after
    process = MeasuringProcess() if latency and spec.lower().endswith(".onnx") else None
    try:
        return _open_and_profile(spec, trust=trust, inputs=inputs, latency=latency, progress=progress,
                                 publish=publish, process=process, device=device)
    finally:
        if process is not None:
            process.close()


def _open_and_profile(spec: str, *, trust: bool, inputs: dict[str, InputSpec] | None, latency: bool,
                      progress: Progress, publish: Callable[[object], None],
                      process: MeasuringProcess | None, device: str = "cpu") -> Measured | None:
    from effstudio.core.loaders import open_model

    progress.update(0.0, f"opening {spec}")
    early: dict[str, Any] = {}

    def on_graph(partial: LoadedModel) -> None:  # the graph exists, the large weights are not read yet
        early["table"] = table = static_metrics(partial, progress.sub(0.22, 0.23))
        early["graph"] = partial.graph
        # the window lays the graph out as soon as it gets it, and the latency measurement starts
        # once it is drawn: import for both here, while the window is idle, not while it draws
        # (imports run Python for 0.1-0.3 s, which made the window's first drawing stutter)
        layout.import_backend()
        if latency:
            import_ahead()
        shown = GraphShown(spec, partial.graph, table)
        publish(shown)
        deadline = time.monotonic() + DRAW_WAIT_S
        while not shown.drawn.wait(0.05) and time.monotonic() < deadline:
            progress.check()

    # large ONNX weights stay in their file: onnxruntime reads the file itself, the histogram reads one
    # weight on demand, and copying them into the model would hold the GIL for hundreds of ms (a frozen window)
    loaded = open_model(spec, inputs=inputs, trust=trust, progress=progress.sub(0.0, 0.45), on_graph=on_graph,
                        read_weights=False)
    if early.get("graph") is loaded.graph:
        table = early["table"]
    else:
        progress.update(0.45, "counting parameters and MACs")
        table = static_metrics(loaded, progress.sub(0.45, 0.55))
    publish(Opened(spec, loaded, table))
    if not latency:
        return None
    progress.update(0.55, "measuring latency")
    return measure(loaded, progress.sub(0.55, 1.0), process, device)

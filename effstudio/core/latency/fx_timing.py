"""Per-op times of an exported torch program: run its FX graph node by node and time each node.

``torch.fx.Interpreter`` executes the same ATen kernels as the compiled ``GraphModule`` with a few
microseconds of Python per node, so the sum of node times stays close to the end-to-end time of
``ExportedProgram.module()`` (1.05–1.07× on the demo CNN and MobileNetV2), while
``torch.export.unflatten`` — which would let module hooks fire — ran 1.9–2.9× slower.
Node names are the layer graph's tensor names (:mod:`effstudio.core.loaders.torch_graph`), so
each node maps to its layer through ``LayerGraph.producers()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from effstudio.core.latency import stats
from effstudio.core.latency.clock import Clock
from effstudio.core.progress import Progress

_TIMED_OPS = ("call_function", "call_module", "call_method")


def _flat_args(gm: Any, kwargs: Mapping[str, Any]) -> list[Any]:
    import torch.utils._pytree as pytree

    spec = getattr(gm, "_in_spec", None)
    if spec is not None:
        from torch.fx._pytree import tree_flatten_spec

        return list(tree_flatten_spec(((), dict(kwargs)), spec))
    return pytree.tree_flatten(((), dict(kwargs)))[0]


def fx_node_times(gm: Any, kwargs: Mapping[str, Any], runs: int, progress: Progress,
                  clock: Clock | None = None) -> dict[str, float]:
    """ms per FX node name over ``runs`` interpreted runs (after a warm-up): its mean over the
    typical runs (:func:`.stats.typical_breakdown`), so that the nodes add up to a typical run.

    ``clock`` marks each node's start and end (CUDA events on a GPU: no synchronize between
    nodes, one after the run)."""
    import torch

    clock = clock or Clock()

    class _Timed(torch.fx.Interpreter):
        def __init__(self) -> None:
            super().__init__(gm)
            self.marks: list[tuple[str, Any, Any]] = []

        def run_node(self, n: torch.fx.Node) -> Any:
            if n.op not in _TIMED_OPS:
                return super().run_node(n)
            start = clock.mark()
            out = super().run_node(n)
            self.marks.append((n.name, start, clock.mark()))
            return out

    args = _flat_args(gm, kwargs)
    interp = _Timed()
    per_run: list[dict[str, float]] = []

    def run() -> None:
        interp.marks = []
        interp.run(*args)
        clock.settle()
        times: dict[str, int] = {}
        for name, start, end in interp.marks:
            times[name] = times.get(name, 0) + clock.ns(start, end)
        clock.reset()
        per_run.append(times)

    stats.warm_up(run, progress, "warming up the node-by-node run")
    per_run.clear()
    stats.time_runs(run, stats.RunPlan(runs=runs), progress, "timing each op")
    return {k: v / 1e6 for k, v in stats.typical_breakdown(per_run).items()}


def layer_times(node_ms: Mapping[str, float], producers: Mapping[str, str]) -> tuple[dict[str, float],
                                                                                     dict[str, float]]:
    """(layer -> ms, unmapped node -> ms): a node's time goes to the layer producing its tensor."""
    per_layer: dict[str, float] = {}
    unmapped: dict[str, float] = {}
    for node, ms in node_ms.items():
        layer = producers.get(node)
        if layer is None:
            unmapped[node] = ms
        else:
            per_layer[layer] = per_layer.get(layer, 0.0) + ms
    return per_layer, unmapped

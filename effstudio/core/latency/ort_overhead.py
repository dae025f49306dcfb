"""What onnxruntime's profiler adds inside each node's ``kernel_time``, measured in the same run.

With profiling on, onnxruntime's executor does per node, between reading the start time and the
end time of ``kernel_time``, work a plain run skips: it formats the input and output shapes into
strings and builds the event's arguments (op name, provider, sizes, memory-arena statistics).
On this machine that is several µs per node: 0.4–0.75 µs ``Add`` nodes read 3–6 µs, and the
ViT demo (156 runtime nodes of ~8 µs) summed to 1.5× its end-to-end time.  The rest of the
profiler's cost (storing the event) falls between node events and is no node's time.

Neither part can be seen apart from the kernel in one profile, and an absolute per-node cost
measured once on a separate model swung 2.5–6.8 µs with the machine's load.  So it is measured
alongside the model's own runs, under the same load, in two parts:

- ``O``: what profiling costs this model per run, the median profiled run less the median plain
  run, the two sessions alternating in blocks of runs, in CPU time of the running thread (wall
  time counted the longer profiled runs' extra preemptions on a loaded machine as profiler cost);
- ``f``: the share of the profiler's cost that lies inside node events, measured on a probe (a
  chain of :data:`PROBE_NODES` small ``Add`` nodes) whose plain and profiled runs alternate with
  the model's.  On the probe, (Σ median kernel_time − plain run) / (profiled run − plain run) is
  ``f`` less the executor's own per-node cost over ``O`` — a lower bound.  Measured under load it held
  at 0.39–0.48 across ``Add``/``Sum`` nodes with 3 or 5 tensors and short or long shapes (while
  the absolute cost swung 3.2–6.0 µs per node): the share is a property of the code path.

``f × O`` is taken out of the model's nodes in equal parts per executed node (the probe showed
no dependence on tensor count or shape length beyond run-to-run noise), never below 0, and
never more than ``O``; ``O − f × O``, the part outside the node events, is left alone.
``f`` errs low (by the executor's own per-node work); ``O`` also holds a per-run part outside
any node (3–7 µs on a one-node chain), ``f`` of which is taken from the nodes too.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

PROBE_NODES = 64
PROBE_SHAPE = (1, 64)


def probe_model() -> bytes:
    """A chain of :data:`PROBE_NODES` ``Add`` nodes on a small tensor (nothing to fuse or fold)."""
    nodes, prev = [], "x"
    for i in range(PROBE_NODES):
        nodes.append(helper.make_node("Add", [prev, "one"], [f"t{i}"], name=f"probe_add_{i}"))
        prev = f"t{i}"
    graph = helper.make_graph(
        nodes, "overhead_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, PROBE_SHAPE)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, PROBE_SHAPE)],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model.SerializeToString()


CALL_KEY = "(session call)"
"""The ``runtime_nodes`` entry for what a ``run`` call costs besides the model's nodes."""


def call_shell_model(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bytes | None:
    """A model with the measured model's inputs and outputs and no node: each output is an
    initializer of its shape and dtype.  A run of it costs what a ``run`` call of the model
    costs besides its nodes (the feeds checked and wrapped, the outputs made and handed back as
    numpy arrays): time in no layer, and in no profiler event, that the plain end-to-end run
    holds (about 18 µs a call here, 13 % of the demo MLP's run).  None when an input or output is
    no numeric tensor (a sequence, a map, strings)."""
    arrays = {**feeds, **outputs}
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in arrays.values()):
        return None
    if set(feeds) & set(outputs):
        return None  # an input passed straight through: no room for an initializer of that name
    try:
        graph = helper.make_graph(
            [], "session_call_shell",
            [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for k, a in feeds.items()],
            [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for k, a in outputs.items()],
            [numpy_helper.from_array(a.copy(order="C"), k) for k, a in outputs.items()])  # copy: keeps a 0-d scalar 0-d
    except (KeyError, TypeError, ValueError):
        return None
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model.SerializeToString()


def probe_feeds() -> dict[str, np.ndarray]:
    return {"x": np.zeros(PROBE_SHAPE, np.float32)}


@dataclass
class Overhead:
    """The measured profiler cost per run of the model and how much of it lay inside node events."""

    cost_ms: float  # O: median profiled run − median plain run (alternating blocks; CPU time), ≥ 0
    inside_share: float  # f: share of the profiler's cost inside node events (probe), in [0, 1]
    per_node_ms: float  # f × O / node executions per run: taken out of each node execution

    @property
    def inside_ms(self) -> float:
        return self.cost_ms * self.inside_share


def inside_share(probe_plain_ms: Sequence[float], probe_profiled_ms: Sequence[float], probe_kernel_ms: float) -> float:
    """``f`` from the probe's runs: (Σ of its nodes' median kernel_time − median plain run) /
    (median profiled run − median plain run), run times in CPU time; clamped to [0, 1], 0 when
    profiling cost nothing measurable."""
    plain = statistics.median(probe_plain_ms)
    cost = statistics.median(probe_profiled_ms) - plain
    if cost <= 0:
        return 0.0
    return min(1.0, max(0.0, (probe_kernel_ms - plain) / cost))


def measure(plain_ms: Sequence[float], profiled_ms: Sequence[float], share: float,
            executions_per_run: float) -> Overhead:
    """The model's :class:`Overhead` from its plain and profiled runs' CPU times (ms) and ``f``."""
    cost = max(0.0, statistics.median(profiled_ms) - statistics.median(plain_ms))
    per_node = cost * share / executions_per_run if executions_per_run > 0 else 0.0
    return Overhead(cost, share, per_node)


def corrected(node_ms: Mapping[str, float], executions: Mapping[str, float],
              per_node_ms: float) -> dict[str, float]:
    """``node_ms`` less ``per_node_ms`` per execution of each node (its executions per run), never below 0."""
    return {n: max(0.0, ms - per_node_ms * executions.get(n, 1.0)) for n, ms in node_ms.items()}


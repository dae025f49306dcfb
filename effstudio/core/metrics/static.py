"""Static per-layer numbers of a loaded model: params, weight bytes, MACs / FLOPs, activation bytes.

``compute_static(loaded)`` counts every layer of the layer graph with the handler for its op
(:data:`~effstudio.core.metrics.flops_onnx.ONNX_HANDLERS`,
:data:`~effstudio.core.metrics.flops_torch.ATEN_HANDLERS`).  A layer that cannot be counted
(no handler, unknown or symbolic shapes) is absent from the ``macs`` / ``flops`` columns and
listed in ``uncounted_ops`` with the reason; it is never shown as 0.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable
from typing import Any

from effstudio.core.dtypes import PARAM_DTYPES, nbytes
from effstudio.core.graph import Layer, LayerGraph, TensorInfo
from effstudio.core.metrics.counting import Count, Handler, OpView, Uncountable
from effstudio.core.metrics.flops_onnx import onnx_handler
from effstudio.core.metrics.flops_torch import aten_handler, flop_counter_check
from effstudio.core.metrics.memory import TensorSizes, output_bytes, peak_activation
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

MACS_NOTE = (
    "1 MAC = 2 FLOPs. MAC ops (conv, gemm/linear/matmul, attention, RNNs) count their "
    "multiply-accumulates; their FLOPs are 2 x MACs plus the elementwise work around the "
    "products: bias adds (1 per output element), attention scale + softmax (6 per score, +1 "
    "with a mask), RNN gate arithmetic. Other ops count FLOPs only: 1 per output element for "
    "arithmetic, comparisons and primitive functions (exp, erf, tanh, sigmoid ...), composite "
    "activations by their formula (GELU 5, SiLU 2, HardSwish 4), softmax 5 per element, "
    "batch norm 2 (folded scale and shift), layer/group/instance norm 5 + 2 affine, RMS norm "
    "3 + 1, reductions 1 per input element, pooling prod(kernel) per output, nearest resize 0. "
    "Shape, copy and indexing ops (Reshape, Transpose, Concat, Slice, Gather, view ...) count 0. "
    "Control flow: If counts its larger branch, Loop its body x a constant trip count."
)
ACTIVATION_NOTE = (
    "Activation bytes of a layer = bytes of its output tensors by dtype. Peak = the largest sum "
    "of live activations walking the layers in order (a tensor lives from its producer to its "
    "last consumer; graph inputs from the start, outputs to the end); weights excluded; views "
    "and reshapes share their input's buffer; no other buffer reuse is assumed."
)
PARAMS_NOTE = ("Per layer: the elements / bytes of the weights it reads (a shared weight shows in each "
               "layer that reads it); totals count every weight once.")


def handler_for(layer: Layer) -> Handler | None:
    if layer.domain in ("aten", "quantized"):  # "quantized": torch.ao's packed ops (same arithmetic)
        return aten_handler(layer.op_type)
    return onnx_handler(layer.domain, layer.op_type)


class _Counter:
    """Counts layers, recursing into control-flow subgraphs."""

    def __init__(self, constant: Callable[[str], Any] | None,
                 node_inputs: Callable[[str], list[str] | None] | None) -> None:
        self.constant = constant
        self.node_inputs = node_inputs
        self._scopes: list[dict[str, TensorInfo]] = []

    def count(self, layer: Layer, tensors: dict[str, TensorInfo] | ChainMap) -> Count:
        handler = handler_for(layer)
        if handler is None:
            raise Uncountable("no FLOP handler for this op")
        self._scopes.append(tensors)  # type: ignore[arg-type]
        try:
            view = OpView(layer, tensors, self.subgraph, self.constant, self.node_inputs)  # type: ignore[arg-type]
            return handler(view)
        except Uncountable:
            raise
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as e:
            raise Uncountable(f"unexpected operands ({type(e).__name__}: {e})") from e
        finally:
            self._scopes.pop()

    def subgraph(self, g: LayerGraph) -> Count:
        """Sum of a nested graph; outer-scope tensors are visible inside it."""
        outer = self._scopes[-1] if self._scopes else {}
        tensors = ChainMap(g.tensors, outer)
        total = Count()
        for lay in g.layers:
            try:
                total = total + self.count(lay, tensors)
            except Uncountable as e:
                raise Uncountable(f"inner {lay.op_type} {lay.name!r}: {e}") from e
        return total


def _onnx_lookups(model: Any) -> tuple[Callable[[str], Any], Callable[[str], list[str] | None]]:
    """Lazy lookups into the ONNX model: the value of a small (scalar) initializer or Constant
    output by name, and a node's positional input names by node name (the loader writes the
    layer names back into the ModelProto)."""
    constants: dict[str, Any] = {}
    node_inputs: dict[str, list[str]] = {}
    built = False

    def build() -> None:
        nonlocal built
        from onnx import numpy_helper

        def visit(g: Any) -> None:
            for init in g.initializer:
                if len(init.dims) == 0 or (len(init.dims) == 1 and init.dims[0] == 1):
                    constants[init.name] = numpy_helper.to_array(init)
            for node in g.node:
                node_inputs[node.name] = list(node.input)
                if node.op_type == "Constant" and node.output:
                    for a in node.attribute:
                        if a.name == "value" and len(a.t.dims) <= 1:
                            constants[node.output[0]] = numpy_helper.to_array(a.t)
                for a in node.attribute:
                    if a.type == a.GRAPH:
                        visit(a.g)
                    for sub in a.graphs:
                        visit(sub)

        visit(model.graph)
        built = True

    def constant(name: str) -> Any:
        if not built:
            build()
        return constants.get(name)

    def inputs_of(layer_name: str) -> list[str] | None:
        if not built:
            build()
        return node_inputs.get(layer_name)

    return constant, inputs_of


def compute_static(loaded: LoadedModel, progress: Progress | None = None, *,
                   flop_counter: bool = True) -> MetricsTable:
    """Params, weight bytes, MACs, FLOPs and activation bytes per layer, with totals.

    ``totals``: params and weight_bytes (shared weights once), macs and flops (of the counted
    layers), peak_activation_bytes (None when some tensor size is unknown; the lower bound is
    then in ``peak_activation_lower_bound``), uncounted_layers, and for torch models
    ``flop_counter_check`` (FlopCounterMode's FLOPs against 2 x our MACs; one fake-tensor
    forward, ~1-3 s on a 100 M-parameter model; ``flop_counter=False`` skips it).
    """
    progress = progress or Progress()
    graph = loaded.graph
    if loaded.onnx_model is not None:
        counter = _Counter(*_onnx_lookups(loaded.onnx_model))
    else:
        counter = _Counter(None, None)
    params: dict[str, float] = {}
    wbytes: dict[str, float] = {}
    macs: dict[str, float] = {}
    flops: dict[str, float] = {}
    act: dict[str, float] = {}
    uncounted: dict[tuple[str, str, str], list[str]] = {}
    n = max(len(graph.layers), 1)
    sizes = TensorSizes(graph.tensors)  # the activation column and the peak share them
    for i, lay in enumerate(graph.layers):
        if i % 200 == 0:
            progress.update(0.8 * i / n, "counting FLOPs and memory")
        if lay.subgraphs:
            params[lay.name] = lay.params
            wbytes[lay.name] = lay.weight_bytes
        else:  # Layer.params and .weight_bytes in one pass over the weights (each name once)
            n_params = n_bytes = 0
            seen: list[str] = []
            for w in lay.weights:
                if w.name not in seen:
                    seen.append(w.name)
                    if w.dtype in PARAM_DTYPES:
                        k = w.numel
                        n_params += k
                        n_bytes += nbytes(w.dtype, k)
            params[lay.name] = n_params
            wbytes[lay.name] = n_bytes
        try:
            c = counter.count(lay, graph.tensors)
            macs[lay.name] = c.macs
            flops[lay.name] = c.flops
        except Uncountable as e:
            uncounted.setdefault((lay.domain, lay.op_type, str(e)), []).append(lay.name)
        b = output_bytes(lay, graph.tensors, sizes)
        if b is not None:
            act[lay.name] = b

    progress.update(0.8, "peak activation memory")
    peak = peak_activation(graph, sizes)
    base = graph.totals()
    totals: dict[str, Any] = {
        "params": base["params"], "weight_bytes": base["weight_bytes"],
        "macs": int(sum(macs.values())), "flops": int(sum(flops.values())),
        "peak_activation_bytes": peak.bytes, "peak_activation_layer": peak.at_layer,
        "uncounted_layers": sum(len(v) for v in uncounted.values()),
    }
    notes = {"macs": MACS_NOTE, "activation_bytes": ACTIVATION_NOTE, "params": PARAMS_NOTE,
             "weight_bytes": PARAMS_NOTE}
    if peak.bytes is None:
        totals["peak_activation_lower_bound"] = peak.lower_bound
        notes["activation_bytes"] += (f" {peak.unknown_tensors} tensor(s) have unknown or symbolic size: "
                                      "the peak is unknown (a lower bound is given).")
    if uncounted:
        notes["macs"] += (f" Totals cover counted layers only; {totals['uncounted_layers']} layer(s) "
                          "uncounted.")
    notes["flops"] = notes["macs"]

    uncounted_ops = [
        {"op_type": op, "domain": dom, "count": len(names), "reason": why, "layers": names[:5]}
        for (dom, op, why), names in sorted(uncounted.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]

    if flop_counter and loaded.torch_module is not None and loaded.example_inputs:
        progress.update(0.85, "cross-checking with torch FlopCounterMode")
        try:
            check = flop_counter_check(loaded, macs)
            totals["flop_counter_check"] = check
            notes["flop_counter_check"] = (
                "torch.utils.flop_counter.FlopCounterMode run on the module (MHA fast path off, math "
                "SDPA, mkldnn off) counts 2 FLOPs per MAC of mm/bmm/addmm/conv/SDPA only, no bias or "
                "elementwise work; ours_mac_flops = 2 x our MACs. A ratio off 1 means a MAC op that "
                "one side does not see (e.g. an op run outside ATen, or an op we could not count).")
        except Exception as e:  # the check is advisory: a module that will not run must not stop profiling
            notes["flop_counter_check"] = f"FlopCounterMode check failed: {type(e).__name__}: {e}"
    progress.update(1.0, "static metrics done")
    return MetricsTable(
        values={"params": params, "weight_bytes": wbytes, "macs": macs, "flops": flops,
                "activation_bytes": act},
        totals=totals, uncounted_ops=uncounted_ops, notes=notes)

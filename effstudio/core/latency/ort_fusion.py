"""Map the nodes onnxruntime actually runs back to the nodes of the model it was given.

onnxruntime rewrites the graph before running it (default optimizations): it fuses nodes
(``node_MatMul_9/MatMulAddFusion`` Gemm between inserted ``gemm_input_reshape[_token_N]`` /
``gemm_output_reshape[_token_N]``, ``node_matmul/MatMulScaleFusion/`` FusedMatMul,
``.../MatmulTransposeFusion/``, ``SkipLayerNormalization[_token_N]`` (Add + LayerNorm),
``node_silu/QuickGeluFusion/``, ``node_select_N/GatherSliceToSplitFusion``, Conv+BatchNorm
folding, Gather+Squeeze, Transposes absorbed into their consumer), constant-folds shape
computations, and on x86 rewrites convolutions into blocked NCHWc kernels that pass
new tensors (``reorder_token_N``) between them, named ``<tensor>_nchwc`` after the original
output tensor, with ``ReorderInput``/``ReorderOutput`` layout conversions at the edges.
Node names are therefore not a reliable key; tensor names are: every original activation
tensor that still exists in the optimized graph is an *anchor*.  A runtime node whose
output is (equivalent to) an anchor covers the original nodes that compute that anchor from
other anchors (a backward walk that stops at anchors, graph inputs and initializers).
Nodes folded into constants and removed no-ops (``Identity``, ``Dropout``) are charged nothing.
Runtime nodes whose outputs are new tensors (the Gemm between its two inserted reshapes)
join the covering node downstream of them.  ``Reorder*``/``Memcpy*`` nodes cover nothing:
they are the runtime's own work.  No library offers this mapping (onnxruntime's profiler
reports only runtime node names), hence this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

RUNTIME_OPS = {"ReorderInput", "ReorderOutput", "MemcpyToHost", "MemcpyFromHost"}
NO_OPS = {"Identity", "Dropout"}  # removed by the optimizer: walked through, never charged
_NCHWC_NAME = re.compile(r"^(?P<tensor>.+)_nchwc(?:_token_\d+)?$")
_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "Tanh", "LeakyRelu", "HardSwish", "Gelu"}
_SUMS = {"Add", "Sum"}


@dataclass
class RuntimeMap:
    """``covers``: runtime node name -> indices of the original nodes it computes (in graph order);
    ``runtime``: runtime nodes that compute no original node (layout reorders, device copies,
    or nodes that could not be placed); ``uncovered``: original node indices no runtime node
    computes (folded into constants or removed)."""

    covers: dict[str, list[int]] = field(default_factory=dict)
    runtime: list[str] = field(default_factory=list)
    uncovered: list[int] = field(default_factory=list)


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return list(graph.node)


def _attr(node: onnx.NodeProto, name: str) -> bool:
    return any(a.name == name for a in node.attribute)


def map_runtime_nodes(original: onnx.GraphProto, optimized: onnx.GraphProto) -> RuntimeMap:
    orig = _nodes(original)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(orig):
        for t in n.output:
            if t:
                producer[t] = i
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)
    init = {t.name for t in original.initializer}
    graph_inputs = {v.name for v in original.input if v.name not in init}
    activations = set(producer) | graph_inputs

    opt = _nodes(optimized)
    # equiv: optimized tensor -> the original tensor holding the same values
    equiv: dict[str, str] = {}
    for n in opt:
        for t in (*n.input, *n.output):
            if t in activations:
                equiv[t] = t
    _propagate_hints(opt, equiv, activations, producer, consumers, orig)
    # tensors the optimizer computed ahead of time (constant folding) are initializers now:
    # the nodes that made them no longer run
    folded = {t.name for t in optimized.initializer} & set(producer)
    anchors = set(equiv.values()) | graph_inputs | folded

    result = RuntimeMap()
    opt_consumers: dict[str, list[int]] = {}
    for j, n in enumerate(opt):
        for t in n.input:
            if t:
                opt_consumers.setdefault(t, []).append(j)
    direct: dict[int, list[int]] = {}
    for j, n in enumerate(opt):
        if n.op_type in RUNTIME_OPS:
            continue
        targets = [equiv[t] for t in n.output if t in equiv and equiv[t] in producer]
        if targets:
            direct[j] = _backward_closure(targets, anchors, producer, orig)

    # nodes with only new outputs join the first covering node downstream of them
    def downstream_cover(j: int, seen: set[int]) -> int | None:
        for t in opt[j].output:
            for k in opt_consumers.get(t, []):
                if k in seen or opt[k].op_type in RUNTIME_OPS:
                    continue
                seen.add(k)
                if k in direct:
                    return k
                found = downstream_cover(k, seen)
                if found is not None:
                    return found
        return None

    covered: set[int] = set()
    for j, n in enumerate(opt):
        if n.op_type in RUNTIME_OPS:
            result.runtime.append(n.name)
            continue
        k = j if j in direct else downstream_cover(j, {j})
        if k is None or not direct[k]:
            result.runtime.append(n.name)
            continue
        result.covers[n.name] = direct[k]
        covered.update(direct[k])
    result.uncovered = [i for i in range(len(orig)) if i not in covered]
    return result


def _backward_closure(targets: Iterable[str], anchors: set[str], producer: dict[str, int],
                      orig: list[onnx.NodeProto]) -> list[int]:
    """Original nodes computing ``targets`` from anchors, graph inputs and initializers."""
    found: set[int] = set()
    seen: set[int] = set()
    stack = [producer[t] for t in targets if t in producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if orig[i].op_type not in NO_OPS:
            found.add(i)
        for t in orig[i].input:
            if t and t in producer and t not in anchors:
                stack.append(producer[t])
    return sorted(found)


def _propagate_hints(opt: list[onnx.NodeProto], equiv: dict[str, str], activations: set[str],
                     producer: dict[str, int], consumers: dict[str, list[int]],
                     orig: list[onnx.NodeProto]) -> None:
    """Extend ``equiv`` to new tensors: through layout reorders, and from NCHWc node names."""

    def follow(t: str, ops: set[str], other: str | None = None) -> str | None:
        cands = [i for i in consumers.get(t, []) if orig[i].op_type in ops
                 and (other is None or other in orig[i].input)]
        return orig[cands[0]].output[0] if len(cands) == 1 and orig[cands[0]].output else None

    changed = True
    while changed:
        changed = False
        for n in opt:
            if n.op_type in ("ReorderInput", "ReorderOutput") and n.input and n.output:
                src, dst = n.input[0], n.output[0]
                if src in equiv and dst not in equiv:
                    equiv[dst] = equiv[src]
                    changed = True
                elif dst in equiv and src not in equiv:
                    equiv[src] = equiv[dst]
                    changed = True
            m = _NCHWC_NAME.match(n.name)
            if m and n.output and n.output[0] not in equiv and m.group("tensor") in activations:
                t: str | None = m.group("tensor")
                # a Sum input (4th) and an activation may have been fused after the node was named
                if len(n.input) > 3 and n.input[3]:
                    t = follow(t, _SUMS, equiv.get(n.input[3])) or follow(t, _SUMS)
                if (t and _attr(n, "activation") and t in producer
                        and orig[producer[t]].op_type not in _ACTIVATIONS):
                    t = follow(t, _ACTIVATIONS) or t
                if t:
                    equiv[n.output[0]] = t
                    changed = True

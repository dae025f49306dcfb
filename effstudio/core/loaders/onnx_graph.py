"""ONNX graph -> :class:`LayerGraph`: one layer per node, weights attached to their consumers.

- Initializers and the outputs of ``Constant`` nodes are *weights* of the nodes that consume
  them (some exporters emit no initializers at all and put every weight in a ``Constant``);
  ``Constant`` nodes are folded away (kept only when their value is a graph output).
- Control-flow nodes (``If``, ``Loop``, ``Scan``) are one layer each; every graph attribute
  becomes a nested :class:`LayerGraph` in ``Layer.subgraphs``, built by the same rules.  Values a
  subgraph reads from the outer scope are added to the control-flow layer's ``inputs``, so the
  layer depends on what its body reads.
- Layers come in topological order (a stable sort: a sorted model keeps its order).
- Names: ``node.name``, or ``{op_type}_{index}`` when empty, made unique across the whole model
  (subgraphs included) with a ``_N`` suffix.  The names are written back into the held
  ModelProto, so onnxruntime's per-node profile reports the same names.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import onnx
from onnx import numpy_helper

from effstudio.core import dtypes
from effstudio.core.graph import Layer, LayerGraph, TensorInfo, Weight
from effstudio.core.loaders.onnx_scope import node_scope
from effstudio.core.progress import Progress

# ops of these domains have schemas onnx / onnxruntime know; anything else is flagged
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
FLAG_CUSTOM_DOMAIN = "custom-domain"
FLAG_LOCAL_FUNCTION = "local-function"  # an op defined by a function inside the model file
_SMALL_ATTR_VALUES = 8  # tensor attributes up to this many elements show their values


class GraphError(Exception):
    """The graph is malformed (a value used but never defined, a cycle)."""


@dataclass
class BuildContext:
    """State shared across the main graph and every subgraph."""

    used_names: set[str] = field(default_factory=set)
    functions: frozenset[tuple[str, str]] = frozenset()
    progress: Progress | None = None
    total_nodes: int = 1
    done_nodes: int = 0
    renamed: int = 0  # nodes whose name in the held ModelProto was changed (empty or duplicate)
    # counts the nodes (``total_nodes``) when the first progress report needs it: a small model
    # (under 200 nodes) never walks its graph for that
    count_total: Callable[[], int] | None = None

    def unique(self, name: str) -> str:
        if name not in self.used_names:
            self.used_names.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self.used_names:
            i += 1
        self.used_names.add(f"{name}_{i}")
        return f"{name}_{i}"

    def tick(self) -> None:
        self.done_nodes += 1
        if self.done_nodes % 200 == 0:
            self.report()

    def report(self) -> None:
        """The progress update every 200th node (``tick``; the build loop counts inline)."""
        if self.progress is None:
            return
        if self.count_total is not None:
            self.total_nodes = max(1, self.count_total())
            self.count_total = None
        self.progress.update(self.done_nodes / self.total_nodes,
                             f"building layers ({self.done_nodes}/{self.total_nodes} nodes)")


class _WeightInfo(NamedTuple):  # (a tuple: built once per initializer, cheaper than a dataclass)
    shape: tuple[int, ...]
    dtype: str


# Hot paths copy a repeated scalar field (``node.input``, ``t.dims``, ``a.ints``) with a slice,
# ``field[:]``: upb's containers have no ``__iter__``, so ``list(field)`` or a ``for`` loop calls
# ``__getitem__`` until it raises IndexError, an error message formatted each time (about 1 µs,
# more than the copy); the slice is one C call.


_GRAPH = onnx.AttributeProto.GRAPH
_GRAPHS = onnx.AttributeProto.GRAPHS


# --- weights -----------------------------------------------------------------------------
def _tensor_weight(t: onnx.TensorProto) -> _WeightInfo:
    return _WeightInfo(tuple(t.dims[:]), dtypes.from_onnx(t.data_type))  # dims are Python ints already


def _constant_weight(node: onnx.NodeProto) -> _WeightInfo | None:
    """Shape and dtype of a Constant node's value (None for an attribute we do not know)."""
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            return _tensor_weight(a.t)
        if a.name == "sparse_value" and a.HasField("sparse_tensor"):
            sp = a.sparse_tensor
            return _WeightInfo(tuple(int(d) for d in sp.dims), dtypes.from_onnx(sp.values.data_type))
        if a.name == "value_float":
            return _WeightInfo((), "float32")
        if a.name == "value_int":
            return _WeightInfo((), "int64")
        if a.name == "value_string":
            return _WeightInfo((), "string")
        if a.name == "value_floats":
            return _WeightInfo((len(a.floats),), "float32")
        if a.name == "value_ints":
            return _WeightInfo((len(a.ints),), "int64")
        if a.name == "value_strings":
            return _WeightInfo((len(a.strings),), "string")
    return None


def _is_constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1


# --- attributes --------------------------------------------------------------------------
def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # JSON has no inf/nan


def _tensor_summary(t: onnx.TensorProto) -> dict[str, Any]:
    out: dict[str, Any] = {"tensor": {"shape": [int(d) for d in t.dims],
                                      "dtype": dtypes.from_onnx(t.data_type)}}
    n = 1
    for d in t.dims:
        n *= int(d)
    if n <= _SMALL_ATTR_VALUES and t.data_location != onnx.TensorProto.EXTERNAL:
        try:
            arr = numpy_helper.to_array(t)
            vals = arr.reshape(-1).tolist()
            json.dumps(vals)
            out["tensor"]["values"] = [_json_float(v) if isinstance(v, float) else v for v in vals]
        except (ValueError, TypeError, RuntimeError):
            pass  # exotic dtypes: the summary keeps shape and dtype only
    return out


_A = onnx.AttributeProto
_SIMPLE_ATTRS: dict[int, Any] = {  # one lookup per attribute: the common types first
    _A.INTS: lambda a: a.ints[:],
    _A.INT: lambda a: a.i,
    _A.FLOAT: lambda a: _json_float(a.f),
    _A.FLOATS: lambda a: [_json_float(v) for v in a.floats[:]],
    _A.STRING: lambda a: a.s.decode("utf-8", errors="replace"),
    _A.STRINGS: lambda a: [s.decode("utf-8", errors="replace") for s in a.strings[:]],
    _A.TENSOR: lambda a: _tensor_summary(a.t),
    _A.TENSORS: lambda a: [_tensor_summary(t) for t in a.tensors],
    _A.SPARSE_TENSOR: lambda a: {"sparse_tensor": {"shape": list(a.sparse_tensor.dims),
                                                   "dtype": dtypes.from_onnx(a.sparse_tensor.values.data_type)}},
    _A.GRAPH: lambda a: {"graph": a.g.name, "nodes": len(a.g.node)},
    _A.GRAPHS: lambda a: [{"graph": g.name, "nodes": len(g.node)} for g in a.graphs],
    _A.TYPE_PROTO: lambda a: str(a.tp).strip(),
}


def attribute_value(a: onnx.AttributeProto) -> Any:
    """A JSON-able view of one attribute (tensors and graphs summarized, not copied)."""
    f = _SIMPLE_ATTRS.get(a.type)
    if f is not None:
        return f(a)
    if a.ref_attr_name:
        return {"ref": a.ref_attr_name}
    return None


# --- structure ---------------------------------------------------------------------------
def _graph_attrs(attrs: Iterable[onnx.AttributeProto]) -> list[tuple[str, onnx.GraphProto]]:
    """The graph-valued attributes among ``attrs``: (name, graph), ``name[i]`` for a list."""
    out = []
    for a in attrs:
        t = a.type
        if t == _GRAPH:
            out.append((a.name, a.g))
        elif t == _GRAPHS:
            out.extend((f"{a.name}[{i}]", g) for i, g in enumerate(a.graphs))
    return out


def _subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    return _graph_attrs(node.attribute)


def outer_references(g: onnx.GraphProto) -> list[str]:
    """Names ``g`` (and its nested subgraphs) reads without defining them, in first-use order."""
    defined = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    defined |= {sp.values.name for sp in g.sparse_initializer}
    for node in g.node:
        defined.update(o for o in node.output if o)
    out: list[str] = []
    seen: set[str] = set()
    for node in g.node:
        reads = [i for i in node.input if i]
        for _, sub in _subgraphs(node):
            reads.extend(outer_references(sub))
        for name in reads:
            if name not in defined and name not in seen:
                seen.add(name)
                out.append(name)
    for vi in g.output:  # an output may pass an outer value straight through
        if vi.name not in defined and vi.name not in seen:
            seen.add(vi.name)
            out.append(vi.name)
    return out


def _topo_order(nodes: list[onnx.NodeProto], outs: list[list[str]], reads: list[list[str]]) -> list[int]:
    """Indices of ``nodes`` (whose non-empty outputs are ``outs``) in a topological order, as
    close to the file's order as possible."""
    producer: dict[str, int] = {}
    for i, os_ in enumerate(outs):
        for o in os_:
            producer[o] = i
    get = producer.get
    for i, rs in enumerate(reads):  # already sorted (the common case): no read made by a later node
        for r in rs:
            p = get(r)
            if p is not None and p > i:
                break
        else:
            continue
        break
    else:
        return list(range(len(nodes)))
    deps = [{producer[r] for r in rs if r in producer and producer[r] != i} for i, rs in enumerate(reads)]
    users: list[list[int]] = [[] for _ in nodes]
    indeg = [len(ds) for ds in deps]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    ready = [i for i, k in enumerate(indeg) if k == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if indeg[i] > 0)
        raise GraphError(f"the graph has a cycle (through node {stuck.name or stuck.op_type!r})")
    return order


def count_nodes(g: onnx.GraphProto) -> int:
    total = len(g.node)
    for n in g.node:
        if n.attribute:  # (testing a repeated field costs less than iterating an empty one)
            total += sum(count_nodes(sub) for _, sub in _subgraphs(n))
    return total


def build_graph(g: onnx.GraphProto, *, infos: dict[str, TensorInfo], outer_weights: dict[str, _WeightInfo],
                outer_values: set[str], ctx: BuildContext,
                inputs: list[TensorInfo] | None = None) -> LayerGraph:
    """One (sub)graph as a LayerGraph.  ``outer_*`` are the weights and values visible from
    enclosing graphs; ``inputs`` overrides the graph's declared inputs (the top graph's).

    Every proto field is read once per node (each read builds new Python objects, the bulk of
    the cost on a small model): one pass collects them, the next builds the layers."""
    from_onnx = dtypes.from_onnx
    weights: dict[str, _WeightInfo] = dict(outer_weights)
    init_names: set[str] = set()
    for t in g.initializer:
        name = t.name
        init_names.add(name)
        weights[name] = _WeightInfo(tuple(t.dims[:]), from_onnx(t.data_type))  # dims are Python ints already
    for sp in g.sparse_initializer:
        weights[sp.values.name] = _WeightInfo(tuple(int(d) for d in sp.dims), from_onnx(sp.values.data_type))
    graph_output_names = {vi.name for vi in g.output}
    # per kept node: the node, its op_type, non-empty outputs, reads (explicit inputs, then what
    # its subgraphs read from outside), attributes and graph attributes
    nodes: list[onnx.NodeProto] = []
    ops: list[str] = []
    outs: list[list[str]] = []
    attr_dicts: list[dict[str, Any]] = []
    subs: list[list[tuple[str, onnx.GraphProto]]] = []
    simple_attrs = _SIMPLE_ATTRS
    for node in g.node:
        op_type = node.op_type
        if op_type == "Constant" and _is_constant(node) and node.output[0] not in graph_output_names:
            info = _constant_weight(node)
            if info is not None:
                weights[node.output[0]] = info
                ctx.tick()
                continue
        nodes.append(node)
        ops.append(op_type)
        os_ = node.output[:]  # (one C-level copy, then filtered only if needed: cheaper than a comprehension)
        outs.append([o for o in os_ if o] if "" in os_ else os_)
        attributes: dict[str, Any] = {}
        node_subs: list[tuple[str, onnx.GraphProto]] = []
        if node.attribute:  # (testing a repeated field costs less than iterating an empty one)
            for a in node.attribute[:]:  # each attribute's type read once: its value, and is it a graph
                t = a.type
                f = simple_attrs.get(t)
                attributes[a.name] = f(a) if f is not None else attribute_value(a)
                if t in (_GRAPH, _GRAPHS):
                    node_subs.extend(_graph_attrs((a,)))
        attr_dicts.append(attributes)
        subs.append(node_subs)

    if inputs is None:
        inputs = [infos.get(vi.name) or TensorInfo(vi.name) for vi in g.input if vi.name not in init_names]
    values = set(outer_values)
    values.update(t.name for t in inputs)
    for os_ in outs:
        values.update(os_)

    reads: list[list[str]] = []
    n_explicit: list[int] = []
    for node, node_subs in zip(nodes, subs, strict=True):
        rs = node.input[:]
        if "" in rs:  # omitted optional inputs
            rs = [i for i in rs if i]
        n_explicit.append(len(rs))
        for _, sub in node_subs:
            rs.extend(outer_references(sub))
        for r in rs:
            if r not in values and r not in weights:
                raise GraphError(f"node {node.name or node.op_type!r} reads {r!r}, which nothing defines "
                                 "(a truncated or broken file?)")
        reads.append(rs)

    layers: list[Layer] = []
    scope_cache: dict[str, str] = {}
    used = ctx.used_names
    for idx in _topo_order(nodes, outs, reads):
        node = nodes[idx]
        op_type = ops[idx]
        node_name, domain = node.name, node.domain
        name = node_name or f"{op_type}_{idx}"
        if name in used:
            name = ctx.unique(name)
        else:
            used.add(name)
        if node_name != name:
            node.name = name  # keep the held ModelProto's names equal to the layer names
            ctx.renamed += 1
        lay_weights: list[Weight] = []
        lay_inputs: list[str] = []
        if op_type == "Constant" and _is_constant(node):  # a Constant kept because its value is a graph output
            info = _constant_weight(node)
            if info is not None:
                lay_weights.append(Weight(node.output[0], info.shape, info.dtype))
        rs = reads[idx]
        explicit = n_explicit[idx]
        if explicit == len(rs):  # no subgraph reads (the common case): every read is explicit
            seen_w: list[str] = []  # (a few names: a list is the cheaper membership test)
            for r in rs:
                w = weights.get(r)
                if w is None:
                    lay_inputs.append(r)  # explicit inputs keep repeats (Add(x, x))
                elif r not in seen_w:
                    seen_w.append(r)
                    lay_weights.append(Weight(r, w.shape, w.dtype))
        else:
            seen_ws: set[str] = set()
            seen_in: set[str] = set()
            for pos, r in enumerate(rs):
                if r in weights:
                    # a weight a subgraph reads belongs to the subgraph's layer, not to this one
                    if pos < explicit and r not in seen_ws:
                        seen_ws.add(r)
                        w = weights[r]
                        lay_weights.append(Weight(r, w.shape, w.dtype))
                elif pos < explicit or r not in seen_in:  # explicit inputs keep repeats (Add(x, x))
                    lay_inputs.append(r)
                seen_in.add(r)
        lay = Layer(name=name, op_type=op_type, scope=node_scope(node, scope_cache), domain=domain,
                    inputs=lay_inputs, outputs=outs[idx], attributes=attr_dicts[idx], weights=lay_weights)
        if domain not in KNOWN_DOMAINS:
            lay.flags.append(FLAG_LOCAL_FUNCTION if (domain, op_type) in ctx.functions else FLAG_CUSTOM_DOMAIN)
        ctx.done_nodes += 1  # ctx.tick(), inline
        if ctx.done_nodes % 200 == 0:
            ctx.report()
        for attr_name, sub in subs[idx]:
            lay.subgraphs[attr_name] = build_graph(sub, infos=infos, outer_weights=weights,
                                                   outer_values=values, ctx=ctx)
        layers.append(lay)

    out = LayerGraph(layers=layers, inputs=list(inputs),
                     outputs=[infos.get(vi.name) or TensorInfo(vi.name) for vi in g.output])
    tensors = out.tensors
    get = infos.get
    for name in _activation_names(out):
        if name not in tensors:  # (a name met again would get an equal entry in the same place)
            info = get(name)
            if info is None:
                info = TensorInfo(name)
            elif info.name != name:
                info = TensorInfo(name, info.shape, info.dtype)
            tensors[name] = info  # (the inferred info itself: nothing changes a TensorInfo after the load)
    for t in out.inputs:
        tensors[t.name] = t
    return out


def _activation_names(g: LayerGraph) -> Iterable[str]:
    for t in g.outputs:
        yield t.name
    for lay in g.layers:
        yield from lay.inputs
        yield from lay.outputs


def mark_shared(graph: LayerGraph) -> None:
    """Mark weights consumed by several layers as shared, subgraph layers included.

    ``LayerGraph.mark_shared_weights`` counts the top-level layers; a weight read both by a
    top-level layer and inside a subgraph (or by two subgraphs) is shared too.
    """
    # one count over every layer, subgraphs included (it gives what mark_shared_weights' count of
    # the top-level layers gives, and more: that pass is not needed first)
    count: dict[str, int] = {}
    all_layers: list[Layer] = []

    def visit(g: LayerGraph) -> None:
        for lay in g.layers:
            all_layers.append(lay)
            ws = lay.weights
            if len(ws) == 1:  # (the common case: no set needed)
                name = ws[0].name
                count[name] = count.get(name, 0) + 1
            elif ws:
                for w in {w.name for w in ws}:
                    count[w] = count.get(w, 0) + 1
            if lay.subgraphs:
                for sub in lay.subgraphs.values():
                    visit(sub)

    visit(graph)
    for lay in all_layers:
        for w in lay.weights:
            w.shared = count[w.name] > 1

"""Input shapes and activation shapes of an ONNX model.

Shape inference runs on a *light copy* of the model: the graph structure with the large
weights' data left out (they become typed graph inputs, declared with their shape and dtype),
while small tensors keep their data so that ``Reshape``/``Expand``/``Slice`` shape arguments
still propagate (``data_prop=True``).  ``onnx.shape_inference.infer_shapes`` on the full model
serializes and re-parses every weight twice (seconds for BERT-base); the light copy is a few
hundred KB whatever the model's size.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from typing import Any

import onnx

from effstudio.core import dtypes
from effstudio.core.errors import ModelLoadError
from effstudio.core.graph import Dim, Shape, TensorInfo
from effstudio.core.inputs import InputSpec

# tensors up to this many bytes keep their data in the light copy (shape constants, scalars);
# integer tensors (indices, shapes) up to INT_DATA_BYTES.
SMALL_DATA_BYTES = 4096
INT_DATA_BYTES = 64 * 1024
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
              onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16,
              onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}


# --- types -------------------------------------------------------------------------------
def type_dtype(tp: onnx.TypeProto) -> str | None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return dtypes.from_onnx(tp.tensor_type.elem_type) if tp.tensor_type.elem_type else None
    if kind == "sparse_tensor_type":
        return dtypes.from_onnx(tp.sparse_tensor_type.elem_type)
    if kind == "sequence_type":
        inner = type_dtype(tp.sequence_type.elem_type)
        return f"sequence<{inner}>" if inner else "sequence"
    if kind == "optional_type":
        inner = type_dtype(tp.optional_type.elem_type)
        return f"optional<{inner}>" if inner else "optional"
    if kind == "map_type":
        return "map"
    return None


def type_shape(tp: onnx.TypeProto) -> Shape | None:
    kind = tp.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return None
    tt = tp.tensor_type if kind == "tensor_type" else tp.sparse_tensor_type
    if not tt.HasField("shape"):
        return None  # rank unknown
    out: list[Dim] = []
    for d in tt.shape.dim:
        if d.WhichOneof("value") == "dim_value":
            v = d.dim_value
            out.append(v if v >= 0 else "?")  # -1: "dynamic", as some old exporters write
        else:
            out.append(d.dim_param or "?")  # a dynamic dim without a name: "?"
    return tuple(out)


_TENSOR_TYPE = "tensor_type"


def value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    return _value_info(vi, vi.name)


def _value_info(vi: onnx.ValueInfoProto, name: str) -> TensorInfo:
    tp = vi.type
    if tp.WhichOneof("value") != _TENSOR_TYPE:
        return TensorInfo(name, type_shape(tp), type_dtype(tp))
    return _tensor_info(tp.tensor_type, name)


def _tensor_info(tt: onnx.TypeProto.Tensor, name: str) -> TensorInfo:
    """The common case of ``_value_info``, a tensor: what type_shape and type_dtype give, with
    each field read once."""
    elem = tt.elem_type
    dtype = (_DTYPE_NAMES.get(elem) or dtypes.from_onnx(elem)) if elem else None
    if not tt.HasField("shape"):
        return TensorInfo(name, None, dtype)
    dims = tt.shape.dim
    values = [d.dim_value for d in dims[:]]  # (slices: see onnx_graph, _WeightInfo)
    if not values or min(values) > 0:  # every dim static (only a set dim_value is nonzero): the usual case
        return TensorInfo(name, tuple(values), dtype)
    out: list[Dim] = []
    for d, v in zip(dims, values, strict=True):
        if v > 0:
            out.append(v)
        elif v < 0:
            out.append("?")  # -1: "dynamic", as some old exporters write
        else:
            out.append(d.dim_param or (0 if d.HasField("dim_value") else "?"))
    return TensorInfo(name, tuple(out), dtype)


_DTYPE_NAMES = {i: dtypes.from_onnx(i) for i in range(1, 32) if not dtypes.from_onnx(i).startswith("onnx_type_")}


def tensor_nbytes(t: onnx.TensorProto) -> int:
    return dtypes.nbytes(dtypes.from_onnx(t.data_type), math.prod(t.dims[:]))  # dims: Python ints


# --- inputs --------------------------------------------------------------------------------
def graph_inputs(graph: onnx.GraphProto) -> list[TensorInfo]:
    """The model's real inputs (initializers listed as inputs, as IR < 4 requires, excluded)."""
    init = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return [value_info(vi) for vi in graph.input if vi.name not in init]


def resolve_inputs(path: str, declared: list[TensorInfo], specs: dict[str, InputSpec]) -> list[TensorInfo]:
    """Apply ``--input`` specs to the model's declared inputs.

    A given shape must have the model's rank and agree with its static dims; a given dtype must
    be the model's.  Without a spec, a symbolic leading (batch) dim becomes 1; other symbolic
    dims stay symbolic.
    """
    names = [t.name for t in declared]
    unknown = [n for n in specs if n not in names]
    if unknown:
        raise ModelLoadError(path, f"--input {unknown[0]}: the model has no input named {unknown[0]!r}; "
                             f"its inputs are: {', '.join(names) or '(none)'}")
    out = []
    for t in declared:
        spec = specs.get(t.name)
        shape = t.shape
        if spec is not None and spec.shape is not None:
            given = tuple(int(d) for d in spec.shape)
            if shape is not None:
                if len(given) != len(shape):
                    raise ModelLoadError(path, f"--input {t.name}: {len(given)} dims given, the model's "
                                         f"input has {len(shape)} ({_fmt(shape)})")
                for i, (g, m) in enumerate(zip(given, shape, strict=True)):
                    if isinstance(m, int) and g != m:
                        raise ModelLoadError(path, f"--input {t.name}: dim {i} is fixed at {m} by the model "
                                             f"({_fmt(shape)}), {g} given")
            shape = given
        elif shape and isinstance(shape[0], str):
            shape = (1, *shape[1:])
        if spec is not None and spec.dtype is not None and t.dtype is not None and spec.dtype != t.dtype:
            raise ModelLoadError(path, f"--input {t.name}: the model's input is {t.dtype}, "
                                 f"{spec.dtype} given")
        out.append(TensorInfo(t.name, shape, t.dtype))
    return out


def _fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


# --- the light copy ----------------------------------------------------------------------
def _keep_data(t: onnx.TensorProto) -> bool:
    nb = tensor_nbytes(t)
    return nb <= SMALL_DATA_BYTES or (t.data_type in _INT_TYPES and nb <= INT_DATA_BYTES)


def _typed(name: str, t: onnx.TensorProto) -> onnx.ValueInfoProto:
    """What ``onnx.helper.make_tensor_value_info(name, t.data_type, t.dims)`` gives, built
    directly (the helper's checks cost more than the copy itself)."""
    vi = onnx.ValueInfoProto(name=name)
    tt = vi.type.tensor_type
    tt.elem_type = t.data_type
    tt.shape.SetInParent()  # a scalar has a shape, of rank 0
    dims = tt.shape.dim
    for d in t.dims:
        dims.add(dim_value=d)
    return vi


def symbol_values(declared: list[TensorInfo], resolved: list[TensorInfo]) -> dict[str, int]:
    """Symbolic dims the resolved inputs made concrete: ``{"batch": 1, "seq": 128}``."""
    out: dict[str, int] = {}
    for a, b in zip(declared, resolved, strict=True):
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            continue
        for da, db in zip(a.shape, b.shape, strict=True):
            if isinstance(da, str) and da != "?" and isinstance(db, int):
                out.setdefault(da, db)
    return out


_DIM_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
            ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}
_DIM_CALLS = {"Min": min, "Max": max, "min": min, "max": max}


def eval_dim(expr: str, symbols: dict[str, int]) -> int | None:
    """A symbolic dim that exporters write as an expression of input dims (torch: ``Min(512, seq)``,
    ``seq - 1``, ``2*seq``), evaluated with the known ``symbols``; None when it is anything else."""
    if not symbols or not any(ch in expr for ch in "(+-*/%"):
        return None

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.Name) and n.id in symbols:
            return symbols[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _DIM_OPS:
            return _DIM_OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _DIM_CALLS \
                and n.args and not n.keywords:
            return _DIM_CALLS[n.func.id](ev(a) for a in n.args)
        raise ValueError(expr)

    try:
        value = ev(ast.parse(expr, mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, RecursionError):
        return None
    return value if value >= 0 else None


def _substitute(vi: onnx.ValueInfoProto, symbols: dict[str, int]) -> onnx.ValueInfoProto:
    if not vi.type.HasField("tensor_type"):
        return vi
    dims = vi.type.tensor_type.shape.dim
    if not symbols:
        for d in dims:
            if d.dim_value < 0:  # 0 when dim_param is set instead
                d.Clear()  # -1 for "dynamic" (old exporters): unknown, so inference may fill it
        return vi
    for d in dims:
        kind = d.WhichOneof("value")
        if kind == "dim_param":
            param = d.dim_param
            if param in symbols:
                d.dim_value = symbols[param]  # sets the oneof: dim_param is cleared
            elif param and (v := eval_dim(param, symbols)) is not None:
                d.dim_value = v
        elif kind == "dim_value" and d.dim_value < 0:
            d.Clear()  # -1 for "dynamic" (old exporters): unknown, so inference may fill it
    return vi


_GRAPH = onnx.AttributeProto.GRAPH
_GRAPHS = onnx.AttributeProto.GRAPHS


def _light_graph(src: onnx.GraphProto, dst: onnx.GraphProto, hoisted: list[onnx.ValueInfoProto],
                 symbols: dict[str, int] | None) -> None:
    """Copy ``src`` into ``dst`` without large tensor data.  Large initializers and large
    ``Constant`` values become typed values declared in ``hoisted`` (inputs of the top graph;
    subgraphs see the outer scope, so this is valid at any depth)."""
    dst.name = src.name
    for t in src.initializer:
        if _keep_data(t):
            dst.initializer.add().CopyFrom(t)
        else:
            hoisted.append(_typed(t.name, t))
    if src.sparse_initializer:
        for sp in src.sparse_initializer:
            vi = onnx.helper.make_tensor_value_info(sp.values.name, sp.values.data_type, list(sp.dims))
            hoisted.append(vi)
    plain: list[onnx.NodeProto] = []  # copied in one call each run
    for node in src.node:
        attrs = node.attribute
        if not attrs:
            plain.append(node)
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            big = [a for a in attrs if a.name == "value" and a.HasField("t") and not _keep_data(a.t)]
            if big:
                dst.node.extend(plain)
                plain.clear()
                hoisted.append(_typed(node.output[0], big[0].t))
                continue
        for a in attrs:
            t = a.type
            if t in (_GRAPH, _GRAPHS):
                break
        else:
            plain.append(node)
            continue
        dst.node.extend(plain)
        plain.clear()
        n = dst.node.add()
        n.input.extend(node.input)
        n.output.extend(node.output)
        n.name = node.name
        n.op_type = node.op_type
        n.domain = node.domain
        if node.overload:
            n.overload = node.overload
        for a in node.attribute:
            if a.type == _GRAPH:
                na = n.attribute.add(name=a.name, type=a.type)
                _light_graph(a.g, na.g, hoisted, symbols)
            elif a.type == _GRAPHS:
                na = n.attribute.add(name=a.name, type=a.type)
                for g in a.graphs:
                    _light_graph(g, na.graphs.add(), hoisted, symbols)
            else:
                n.attribute.add().CopyFrom(a)
    dst.node.extend(plain)
    for n in dst.node:  # inference needs neither: torch's stack traces there are most of the bytes
        n.ClearField("metadata_props")
        n.ClearField("doc_string")
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    if symbols is not None:  # None: the caller found that substituting changes nothing
        for vi in (*dst.input, *dst.output, *dst.value_info):
            _substitute(vi, symbols)


# a negative int64 ``dim_value`` (field 1, varint) as protobuf writes it: tag 0x08, then ten
# bytes, the last 0x01.  Bytes without it hold no negative dim (they may match elsewhere too).
_NEGATIVE_DIM = re.compile(rb"\x08[\x80-\xff]{9}\x01")


def _light_and_bytes(model: onnx.ModelProto, inputs: list[TensorInfo], symbols: dict[str, int],
                     light: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, bytes | None]:
    """:func:`light_copy` and, when it was serialized on the way, its bytes.

    Without ``symbols`` the substitution only clears negative dims (``_substitute``), which
    most models have none of: the copy is made without it (or is ``light``, made so),
    serialized (inference needs the bytes anyway) and made again with it only when the bytes
    show a negative dim."""
    if symbols:
        return light if light is not None else light_copy(model, inputs, symbols), None
    light = light if light is not None else _light_copy(model, inputs, None)
    data = light.SerializeToString()
    if _NEGATIVE_DIM.search(data) is None:
        return light, data
    return light_copy(model, inputs, symbols), None


def light_copy(model: onnx.ModelProto, inputs: list[TensorInfo], symbols: dict[str, int]) -> onnx.ModelProto:
    """The model's structure without large weight data, its inputs typed with ``inputs``' shapes.

    Stored shapes (``value_info``, outputs) are kept, with the symbolic dims that ``inputs``
    made concrete (``symbols``) replaced by their values: exporters such as torch's name dims
    consistently, and their shapes survive where onnx's inference gives up (``Slice`` with a
    symbolic end, say).
    """
    return _light_copy(model, inputs, symbols)


def _light_copy(model: onnx.ModelProto, inputs: list[TensorInfo], symbols: dict[str, int] | None) -> onnx.ModelProto:
    light = onnx.ModelProto(ir_version=max(model.ir_version, 4), producer_name=model.producer_name)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    hoisted: list[onnx.ValueInfoProto] = []
    g = light.graph
    _light_graph(model.graph, g, hoisted, symbols)
    by_name = {t.name: t for t in inputs}
    declared = {vi.name for vi in g.input}
    for vi in g.input:
        t = by_name.get(vi.name)
        if t is not None and t.shape is not None and vi.type.HasField("tensor_type"):
            _set_shape(vi, t.shape)
    g.input.extend(vi for vi in hoisted if vi.name not in declared)
    return light


def _set_shape(vi: onnx.ValueInfoProto, dims: Shape) -> None:
    """Replace the tensor shape of ``vi`` by ``dims`` (an input's resolved shape)."""
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d


_warmed = False


def warm_up() -> None:
    """Run onnx's shape inference once, on a one-node model.

    Its first call in a process builds onnx's operator schema tables: ~20 ms in C++ holding the
    GIL (on BERT-base that first call took 28 ms where later ones took 7).  An app calls this in
    a background thread while it idles, so that opening a model, with a window to keep
    responsive, does not pay it.
    """
    global _warmed
    if _warmed:
        return
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm-up", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    _warmed = True


def _stored_shapes_complete(g: onnx.GraphProto) -> bool:
    """Every value the graph's nodes make has a stored, fully static tensor shape, and no node
    holds a subgraph.  (A stored dim of -1 is not static: it fails the check, so the light copy
    made without the substitution of negative dims is enough to decide.)"""
    static: set[str] = set()
    for vi in (*g.value_info, *g.output):
        tp = vi.type
        if tp.WhichOneof("value") != _TENSOR_TYPE or not tp.tensor_type.HasField("shape"):
            continue
        dims = tp.tensor_type.shape.dim
        if all(d.dim_value > 0 for d in dims):
            static.add(vi.name)
    for node in g.node:
        if node.attribute and any(a.type in (_GRAPH, _GRAPHS) for a in node.attribute):
            return False
        for o in node.output:
            if o and o not in static:
                return False
    return True


def _stored_infos(model: onnx.ModelProto, inputs: list[TensorInfo]) -> dict[str, TensorInfo] | None:
    """The infos of the values the layer graph looks up (the graph's inputs and outputs and what
    its nodes make; weights are read from their tensors) as ``collect_infos(_light_copy(model,
    inputs, None))`` gives them, when ``_stored_shapes_complete`` holds for that copy; read from
    the model itself.  None when it does not hold.

    Exporters such as torch's dynamo store a static shape for every value: then onnx's inference
    could add nothing, and the light copy is not needed at all (making it copies every node with
    its metadata, torch's stack traces included: it was most of the load time of MobileNetV2).
    Each step below is what the light copy would do: the inputs take the resolved shapes, the
    large initializers and ``Constant`` values are typed values; stored shapes are as they are.
    (torch also stores a shape for every weight: those, never looked up, are not converted.)"""
    g = model.graph
    if g.sparse_initializer:
        return None  # (rare: the light copy handles them)
    # the value infos, read once (each read of a repeated field makes new Python objects)
    outputs = g.output[:]
    value_infos = [*g.value_info[:], *outputs]
    stored = {vi.name for vi in value_infos}
    made: list[str] = []  # what the (light copy's) nodes make: each needs a static stored shape
    big_constants: list[tuple[str, onnx.TensorProto]] = []
    for node in g.node:
        attrs = node.attribute
        if attrs:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                big = [a for a in attrs if a.name == "value" and a.HasField("t") and not _keep_data(a.t)]
                if big:  # not a node of the light copy: a typed value
                    big_constants.append((node.output[0], big[0].t))
                    continue
            for a in attrs[:]:
                if a.type in (_GRAPH, _GRAPHS):
                    return None
        for o in node.output[:]:
            if o:
                if o not in stored:  # (the usual way out for a model without stored shapes: early)
                    return None
                made.append(o)

    out: dict[str, TensorInfo] = {}
    by_name = {t.name: t for t in inputs}
    declared: set[str] = set()
    for vi in g.input:
        name = vi.name
        declared.add(name)
        if vi.HasField("type"):
            t = by_name.get(name)
            if t is not None and t.shape is not None and vi.type.HasField("tensor_type"):
                typed = onnx.ValueInfoProto()
                typed.CopyFrom(vi)
                _set_shape(typed, t.shape)
                vi = typed
            out[name] = _value_info(vi, name)
    needed = declared.union(made, (vi.name for vi in outputs))
    hoisted = [(t.name, t) for t in g.initializer if t.name in needed]  # (an output may be a weight)
    for name, t in (*hoisted, *big_constants):  # what _value_info gives for _typed(name, t)
        if name in needed and name not in declared and not _keep_data(t):
            elem = t.data_type
            dtype = (_DTYPE_NAMES.get(elem) or dtypes.from_onnx(elem)) if elem else None
            out[name] = TensorInfo(name, tuple(d if d >= 0 else "?" for d in t.dims[:]), dtype)
    static: set[str] = set()  # names with a stored tensor shape of static dims (> 0)
    for vi in value_infos:
        name = vi.name
        if name in needed and vi.HasField("type"):
            tp = vi.type
            if tp.WhichOneof("value") == _TENSOR_TYPE:
                info = out[name] = _tensor_info(tp.tensor_type, name)
                shape = info.shape
                if shape is not None and all(type(d) is int and d > 0 for d in shape):
                    static.add(name)
            else:
                out[name] = _value_info(vi, name)
    return out if static.issuperset(made) else None


def collect_infos(model: onnx.ModelProto, known: dict[str, TensorInfo] | None = None) -> dict[str, TensorInfo]:
    """Name -> TensorInfo of every typed value in the model, subgraphs included (those in
    ``known`` taken from it, not converted again)."""
    out: dict[str, TensorInfo] = {}
    known = known or {}

    def visit(g: onnx.GraphProto) -> None:
        for vi in (*g.input, *g.value_info, *g.output):
            if vi.HasField("type"):
                name = vi.name
                t = known.get(name) if known else None
                out[name] = t if t is not None else _value_info(vi, name)
        for node in g.node:
            if node.attribute:
                for a in node.attribute:
                    t = a.type
                    if t == _GRAPH:
                        visit(a.g)
                    elif t == _GRAPHS:
                        for sub in a.graphs:
                            visit(sub)

    visit(model.graph)
    return out


def _known(t: TensorInfo | None) -> int:
    """How much of a shape is known: -1 none, else 1 + the number of static dims."""
    if t is None or t.shape is None:
        return -1
    return 1 + sum(isinstance(d, int) for d in t.shape)


_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _stuck_nodes(g: onnx.GraphProto, infos: dict[str, TensorInfo]) -> list[str]:
    """Main-graph nodes of standard ops whose input shapes are all known but an output's is not:
    where onnx's inference gave up (typically a Reshape whose target shape is computed).

    onnxruntime's inference costs seconds (sympy's import alone) and rarely helps with what
    follows control flow or custom ops, so it runs only for these.
    """
    def unknown(name: str) -> bool:
        t = infos.get(name)
        return t is None or t.shape is None

    stuck = []
    for node in g.node:
        for o in node.output:  # first the outputs: all known, the common case, ends it here
            if o and unknown(o):
                break
        else:
            continue
        if node.op_type in _CONTROL_FLOW or node.domain not in _STANDARD_DOMAINS:
            continue
        if not any(unknown(i) for i in node.input if i):
            stuck.append(node.name or node.op_type)
    return stuck


def _symbolic_pass(light: onnx.ModelProto, infos: dict[str, TensorInfo]) -> None:
    """Fill shapes onnx's inference left unknown with onnxruntime's symbolic shape inference.

    onnx's data propagation stops at chains such as Shape -> Slice -> Concat -> Reshape that
    PaddlePaddle and TF exporters emit; onnxruntime's (sympy-based) inference follows them.  It is
    slower (Python, per node), so it only runs when something is left unknown.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # an onnxruntime build without its tools
        return
    try:
        out = SymbolicShapeInference.infer_shapes(light, auto_merge=True, guess_output_rank=False)
    except Exception:  # it raises on ops it does not know; onnx's shapes stand then
        return
    if out is None:
        return
    for name, t in collect_infos(out).items():
        if _known(t) > _known(infos.get(name)):
            infos[name] = t


def infer_tensor_infos(model: onnx.ModelProto, inputs: list[TensorInfo], symbols: dict[str, int],
                       feeds: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                       external_folder: str | None = None) -> tuple[dict[str, TensorInfo], str | None]:
    """Shapes and dtypes of every value, inferred from ``inputs``.

    With ``feeds`` (example data for every input, all shapes concrete; or a function making it,
    called only when a run is needed), shapes that static
    inference leaves unknown or symbolic are taken from one onnxruntime run on them (see
    ``onnx_run_shapes``; ``external_folder``: where weights not yet read into ``model`` lie).
    Returns the infos and, when inference failed, why (the declared ``value_info`` is used then).
    """
    # onnx's inference keeps every stored shape, so where every value has a static one it could
    # add nothing; skipping it saves its C++ pass, which holds the GIL throughout (24-46 ms on
    # BERT-base: a stall of the window that opens the model)
    if not symbols:
        stored = _stored_infos(model, inputs)
        if stored is not None:
            return stored, None
        light = _light_copy(model, inputs, None)
    else:
        light = light_copy(model, inputs, symbols)
        if _stored_shapes_complete(light.graph):
            return collect_infos(light), None
    light, data = _light_and_bytes(model, inputs, symbols, light)
    found: dict[str, TensorInfo] = {}
    problem: str | None = None
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(light if data is None else data, check_type=False,
                                                         strict_mode=False, data_prop=data_prop)
        except Exception as e:  # onnx raises several kinds (InferenceError, RuntimeError, ...)
            problem = str(e).splitlines()[0] if str(e) else type(e).__name__
            continue
        found = collect_infos(inferred)
        problem = None
        break
    # onnx's inference keeps every stored value_info (refined where it can), so ``found`` holds
    # the stored shapes too; without it, the stored shapes are all there is
    infos = found if problem is None else collect_infos(light)
    from effstudio.core.loaders.onnx_run_shapes import fill_shapes_by_running, needs_run

    if not needs_run(model.graph, infos):
        return infos, problem  # every value's shape is known and static: nothing left to find
    if feeds is not None:
        run_problem = fill_shapes_by_running(model, feeds, infos, external_folder)
        if run_problem and problem is None:
            problem = f"running the model on example inputs to find shapes failed: {run_problem}"
    if _stuck_nodes(light.graph, infos):
        _symbolic_pass(light, infos)
    return infos, problem

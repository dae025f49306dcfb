"""Activation shapes by running the model once, where static inference left them unknown.

onnx's shape inference (and onnxruntime's symbolic one) give up on chains that real exporters
emit: ``Shape -> Slice -> Cast -> Concat -> Reshape`` (PaddlePaddle), the legacy torch exporter's
dynamic-axes graphs (every dim after the embedding becomes ``unk__N`` even with concrete
inputs), ``Pad`` with computed pads (an STFT front end).  When every model input has a concrete
shape, one onnxruntime run on the example inputs gives the exact shapes instead: the unknown
tensors are added as graph outputs of a throw-away copy and read back.

``If`` branches and ``Loop`` bodies are run as standalone models fed with the outer values they
read (taken from the run, the feeds or the initializers): both branches are tried, a branch that
fails on this data is skipped; a Loop body runs its first iteration on the initial carried
values; nesting recurses.  ``Scan`` bodies are left to static inference.
Shapes found this way are those of the example data (data-dependent shapes, e.g. ``NonZero``,
are one sample).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from effstudio.core.graph import TensorInfo

_PROTO_LIMIT = 1_800_000_000  # protobuf refuses to serialize >= 2 GiB: no run then
_MAX_DEPTH = 4


def is_unknown(t: TensorInfo | None) -> bool:
    return t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape)


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _outer_refs(g: onnx.GraphProto) -> list[str]:
    """Names a (sub)graph reads from its enclosing scopes, in first-use order."""
    defined = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    defined |= {s.values.name for s in g.sparse_initializer}
    out: list[str] = []
    for node in g.node:
        reads = [i for i in node.input if i]
        for sub in _subgraphs(node):
            reads += _outer_refs(sub)
        for name in reads:
            if name not in defined and name not in out:
                out.append(name)
        defined.update(o for o in node.output if o)
    return out


def needs_run(g: onnx.GraphProto, infos: dict[str, TensorInfo]) -> bool:
    """Whether some value ``g`` (or a subgraph) defines has an unknown or symbolic shape."""
    get = infos.get
    for node in g.node:
        for o in node.output:
            if o:
                t = get(o)
                if t is None or t.shape is None:
                    return True
                for d in t.shape:  # (a loop costs less than all() on a generator, per output)
                    if not isinstance(d, int):
                        return True
        if node.attribute:  # (testing a repeated field costs less than iterating an empty one)
            for sub in _subgraphs(node):
                if needs_run(sub, infos):
                    return True
    return False


def _record(infos: dict[str, TensorInfo], name: str, value: object) -> None:
    if isinstance(value, np.ndarray):
        old = infos.get(name)
        dt = old.dtype if old is not None and old.dtype else str(value.dtype)
        infos[name] = TensorInfo(name, tuple(int(d) for d in value.shape), dt)


def _small_init(t: onnx.TensorProto | None) -> np.ndarray | None:
    """An initializer's value when it is held in memory (not left in an external-data file)."""
    if t is None or onnx.external_data_helper.uses_external_data(t):
        return None
    return numpy_helper.to_array(t)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str],
         folder: str | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    declared = {o.name for o in model.graph.output}
    extra = [onnx.ValueInfoProto(name=n) for n in outputs if n not in declared]
    model.graph.output.extend(extra)
    try:
        data = model.SerializeToString()
    finally:
        del model.graph.output[len(model.graph.output) - len(extra):]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    if folder:  # weights left in their external files: onnxruntime reads them there (GIL released)
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values, strict=True))


def _standalone(model: onnx.ModelProto, sub: onnx.GraphProto, own: dict[str, np.ndarray], refs: list[str],
                values: dict[str, np.ndarray], inits: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A subgraph as a model: its own inputs typed from ``own`` (a Loop body's iteration number,
    condition and carried values), the outer values it reads as further inputs (initializers
    copied in)."""
    g = onnx.GraphProto()
    g.CopyFrom(sub)
    del g.input[:]

    def typed(name: str, v: np.ndarray) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                                  list(v.shape))

    g.input.extend(typed(vi.name, own[vi.name]) for vi in sub.input)
    for name in refs:
        if name in inits:
            g.initializer.add().CopyFrom(inits[name])
        else:
            g.input.append(typed(name, values[name]))
    m = onnx.ModelProto(ir_version=model.ir_version, producer_name="effstudio-shapes")
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.CopyFrom(g)
    return m


def _run_subgraph(model: onnx.ModelProto, sub: onnx.GraphProto, own: dict[str, np.ndarray],
                  values: dict[str, np.ndarray], inits: dict[str, onnx.TensorProto],
                  infos: dict[str, TensorInfo], depth: int, folder: str | None = None) -> None:
    """Fill the shapes of ``sub`` (and its own subgraphs) by running it standalone; a subgraph
    that this data does not let run (the other branch of an If, say) is skipped."""
    if not needs_run(sub, infos) and not any(is_unknown(infos.get(n)) for n in own):
        return
    refs = _outer_refs(sub)
    if any(r not in values and r not in inits for r in refs):
        return  # an outer value the main run could not give
    try:
        standalone = _standalone(model, sub, own, refs, values, inits)
    except (KeyError, ValueError, TypeError):
        return
    for name, v in own.items():
        if is_unknown(infos.get(name)):
            _record(infos, name, v)
    feeds = {**own, **{r: values[r] for r in refs if r in values and r not in inits}}
    _fill(standalone, feeds, infos, {}, depth + 1, [], folder)


def _fill(model: onnx.ModelProto, feeds: dict[str, np.ndarray], infos: dict[str, TensorInfo],
          inits: dict[str, onnx.TensorProto], depth: int, problems: list[str], folder: str | None = None) -> None:
    g = model.graph
    inits = {**inits, **{t.name: t for t in g.initializer}}
    graph_inputs = {vi.name for vi in g.input}
    unknown = [o for node in g.node for o in node.output if o and is_unknown(infos.get(o))]
    nested = [n for n in g.node if n.op_type in ("If", "Loop") and n.domain in ("", "ai.onnx")
              and any(needs_run(sub, infos) for sub in _subgraphs(n))] if depth < _MAX_DEPTH else []
    # what the nested graphs read from here: If's condition, Loop's carried initial values, outer refs
    reads = [r for n in nested for r in (*n.input, *(x for sub in _subgraphs(n) for x in _outer_refs(sub))) if r]
    wanted = list(dict.fromkeys(unknown + [r for r in reads if r not in graph_inputs and r not in inits]))
    values: dict[str, np.ndarray] = dict(feeds)
    if wanted:
        try:
            values.update(_run(model, feeds, wanted, folder))
        except Exception as e:  # onnxruntime refuses the model or fails on this data
            problems.append(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    for name in unknown:
        if name in values:
            _record(infos, name, values[name])
    for node in nested:
        if node.op_type == "If":
            cond = values.get(node.input[0])
            if cond is None and node.input[0] in inits:
                cond = numpy_helper.to_array(inits[node.input[0]])
            branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
            order = ["then_branch", "else_branch"]
            if cond is not None and cond.size == 1 and not bool(cond.reshape(())):
                order.reverse()  # the branch this data takes first
            for key in order:
                if key in branches:
                    _run_subgraph(model, branches[key], {}, values, inits, infos, depth, folder)
        else:  # Loop: the first iteration (carried shapes are the initial values')
            body = next((a.g for a in node.attribute if a.name == "body"), None)
            carried = [values.get(c) if c in values else _small_init(inits.get(c)) for c in node.input[2:]]
            if body is None or len(body.input) != 2 + len(carried) or any(c is None for c in carried):
                continue
            own = {body.input[0].name: np.array(0, dtype=np.int64), body.input[1].name: np.array(True)}
            own.update({vi.name: c for vi, c in zip(body.input[2:], carried, strict=True)})
            _run_subgraph(model, body, own, values, inits, infos, depth, folder)


def fill_shapes_by_running(model: onnx.ModelProto,
                           feeds: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray]],
                           infos: dict[str, TensorInfo], external_folder: str | None = None) -> str | None:
    """Replace unknown / symbolic shapes in ``infos`` with those of one run on ``feeds`` (or on
    ``feeds()``, made only when a run is needed).

    Returns why the run of the main graph failed (``None`` when it ran or was not needed);
    the static shapes stand for whatever could not be run.  ``external_folder``: where tensors
    still stored as external data (not read into ``model``) are; onnxruntime reads them there.
    """
    if not needs_run(model.graph, infos) or model.ByteSize() >= _PROTO_LIMIT:
        return None
    if callable(feeds):
        feeds = feeds()
    problems: list[str] = []
    _fill(model, feeds, infos, {}, 0, problems, external_folder)
    return problems[0] if problems else None

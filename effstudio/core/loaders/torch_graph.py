"""A torch module -> :class:`~effstudio.core.graph.LayerGraph`, through ``torch.export``.

``torch.export`` gives one flat FX graph of ATen ops (the default, non-decomposed IR keeps
``conv2d``, ``linear``, ``scaled_dot_product_attention``, ``lstm`` …), with each node's
module path (``nn_module_stack``), its output shape and dtype (``meta["val"]``) and a
signature naming which placeholders are parameters, buffers or constants.  This module
turns that into the layer graph:

- one :class:`Layer` per ``call_function`` node; ``operator.getitem`` nodes are folded into
  their producer (its ``outputs`` are the getitem results); symbolic-size bookkeeping
  (``sym_size``, ``_assert_*``, Python arithmetic on sizes) is dropped;
- ``op_type`` is the overload-packet name (``conv2d``), ``domain`` the op namespace (``aten``);
- ``scope`` is the innermost module path; a module whose forward made exactly one layer
  gives that layer its own path as name (``features.0``), other layers are
  ``"{scope}.{fx_node_name}"``;
- weights are the parameters, buffers and lifted constants a node reads, named by their
  state-dict key; tied tensors (the same storage under two keys) get one canonical name
  (the first key) and are marked shared.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from effstudio.core import dtypes
from effstudio.core.errors import ModelLoadError
from effstudio.core.graph import Layer, LayerGraph, ModelInfo, Shape, TensorInfo, Weight
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

# nodes that only check or compute symbolic sizes: no tensor semantics, not layers
_DROP_ATEN = {
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "sym_constrain_range",
    "sym_constrain_range_for_size", "_assert_async", "_assert_scalar", "_assert_tensor_metadata",
    "_functional_assert_async", "_functional_assert_scalar", "_functional_sym_constrain_range",
    "_functional_sym_constrain_range_for_size",
}


# --- small conversions -------------------------------------------------------------------
def _dim(d: Any) -> int | str:
    try:
        return int(d)
    except (TypeError, ValueError, RuntimeError):  # an unbacked / symbolic size
        return str(d)


def _shape(t: Any) -> Shape | None:
    shape = getattr(t, "shape", None)
    return None if shape is None else tuple(_dim(d) for d in shape)


def _is_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


def tensor_info(name: str, val: Any) -> TensorInfo:
    """A tensor's name, shape (symbolic sizes as strings) and dtype from an FX ``meta['val']``."""
    if _is_tensor(val):
        return TensorInfo(name, _shape(val), dtypes.from_torch(val.dtype))
    if isinstance(val, torch.SymInt | int):
        return TensorInfo(name, (), "int64")
    if isinstance(val, torch.SymFloat | float):
        return TensorInfo(name, (), "float64")
    if isinstance(val, torch.SymBool | bool):
        return TensorInfo(name, (), "bool")
    return TensorInfo(name)


def _jsonable(v: Any) -> Any:
    """Non-tensor op arguments as JSON values (sizes, flags, dtypes, symbolic sizes as text)."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, torch.fx.Node):
        val = v.meta.get("val")
        return str(val) if val is not None else v.name
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, torch.SymInt | torch.SymFloat | torch.SymBool):
        return str(v)
    if isinstance(v, torch.dtype):
        return dtypes.from_torch(v)
    return str(v)  # torch.dtype, device, layout, memory_format, …


def _op_names(target: Any) -> tuple[str, str]:
    """(op_type, domain) of a call_function target."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__, target.namespace
    if isinstance(target, torch._ops.HigherOrderOperator):
        return target.name(), "higher_order"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__, getattr(target, "_qualified_op_name", "aten::").split("::")[0]
    name = getattr(target, "__name__", str(target))
    mod = getattr(target, "__module__", None) or "python"
    return name, mod


def _is_dropped(node: torch.fx.Node) -> bool:
    """Size bookkeeping with no tensor semantics (asserts, sym_size, int arithmetic on sizes)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t.namespace == "aten" and t.overloadpacket.__name__ in _DROP_ATEN
    if isinstance(t, torch._ops.OpOverload | torch._ops.HigherOrderOperator):
        return False
    # builtins / operator / math / torch.sym_* applied to sizes (SymInt in, SymInt out)
    return not _contains_tensor(node.meta.get("val"))


def _contains_tensor(v: Any) -> bool:
    if _is_tensor(v):
        return True
    if isinstance(v, list | tuple):
        return any(_contains_tensor(x) for x in v)
    return False


def _schema_args(node: torch.fx.Node) -> list[tuple[str, Any, bool]]:
    """(argument name, value, is_tensor_typed) for every argument given or defaulted."""
    t = node.target
    schema = getattr(t, "_schema", None) if isinstance(t, torch._ops.OpOverload) else None
    if schema is None:
        out = [(f"arg{i}", a, False) for i, a in enumerate(node.args)]
        return out + [(k, v, False) for k, v in node.kwargs.items()]
    out = []
    for i, arg in enumerate(schema.arguments):
        is_tensor = "Tensor" in str(arg.type)
        if i < len(node.args) and not arg.kwarg_only:
            out.append((arg.name, node.args[i], is_tensor))
        elif arg.name in node.kwargs:
            out.append((arg.name, node.kwargs[arg.name], is_tensor))
        elif arg.has_default_value():
            out.append((arg.name, arg.default_value, is_tensor))
    return out


def _flat_nodes(v: Any) -> Iterable[torch.fx.Node]:
    if isinstance(v, torch.fx.Node):
        yield v
    elif isinstance(v, list | tuple):
        for x in v:
            yield from _flat_nodes(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _flat_nodes(x)


def _innermost_module(node: torch.fx.Node) -> tuple[str, str]:
    """(module path, module class) of the innermost module that ran ``node``; ("", "") at top."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return str(path), cls_name


# --- the graph ---------------------------------------------------------------------------
def _canonical_weight_names(ep: torch.export.ExportedProgram) -> dict[str, str]:
    """State-dict key -> canonical key: tensors sharing storage (tied weights) map to the first key."""
    first: dict[tuple, str] = {}
    canon: dict[str, str] = {}
    for key, t in list(ep.state_dict.items()) + list(ep.constants.items()):
        if not _is_tensor(t) or t.numel() == 0 or t.device.type == "meta":
            canon[key] = key
            continue
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        canon[key] = first.setdefault(ident, key)
    return canon


def graph_from_exported(ep: torch.export.ExportedProgram, *, path: str, format: str,
                        input_names: dict[str, str] | None = None) -> LayerGraph:
    """The layer graph of an ExportedProgram (see the module docstring for the conventions).

    ``input_names`` optionally renames user-input placeholders (FX name -> forward argument name).
    """
    sig = ep.graph_signature
    canon = _canonical_weight_names(ep)
    weight_of: dict[str, str] = {}  # placeholder name -> state-dict key
    for mapping in (sig.inputs_to_parameters, sig.inputs_to_buffers, sig.inputs_to_lifted_tensor_constants):
        for ph, key in mapping.items():
            weight_of[ph] = canon.get(key, key)
    user_inputs = list(sig.user_inputs)
    input_names = input_names or {}

    g = LayerGraph()
    g.model = ModelInfo(path, format)
    nodes = list(ep.graph.nodes)
    tname: dict[torch.fx.Node, str] = {}  # node -> activation tensor name
    weight_val: dict[str, Any] = {}
    for n in nodes:
        if n.op != "placeholder":
            continue
        val = n.meta.get("val")
        if n.name in weight_of:
            weight_val[weight_of[n.name]] = val
        elif n.name in user_inputs:
            name = input_names.get(n.name, n.name)
            tname[n] = name
            info = tensor_info(name, val)
            g.tensors[name] = info
            g.inputs.append(info)

    kept = [n for n in nodes if n.op == "call_function" and n.target is not operator.getitem
            and not _is_dropped(n)]
    kept_set = set(kept)

    # module paths that produced exactly one layer name that layer
    per_module: dict[str, int] = {}
    for n in kept:
        mod, _ = _innermost_module(n)
        if mod:
            per_module[mod] = per_module.get(mod, 0) + 1
    # ... and a module whose forward made several layers but only one that reads its weights
    # (nn.LSTM builds its zero initial state first) gives that one its path: users select
    # layers to compress by module path
    weighted: dict[str, list[torch.fx.Node]] = {}
    for n in kept:
        mod, _ = _innermost_module(n)
        if mod and any(x.name in weight_of for x in n.all_input_nodes):
            weighted.setdefault(mod, []).append(n)
    module_types: dict[str, str] = {}

    # outputs of each kept node: its own name, or the getitem results folded into it
    def _root(n: torch.fx.Node) -> torch.fx.Node | None:
        while n.op == "call_function" and n.target is operator.getitem:
            n = n.args[0]  # type: ignore[assignment]
        return n if n in kept_set else None

    folded: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for n in nodes:
        if n.op == "call_function" and n.target is operator.getitem and _is_tensor(n.meta.get("val")):
            root = _root(n)
            if root is not None:
                folded.setdefault(root, []).append(n)
                tname[n] = n.name

    used: set[str] = set()
    for n in kept:
        mod, cls = _innermost_module(n)
        if mod:
            module_types.setdefault(mod, cls)
        if mod and (per_module[mod] == 1 or weighted.get(mod) == [n]):
            name = mod
        else:
            name = f"{mod}.{n.name}" if mod else n.name
        base, k = name, 1
        while name in used:  # "{scope}.{fx}" can meet a child module's own path; keep names unique
            k += 1
            name = f"{base}__{k}"
        used.add(name)

        op_type, domain = _op_names(n.target)
        lay = Layer(name=name, op_type=op_type, scope=mod, domain=domain)
        seen_w: set[str] = set()
        for arg_name, value, is_tensor_arg in _schema_args(n):
            tensor_nodes = [x for x in _flat_nodes(value) if _is_tensor(x.meta.get("val"))
                            or x.name in weight_of or x in tname]
            for x in tensor_nodes:
                if x.name in weight_of:
                    key = weight_of[x.name]
                    if key not in seen_w:
                        seen_w.add(key)
                        val = weight_val.get(key, x.meta.get("val"))
                        lay.weights.append(Weight(key, tuple(int(d) for d in val.shape),
                                                  dtypes.from_torch(val.dtype)))
                elif x in tname:
                    lay.inputs.append(tname[x])
            if not is_tensor_arg and not tensor_nodes and not isinstance(value, torch.fx.GraphModule):
                lay.attributes[arg_name] = _jsonable(value)
        if isinstance(n.target, torch._ops.HigherOrderOperator):
            lay.flags.append("control-flow")

        val = n.meta.get("val")
        if n in folded:
            outs = sorted(folded[n], key=lambda x: _getitem_path(x))
            for x in outs:
                lay.outputs.append(x.name)
                g.tensors[x.name] = tensor_info(x.name, x.meta.get("val"))
            # tensors of a tuple result that nothing reads still take memory: list them too
            if isinstance(val, list | tuple):
                direct = {x.args[1] for x in outs if x.args[0] is n}
                for i, v in enumerate(val):
                    if i not in direct and _is_tensor(v):
                        tn = f"{n.name}.{i}"
                        lay.outputs.append(tn)
                        g.tensors[tn] = tensor_info(tn, v)
        elif _is_tensor(val) or val is None or isinstance(val, torch.SymInt | torch.SymFloat | int | float):
            if val is not None:
                tname[n] = n.name
                lay.outputs.append(n.name)
                g.tensors[n.name] = tensor_info(n.name, val)
        elif isinstance(val, list | tuple):
            for i, v in enumerate(val):
                if _is_tensor(v):
                    tn = f"{n.name}.{i}"
                    lay.outputs.append(tn)
                    g.tensors[tn] = tensor_info(tn, v)
        g.layers.append(lay)

    out_nodes = {x.name: x for x in nodes}
    for oname in sig.user_outputs:
        x = out_nodes.get(oname) if oname is not None else None
        if x is not None and x in tname:
            g.outputs.append(g.tensors.get(tname[x]) or tensor_info(tname[x], x.meta.get("val")))

    assert len({lay.name for lay in g.layers}) == len(g.layers), "layer names must be unique"
    g.mark_shared_weights()
    g.model.extra["module_types"] = module_types
    unused = sorted(set(canon.values()) - {w for w in g.unique_weights()})
    if unused:
        g.model.extra["unused_weights"] = unused
    return g


def _getitem_path(n: torch.fx.Node) -> tuple[int, ...]:
    path: list[int] = []
    while n.op == "call_function" and n.target is operator.getitem:
        idx = n.args[1]
        path.append(idx if isinstance(idx, int) else 0)
        n = n.args[0]  # type: ignore[assignment]
    return tuple(reversed(path))


def example_array(t: torch.Tensor) -> np.ndarray:
    """A torch tensor as a numpy array (shares memory where it can)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def loaded_from_module(module: nn.Module, example_inputs: dict[str, torch.Tensor], *, path: str,
                       format: str, progress: Progress | None = None) -> LoadedModel:
    """Export ``module`` (eval mode) with ``example_inputs`` as keyword arguments and build its graph.

    Graph input names are the forward's parameter names (the keys of ``example_inputs``).
    Raises :class:`ModelLoadError` naming ``path`` when torch.export cannot trace the module.
    """
    progress = progress or Progress()
    module.eval()
    progress.update(None, "tracing the model with torch.export")
    try:
        ep = torch.export.export(module, args=(), kwargs=dict(example_inputs))
    except Exception as e:  # torch raises many types here (Unsupported, UserError, RuntimeError, …)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(path, f"torch.export could not trace the model: {type(e).__name__}: {first}"
                             ) from e
    progress.update(None, "building the layer graph")
    # placeholders of user inputs are flattened kwargs in the order given
    user = list(ep.graph_signature.user_inputs)
    names = list(example_inputs)
    rename = dict(zip(user, names, strict=False)) if len(user) == len(names) else {}
    graph = graph_from_exported(ep, path=path, format=format, input_names=rename)
    return LoadedModel(graph=graph, format=format, path=path, torch_module=module, exported=ep,
                       example_inputs={k: example_array(v) for k, v in example_inputs.items()})

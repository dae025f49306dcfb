"""A TorchScript module -> :class:`~effstudio.core.graph.LayerGraph`, by running its inlined IR once.

Why our own walker: ``torch._export.converter.TS2EPConverter`` (TorchScript -> ExportedProgram)
fails on scripted control flow (``prim::If`` in ``nn.TransformerEncoder``) and drops the module
hierarchy, and TorchScript graphs carry no shapes.  So the inlined graph is executed node by
node on the example inputs: every operator is called through TorchScript's own operator
registry (``torch._C._jit_get_operation``), only the structural nodes (constants, attributes,
lists/tuples, ``If``/``Loop``) are handled here.  Each executed ATen node that returns a
tensor becomes a layer with the real output shapes; control flow is resolved for these inputs
(as ``torch.export`` does), loops are unrolled.  Names follow :mod:`torch_graph`: a module
whose forward ran exactly one layer names it (``features.0``), others are ``{scope}.{op}_{k}``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from effstudio.core import dtypes
from effstudio.core.graph import Layer, LayerGraph, ModelInfo, TensorInfo, Weight
from effstudio.core.progress import Progress

_SEGMENT = re.compile(r"([^.()]+)\(([^()]*)\)")
_SKIP_INSTANCES = {"SELF", "UNKNOWN_INSTANCE"}


class _Unsupported(Exception):
    pass


def _flat_tensors(v: Any) -> list[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, list | tuple):
        return [t for x in v for t in _flat_tensors(x)]
    if isinstance(v, dict):
        return [t for x in v.values() for t in _flat_tensors(x)]
    return []


class _Walker:
    def __init__(self, module: torch.jit.ScriptModule, path: str, format: str, progress: Progress) -> None:
        self.module = module
        self.progress = progress
        self.graph = LayerGraph()
        self.graph.model = ModelInfo(path, format)
        self.module_path: dict[int, str] = {id(m): p for p, m in module.named_modules()}
        self.module_kind: dict[str, str] = {p: m.original_name for p, m in module.named_modules()}
        self.all_paths = set(self.module_path.values())
        # weights are known by their data (pointer, shape, stride, dtype), not by Python object:
        # TorchScript keeps some as list attributes (LSTM ``_flat_weights``) that alias the
        # parameters; tied tensors (one storage, two names) get the first state-dict name.
        self.weight_name: dict[tuple, str] = {}
        for key, t in module.state_dict(keep_vars=True).items():
            self.weight_name.setdefault(_wkey(t, key), key)
        self.tensor_name: dict[int, str] = {}  # id(tensor) -> activation tensor name
        self.keep: list[Any] = []  # keeps named tensors alive so their ids stay unique
        self.counters: dict[str, int] = {}
        self.pending: list[tuple[Layer, str]] = []  # (layer, fx-like base name)
        self.scope_cache: dict[str, str] = {}
        self.steps = 0
        self.ops: dict[str, tuple[Any, list[str]]] = {}

    # --- names ------------------------------------------------------------------------
    def _scope(self, node: torch._C.Node) -> str:
        hier = node.getModuleHierarchy()
        if hier in self.scope_cache:
            return self.scope_cache[hier]
        path = ""
        for inst, _typ in _SEGMENT.findall(hier):
            if inst in _SKIP_INSTANCES:
                continue
            path = self._child(path, inst)
        self.scope_cache[hier] = path
        return path

    def _child(self, parent: str, inst: str) -> str:
        """The module called ``inst`` under ``parent``: a direct child, or one inside a
        ModuleList/ModuleDict (containers that are never called, so not in the hierarchy)."""
        direct = f"{parent}.{inst}" if parent else inst
        if direct in self.all_paths:
            return direct
        pre = f"{parent}." if parent else ""
        found = sorted((p for p in self.all_paths if p.startswith(pre) and p.endswith("." + inst)), key=len)
        return found[0] if found else direct

    def _fx_name(self, op: str) -> str:
        k = self.counters.get(op, 0)
        self.counters[op] = k + 1
        return op if k == 0 else f"{op}_{k}"

    def _name_tensor(self, t: torch.Tensor, name: str) -> None:
        self.tensor_name[id(t)] = name
        self.keep.append(t)
        self.graph.tensors[name] = TensorInfo(name, _shape(t), dtypes.from_torch(t.dtype))

    # --- execution ----------------------------------------------------------------------
    def run(self, inputs: dict[str, torch.Tensor]) -> None:
        g = self.module.inlined_graph
        env: dict[str, Any] = {}
        ins = list(g.inputs())
        env[ins[0].debugName()] = self.module
        for v, (name, t) in zip(ins[1:], inputs.items(), strict=True):
            env[v.debugName()] = t
            self._name_tensor(t, name)
            self.graph.inputs.append(self.graph.tensors[name])
        outs = self._block(g, env)
        for t in _flat_tensors(outs):
            name = self.tensor_name.get(id(t))
            if name is not None:
                self.graph.outputs.append(self.graph.tensors[name])
        self._finish_names()

    def _block(self, block: Any, env: dict[str, Any]) -> list[Any]:
        for node in block.nodes():
            self._node(node, env)
        return [env[v.debugName()] for v in block.outputs()]

    def _node(self, node: torch._C.Node, env: dict[str, Any]) -> None:
        kind = node.kind()
        args = [env[v.debugName()] for v in node.inputs()]
        outs = list(node.outputs())
        if kind == "prim::Constant":
            env[outs[0].debugName()] = outs[0].toIValue()
            return
        if kind == "prim::GetAttr":
            obj = getattr(args[0], node.s("name"))
            if isinstance(obj, torch.Tensor):  # a tensor attribute that is not in the state dict
                key = f"{self.module_path.get(id(args[0]), '')}.{node.s('name')}".lstrip(".")
                self.weight_name.setdefault(_wkey(obj, key), key)
            env[outs[0].debugName()] = obj
            return
        if kind == "prim::If":
            vals = self._block(list(node.blocks())[0 if args[0] else 1], env)
            for v, x in zip(outs, vals, strict=True):
                env[v.debugName()] = x
            return
        if kind == "prim::Loop":
            trips, cond, carried = args[0], args[1], list(args[2:])
            body = next(iter(node.blocks()))
            params = list(body.inputs())
            i = 0
            while cond and i < trips:
                env[params[0].debugName()] = i
                for p, x in zip(params[1:], carried, strict=True):
                    env[p.debugName()] = x
                res = self._block(body, env)
                cond, carried = res[0], list(res[1:])
                i += 1
            for v, x in zip(outs, carried, strict=True):
                env[v.debugName()] = x
            return
        simple = {
            "prim::ListConstruct": lambda: [list(args)],
            "prim::TupleConstruct": lambda: [tuple(args)],
            "prim::DictConstruct": lambda: [dict(zip(args[::2], args[1::2], strict=True))],
            "prim::ListUnpack": lambda: list(args[0]),
            "prim::TupleUnpack": lambda: list(args[0]),
            "prim::TupleIndex": lambda: [args[0][args[1]]],
            "prim::unchecked_cast": lambda: [args[0]],
            "prim::Uninitialized": lambda: [None],
            "aten::__is__": lambda: [args[0] is args[1] or (args[0] is None and args[1] is None)],
            "aten::__isnot__": lambda: [not (args[0] is args[1] or (args[0] is None and args[1] is None))],
            "aten::__not__": lambda: [not args[0]],
        }
        if kind in _PY_OPS:  # generic list ops the registry cannot type from Python values
            res = _PY_OPS[kind](*args)
            env[outs[0].debugName()] = res
            return
        if kind in simple:
            for v, x in zip(outs, simple[kind](), strict=True):
                env[v.debugName()] = x
            return
        if kind == "prim::RaiseException":
            raise _Unsupported(f"the model raised an exception for these inputs: {args[0] if args else ''}")
        if kind in ("prim::CallMethod", "prim::CallFunction", "prim::PythonOp", "prim::SetAttr"):
            raise _Unsupported(f"cannot walk {kind}")
        schema = node.schema()
        op, kwarg_names = self._operator(kind, schema)
        n_pos = len(args) - len(kwarg_names)
        result = op(*args[:n_pos], **dict(zip(kwarg_names, args[n_pos:], strict=True)))
        values = list(result) if len(outs) > 1 else [result]
        for v, x in zip(outs, values, strict=True):
            env[v.debugName()] = x
        returns_tensor = "Tensor" in schema.split("->", 1)[1] if "->" in schema else False
        if returns_tensor and not kind.startswith("prim::"):
            self._layer(node, kind, args, values)
        self.steps += 1
        if self.steps % 200 == 0:
            self.progress.update(None, f"running the TorchScript graph ({self.steps} ops)")

    def _operator(self, kind: str, schema: str) -> tuple[Any, list[str]]:
        """The exact overload a node calls (from TorchScript's registry) and its keyword-only names."""
        hit = self.ops.get(schema)
        if hit is None:
            if schema == "(no schema)":
                raise _Unsupported(f"operator {kind} has no schema")
            try:
                parsed = torch._C.parse_schema(schema)
                op = torch._C._get_operation_overload(parsed.name, parsed.overload_name)[0]
            except (RuntimeError, TypeError) as e:
                raise _Unsupported(f"unknown operator {kind}") from e
            hit = self.ops[schema] = (op, [a.name for a in parsed.arguments if a.kwarg_only])
        return hit

    def _layer(self, node: torch._C.Node, kind: str, args: list[Any], values: list[Any]) -> None:
        ns, op = kind.split("::", 1)
        scope = self._scope(node)
        base = self._fx_name(op)
        lay = Layer(name="", op_type=op, scope=scope, domain=ns)
        seen_w: set[str] = set()
        arg_names = [v.debugName() for v in node.inputs()]
        try:
            schema_args = [a.name for a in torch._C.parse_schema(node.schema()).arguments]
        except RuntimeError:
            schema_args = arg_names
        for i, a in enumerate(args):
            ts = _flat_tensors(a)
            for t in ts:
                if _wkey(t) in self.weight_name:
                    w = self.weight_name[_wkey(t)]
                    if w not in seen_w:
                        seen_w.add(w)
                        lay.weights.append(Weight(w, _shape(t), dtypes.from_torch(t.dtype)))
                elif id(t) in self.tensor_name:
                    lay.inputs.append(self.tensor_name[id(t)])
                else:  # a tensor constant baked into the script
                    cname = f"{scope}.{base}.{arg_names[i]}".lstrip(".")
                    self.weight_name[_wkey(t, cname)] = cname
                    lay.weights.append(Weight(cname, _shape(t), dtypes.from_torch(t.dtype)))
            if not ts and i < len(schema_args):
                lay.attributes[schema_args[i]] = _attr(a)
        outs = _flat_tensors(values)
        for j, t in enumerate(outs):
            tn = base if len(outs) == 1 else f"{base}.{j}"
            self._name_tensor(t, tn)
            lay.outputs.append(tn)
        self.graph.layers.append(lay)
        self.pending.append((lay, base))

    def _finish_names(self) -> None:
        per_module: dict[str, int] = {}
        for lay, _ in self.pending:
            if lay.scope:
                per_module[lay.scope] = per_module.get(lay.scope, 0) + 1
        used: set[str] = set()
        for lay, base in self.pending:
            name = lay.scope if lay.scope and per_module[lay.scope] == 1 else (
                f"{lay.scope}.{base}" if lay.scope else base)
            cand, k = name, 1
            while cand in used:
                k += 1
                cand = f"{name}__{k}"
            used.add(cand)
            lay.name = cand
        self.graph.mark_shared_weights()
        scopes = sorted({lay.scope for lay in self.graph.layers if lay.scope})
        self.graph.model.extra["module_types"] = {s: self.module_kind.get(s, "") for s in scopes}
        self.graph.model.extra["control_flow"] = "resolved for the example inputs"
        self.keep.clear()


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _wkey(t: torch.Tensor, name: str = "") -> tuple:
    if t.numel() == 0:
        return ("empty", name or id(t))
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _append(lst: list, x: Any) -> list:
    lst.append(x)
    return lst


_PY_OPS = {
    "aten::len": len,
    "aten::__getitem__": lambda a, i: a[i],
    "aten::append": _append,
    "aten::list": list,
    "aten::__contains__": lambda a, x: x in a,
    "aten::warn": lambda *a: None,
    "aten::format": lambda fmt, *a: fmt.replace("{}", "%s") % a if fmt.count("{}") == len(a) else fmt,
}


def _attr(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list | tuple):
        return [_attr(x) for x in v]
    return str(v)


def graph_from_scripted(module: torch.jit.ScriptModule, example_inputs: dict[str, torch.Tensor], *,
                        path: str, format: str = "torchscript",
                        progress: Progress | None = None) -> LayerGraph:
    """Run ``module``'s inlined TorchScript graph once on ``example_inputs`` (keyword order = forward
    order) and return its layer graph.  Raises ``RuntimeError`` when the graph cannot be walked."""
    walker = _Walker(module, path, format, progress or Progress())
    # grad stays on, as under torch.export: nn.TransformerEncoderLayer's inference fast path
    # (one fused op per layer) is then not taken, and the graph shows its linears and norms
    with torch.enable_grad():
        try:
            walker.run(example_inputs)
        except _Unsupported as e:
            raise RuntimeError(str(e)) from e
    return walker.graph


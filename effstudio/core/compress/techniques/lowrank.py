"""``lowrank.svd``: replace a layer's weight by the product of two thin ones (truncated SVD).

- Linear / ONNX Gemm and MatMul, 1×1 Conv: ``W ≈ (U√S)(√S Vᵀ)`` of rank ``r``; the layer becomes
  two: in → r, then r → out (the bias moves to the second).
- k×k Conv: *spatial SVD* (Jaderberg et al. 2014, scheme 2; Qualcomm AIMET's "spatial SVD"): the
  kernel (O, I, kh, kw) reshaped to (I·kh, O·kw) is factorized into a (kh×1) conv I → r followed
  by a (1×kw) conv r → O, stride/padding/dilation split by axis.  It is chosen over Tucker-2 because
  one SVD gives the *best* rank-r approximation of that reshaping (Eckart–Young), so ``energy``
  means exactly what it means for a linear layer and one rank setting serves both; Tucker-2 needs
  two ranks and its HOSVD is only quasi-optimal without ALS iterations.  Both halves are plain
  Conv ops every runtime has.  Only 2-D convs with ``groups=1`` (a depthwise kernel has no
  matrix worth factorizing) and zero padding.

Rank: ``rank_by="ratio"``: ``r = max(1, round(rank_ratio × R))`` with ``R`` the full rank
(min of the matrix's sides); ``rank_by="energy"``: the smallest ``r`` whose singular values keep
``energy`` of ``Σ s²``.  A layer whose two factors would hold as many parameters as the original
(``r·(rows + cols) ≥ rows·cols``) or more is left as it is, with a note.

Names: torch — the module at path ``P`` becomes ``nn.Sequential`` at the same path, so the layer
``P`` is replaced by ``P.0`` and ``P.1``; ONNX — node ``N`` becomes ``N.0`` and ``N.1`` with new
initializers ``<W>.lowrank0`` / ``<W>.lowrank1``.  ``extra["layers"][P]["new_layers"]`` lists them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

MEANINGFUL_MAC_DROP = 0.10  # the model's MACs must fall by this fraction to expect a speed-up
PROGRAM_HINT = " (a .pt2 / TorchScript program has no layer modules to replace; open its ONNX or Python form)"
SPEED_SENTENCE = ("Whether it runs faster depends on the kernels: two thin matmuls/convs often run slower per MAC "
                  "than one wide one, so the re-measured latency is the judge.")


@dataclass
class LowRankConfig(TechniqueConfig):
    technique = "lowrank.svd"
    version = 1
    rank_by: Literal["energy", "ratio"] = "energy"
    energy: float = 0.95  # fraction of Σ s² kept (rank_by="energy")
    rank_ratio: float = 0.25  # fraction of the full rank kept (rank_by="ratio")

    def validate(self) -> None:
        if self.rank_by not in ("energy", "ratio"):
            raise CompressError(f"{self.technique}: rank_by must be 'energy' or 'ratio', got {self.rank_by!r}")
        for key in ("energy", "rank_ratio"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
                raise CompressError(f"{self.technique}: {key} must be in (0, 1], got {v!r}")


def choose_rank(s: np.ndarray, config: LowRankConfig) -> int:
    """The rank kept for singular values ``s`` (descending) under ``config``."""
    full = len(s)
    if config.rank_by == "ratio":
        return max(1, min(full, math.floor(float(config.rank_ratio) * full + 0.5)))
    cum = np.cumsum(np.asarray(s, np.float64) ** 2)
    if cum[-1] <= 0:
        return 1
    return max(1, min(full, int(np.searchsorted(cum / cum[-1], float(config.energy) - 1e-12)) + 1))


@dataclass
class Factors:
    """``m ≈ a @ b``: a (rows, r) and b (r, cols), with the kept energy."""

    a: np.ndarray
    b: np.ndarray
    rank: int
    full_rank: int
    energy: float


def svd_factors(m: np.ndarray, config: LowRankConfig) -> Factors:
    """Truncated SVD of ``m`` (float64), split as ``(U√S)(√S Vᵀ)`` so both factors have equal scale."""
    u, s, vt = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
    r = choose_rank(s, config)
    total = float((s ** 2).sum())
    root = np.sqrt(s[:r])
    return Factors(u[:, :r] * root, root[:, None] * vt[:r], r, len(s),
                   float((s[:r] ** 2).sum() / total) if total > 0 else 1.0)


# --- conv kernel <-> matrix (spatial SVD) -----------------------------------------------------
def conv_matrix(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> (I·kh, O·kw) with ``M[i·kh + y, o·kw + x] = W[o, i, y, x]``."""
    o, i, kh, kw = w.shape
    return w.transpose(1, 2, 0, 3).reshape(i * kh, o * kw)


def conv_kernels(f: Factors, w_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The (r, I, kh, 1) and (O, r, 1, kw) kernels whose composition is the rank-r kernel."""
    o, i, kh, kw = w_shape
    first = f.a.reshape(i, kh, f.rank).transpose(2, 0, 1)[..., None]
    second = f.b.reshape(f.rank, o, kw).transpose(1, 0, 2)[:, :, None, :]
    return first, second


def factored_params(rows: int, cols: int, rank: int) -> int:
    return rank * (rows + cols)


@dataclass
class _Target:
    layer: str
    kind: Literal["linear", "conv", "matmul", "gemm"]
    weight: str  # state-dict key / initializer name
    array: np.ndarray = field(repr=False)  # the weight as stored
    matrix: np.ndarray = field(repr=False)  # what is factorized

    @property
    def rows_cols(self) -> tuple[int, int]:
        return int(self.matrix.shape[0]), int(self.matrix.shape[1])


# --- which layers ------------------------------------------------------------------------------
def _torch_module_of(layer: Layer, loaded: LoadedModel) -> tuple[Any, str | None]:
    """The nn.Linear / nn.Conv2d module whose only op is ``layer``, or (None, reason)."""
    from torch import nn

    if layer.op_type not in ("linear", "conv2d"):
        return None, f"a {layer.op_type} has no Linear/Conv2d weight to factorize"
    if loaded.torch_module is None:
        return None, "the torch model has no module to edit"
    if layer.name != layer.scope:
        return None, (f"its weight is used inside {layer.scope or 'the top module'}'s own forward, "
                      "not by a Linear/Conv2d module that could be replaced")
    try:
        mod = loaded.torch_module.get_submodule(layer.scope)
    except AttributeError:
        return None, f"no module at {layer.scope!r} to replace"
    if type(mod) is nn.Linear:
        return mod, None
    if type(mod) is nn.Conv2d:
        if mod.groups != 1:
            return None, f"a grouped/depthwise conv (groups={mod.groups}) has no single matrix to factorize"
        if mod.padding_mode != "zeros":
            return None, f"padding_mode={mod.padding_mode!r} (only zero padding splits by axis)"
        return mod, None
    return None, (f"the module at {layer.scope!r} is a {type(mod).__name__}, not an nn.Linear or nn.Conv2d"
                  + (PROGRAM_HINT if loaded.format in ("torch-export", "torchscript") else ""))


def _onnx_node(proto, name: str):
    for n in proto.graph.node:
        if n.name == name:
            return n
    return None


def _onnx_stored(proto) -> dict[str, Any]:
    """Initializer / Constant-node output name -> TensorProto (top graph)."""
    out = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] not in out:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[n.output[0]] = a.t
    return out


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _onnx_reason(layer: Layer, loaded: LoadedModel) -> str | None:
    if layer.op_type not in ("Gemm", "MatMul", "Conv") or layer.domain not in ("", "ai.onnx"):
        return f"a {layer.op_type} has no Gemm/MatMul/Conv weight to factorize"
    node = _onnx_node(loaded.onnx_model, layer.name)
    if node is None or len(node.input) < 2:
        return "its node has no weight input"
    weights = {w.name: w for w in layer.weights}
    w = weights.get(node.input[1])
    if w is None:
        return "its second input is computed, not a stored weight"
    if node.input[0] in weights:
        return "both of its inputs are stored (a constant product, not a layer)"
    if not w.dtype.startswith(("float", "bfloat")):
        return f"its weight is {w.dtype}, not float"
    if layer.op_type in ("Gemm", "MatMul") and len(w.shape) != 2:
        return f"its weight has shape {list(w.shape)}, not a matrix"
    if layer.op_type == "Conv":
        if len(w.shape) != 4:
            return f"a {len(w.shape) - 2}-D conv (only 2-D convs are factorized)"
        if int(_attr(node, "group", 1)) != 1:
            return f"a grouped/depthwise conv (group={_attr(node, 'group')}) has no single matrix to factorize"
        if len(node.input) > 2 and node.input[2] and node.input[2] not in weights:
            return "its bias is computed, not a stored weight"
    return None


# --- the technique -----------------------------------------------------------------------------
@register
class LowRankSVD(Technique):
    name = "lowrank.svd"
    title = "Low-rank factorization (SVD)"
    config_cls = LowRankConfig
    backends = frozenset({"onnx", "torch"})

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        if loaded.backend == "onnx":
            why = _onnx_reason(layer, loaded)
        else:
            why = _torch_module_of(layer, loaded)[1]
        if why is None:
            shared = [w.name for w in layer.weights if w.shared and len(w.shape) >= 2]
            if shared:
                return f"its weight {shared[0]!r} is shared with another layer"
        return why

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        return Expectation("faster-and-smaller",
                           f"Fewer parameters and MACs in each factorized layer. {SPEED_SENTENCE}")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        from effstudio.core.metrics import compute_static

        assert isinstance(config, LowRankConfig)
        config.validate()
        self.check_selection(loaded, config, selection)
        progress.update(0.0, f"factorizing {len(selection)} layer(s)")
        targets = [self._target(loaded, name) for name in selection]
        plans: dict[str, tuple[_Target, Factors]] = {}
        skipped: dict[str, str] = {}
        for i, t in enumerate(targets):
            progress.update(0.5 * i / max(len(targets), 1), f"SVD of {t.layer}")
            f = svd_factors(t.matrix, config)
            rows, cols = t.rows_cols
            if factored_params(rows, cols, f.rank) >= rows * cols:
                skipped[t.layer] = (f"{t.layer}: rank {f.rank} of {f.full_rank} would need "
                                    f"{factored_params(rows, cols, f.rank):,} weights, not fewer than its "
                                    f"{rows * cols:,}; left as it is.")
            else:
                plans[t.layer] = (t, f)
        if not plans:
            raise CompressError(f"{self.name}: no selected layer gets smaller at this rank: "
                                + " ".join(skipped.values()))
        progress.update(0.5, "building the factorized model")
        if loaded.backend == "onnx":
            new, renamed = self._apply_onnx(loaded, plans, progress.sub(0.5, 0.9))
        else:
            new, renamed = self._apply_torch(loaded, plans, progress.sub(0.5, 0.9))
        progress.update(0.9, "counting MACs")
        before, after = compute_static(loaded, flop_counter=False), compute_static(new, flop_counter=False)
        layers: dict[str, dict[str, Any]] = {}
        for name, (t, f) in plans.items():
            rows, cols = t.rows_cols
            mb = before.get("macs", name)
            ma = [after.get("macs", n) for n in renamed[name]]
            layers[name] = {"rank": f.rank, "full_rank": f.full_rank, "energy": f.energy,
                            "weights_before": rows * cols, "weights_after": factored_params(rows, cols, f.rank),
                            "macs_before": mb, "macs_after": None if None in ma or mb is None else sum(ma),
                            "new_layers": renamed[name]}
        macs_b, macs_a = before.totals.get("macs"), after.totals.get("macs")
        notes = [f"{n}: rank {v['rank']} of {v['full_rank']} ({v['energy']:.1%} of the energy), "
                 f"{v['weights_before']:,} → {v['weights_after']:,} weights; now {' + '.join(v['new_layers'])}."
                 for n, v in layers.items()]
        notes += list(skipped.values())
        expectation = self.expectation(loaded, config)
        if macs_b and macs_a is not None:
            drop = 1.0 - macs_a / macs_b
            notes.append(f"Model MACs {macs_b:,.0f} → {macs_a:,.0f} ({-drop:+.1%}).")
            if drop < MEANINGFUL_MAC_DROP:
                expectation = Expectation("smaller", f"Fewer parameters; the model's MACs fall by only {drop:.1%}, "
                                          f"too little to expect a measurable speed-up. {SPEED_SENTENCE}")
            else:
                expectation = Expectation("faster-and-smaller", f"MACs fall by {drop:.1%}. {SPEED_SENTENCE}")
        progress.update(1.0, "factorized")
        return StepResult(model=new, changed=list(plans), coupled=[], notes=notes, expectation=expectation,
                          extra={"layers": layers, "skipped": sorted(skipped),
                                 "macs": {"before": macs_b, "after": macs_a},
                                 "renamed": {n: v["new_layers"] for n, v in layers.items()}})

    # --- what gets factorized ----------------------------------------------------------------
    def _target(self, loaded: LoadedModel, name: str) -> _Target:
        layer = loaded.graph.layer(name)
        if loaded.backend == "torch":
            mod, _ = _torch_module_of(layer, loaded)
            w = mod.weight.detach().cpu().float().numpy()
            if w.ndim == 2:
                return _Target(name, "linear", f"{name}.weight", w, w)
            return _Target(name, "conv", f"{name}.weight", w, conv_matrix(w))
        from onnx import numpy_helper

        node = _onnx_node(loaded.onnx_model, name)
        stored = _onnx_stored(loaded.onnx_model)
        if node.input[1] not in stored:
            raise CompressError(f"{self.name}: {name}: weight {node.input[1]!r} is not stored in the model")
        w = numpy_helper.to_array(stored[node.input[1]])
        if node.op_type == "Conv":
            return _Target(name, "conv", node.input[1], w, conv_matrix(w.astype(np.float64)))
        if node.op_type == "Gemm":
            eff = w.T if int(_attr(node, "transB", 0)) else w  # Y = A·B' with B' (K, N)
            return _Target(name, "gemm", node.input[1], w, eff)
        return _Target(name, "matmul", node.input[1], w, w)

    # --- torch ---------------------------------------------------------------------------------
    def _apply_torch(self, loaded, plans, progress):
        import torch
        from torch import nn

        from effstudio.core.compress.materialize import loaded_from_torch_module

        module = copy.deepcopy(loaded.torch_module)
        renamed: dict[str, list[str]] = {}
        with torch.no_grad():
            for name, (t, f) in plans.items():
                old = module.get_submodule(name)
                kw = {"dtype": old.weight.dtype, "device": old.weight.device}
                has_bias = old.bias is not None
                if t.kind == "linear":  # W (out, in) = a (out, r) @ b (r, in)
                    first = nn.Linear(old.in_features, f.rank, bias=False, **kw)
                    second = nn.Linear(f.rank, old.out_features, bias=has_bias, **kw)
                    first.weight.copy_(torch.from_numpy(f.b))
                    second.weight.copy_(torch.from_numpy(f.a))
                else:
                    first, second = _torch_conv_pair(old, f, has_bias, kw)
                if has_bias:
                    second.bias.copy_(old.bias)
                module.set_submodule(name, nn.Sequential(first, second))
                renamed[name] = [f"{name}.0", f"{name}.1"]
        progress.update(0.3, "re-exporting the factorized module")
        try:
            new = loaded_from_torch_module(module, loaded, progress=progress.sub(0.3, 1.0))
        except Exception as e:  # the parent's forward may read the replaced module's .weight itself
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CompressError(f"{self.name}: the model no longer runs with the factorized layers "
                                f"({type(e).__name__}: {first_line})") from e
        return new, renamed

    # --- onnx ----------------------------------------------------------------------------------
    def _apply_onnx(self, loaded, plans, progress):
        import onnx
        from onnx import helper, numpy_helper

        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        proto = onnx.ModelProto()
        proto.CopyFrom(loaded.onnx_model)
        graph = proto.graph
        taken = {n.name for n in graph.node} | {t.name for t in graph.initializer} | {
            o for n in graph.node for o in n.output} | {i.name for i in graph.input}

        def fresh(base: str) -> str:
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            return name

        renamed: dict[str, list[str]] = {}
        old_weights: set[str] = set()
        new_nodes = []
        for node in graph.node:
            if node.name not in plans:
                new_nodes.append(node)
                continue
            t, f = plans[node.name]
            dtype = t.array.dtype
            w0, w1 = fresh(f"{t.weight}.lowrank0"), fresh(f"{t.weight}.lowrank1")
            mid = fresh(f"{node.output[0]}.lowrank")
            n0, n1 = fresh(f"{node.name}.0"), fresh(f"{node.name}.1")
            old_weights.add(t.weight)
            if t.kind == "conv":
                k0, k1 = conv_kernels(f, t.array.shape)
                a0, a1 = _onnx_conv_attrs(node, t.array.shape)
                graph.initializer.extend([numpy_helper.from_array(k0.astype(dtype), w0),
                                          numpy_helper.from_array(k1.astype(dtype), w1)])
                first = helper.make_node("Conv", [node.input[0], w0], [mid], name=n0, **a0)
                second = helper.make_node("Conv", [mid, w1, *node.input[2:3]], list(node.output), name=n1, **a1)
            elif t.kind == "matmul":
                graph.initializer.extend([numpy_helper.from_array(f.a.astype(dtype), w0),
                                          numpy_helper.from_array(f.b.astype(dtype), w1)])
                first = helper.make_node("MatMul", [node.input[0], w0], [mid], name=n0)
                second = helper.make_node("MatMul", [mid, w1], list(node.output), name=n1)
            else:  # Gemm: Y = alpha·A'·B' + beta·C  ->  H = alpha·A'·P ;  Y = H·Q + beta·C
                graph.initializer.extend([numpy_helper.from_array(f.a.astype(dtype), w0),
                                          numpy_helper.from_array(f.b.astype(dtype), w1)])
                first = helper.make_node("Gemm", [node.input[0], w0], [mid], name=n0,
                                         alpha=float(_attr(node, "alpha", 1.0)), transA=int(_attr(node, "transA", 0)))
                second = helper.make_node("Gemm", [mid, w1, *node.input[2:3]], list(node.output), name=n1,
                                          beta=float(_attr(node, "beta", 1.0)))
            new_nodes += [first, second]
            renamed[node.name] = [n0, n1]
        del graph.node[:]
        graph.node.extend(new_nodes)
        drop_unused_tensors(graph, old_weights)
        progress.update(0.3, "loading the factorized model")
        return loaded_from_onnx_proto(proto, loaded, name="lowrank", progress=progress.sub(0.3, 1.0)), renamed


def _torch_conv_pair(old, f: Factors, has_bias: bool, kw: dict) -> tuple[Any, Any]:
    """(kh×1) conv I→r then (1×kw) conv r→O; a kernel one column wide keeps all of its geometry on
    the first conv (so a strided 1×1 conv does not compute the full width first)."""
    import torch
    from torch import nn

    k0, k1 = conv_kernels(f, tuple(old.weight.shape))
    kh, kwid = old.kernel_size
    (sh, sw), (dh, dw) = old.stride, old.dilation
    pad = old.padding
    if kwid == 1:
        geo0 = {"stride": (sh, sw), "dilation": (dh, dw), "padding": pad}
        geo1 = {"stride": 1, "dilation": 1, "padding": "valid" if isinstance(pad, str) else 0}
    elif isinstance(pad, str):  # 'same' / 'valid' mean the same thing per axis
        geo0 = {"stride": (sh, 1), "dilation": (dh, 1), "padding": pad}
        geo1 = {"stride": (1, sw), "dilation": (1, dw), "padding": pad}
    else:
        geo0 = {"stride": (sh, 1), "dilation": (dh, 1), "padding": (pad[0], 0)}
        geo1 = {"stride": (1, sw), "dilation": (1, dw), "padding": (0, pad[1])}
    first = nn.Conv2d(old.in_channels, f.rank, (kh, 1), bias=False, **geo0, **kw)
    second = nn.Conv2d(f.rank, old.out_channels, (1, kwid), bias=has_bias, **geo1, **kw)
    first.weight.copy_(torch.from_numpy(np.ascontiguousarray(k0)))
    second.weight.copy_(torch.from_numpy(np.ascontiguousarray(k1)))
    return first, second


def _onnx_conv_attrs(node, w_shape: tuple[int, ...]) -> tuple[dict, dict]:
    """Attributes of the (kh×1) and (1×kw) Conv nodes that together equal ``node``."""
    kh, kw = int(w_shape[2]), int(w_shape[3])
    sh, sw = _attr(node, "strides", None) or [1, 1]
    dh, dw = _attr(node, "dilations", None) or [1, 1]
    t, left, b, r = _attr(node, "pads", None) or [0, 0, 0, 0]
    auto = _attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if kw == 1:
        first = {"kernel_shape": [kh, 1], "strides": [sh, sw], "dilations": [dh, dw]}
        first.update({"auto_pad": auto} if auto != "NOTSET" else {"pads": [t, left, b, r]})
        return first, {"kernel_shape": [1, 1]}
    first = {"kernel_shape": [kh, 1], "strides": [sh, 1], "dilations": [dh, 1]}
    second = {"kernel_shape": [1, kw], "strides": [1, sw], "dilations": [1, dw]}
    if auto != "NOTSET":  # SAME_* / VALID pad each axis on its own: the same rule per conv
        first["auto_pad"] = second["auto_pad"] = auto
    else:
        first["pads"], second["pads"] = [t, 0, b, 0], [0, left, 0, r]
    return first, second


def _read_names(graph) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs reads."""
    out: set[str] = set()
    for n in graph.node:
        out.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out |= _read_names(g)
    return out


def drop_unused_tensors(graph, names: set[str]) -> None:
    """Remove the initializers / Constant nodes among ``names`` that no node reads any more."""
    used = _read_names(graph) | {o.name for o in graph.output}
    gone = {n for n in names if n not in used}
    keep = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    consts = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in gone)]
    if len(consts) != len(graph.node):
        del graph.node[:]
        graph.node.extend(consts)

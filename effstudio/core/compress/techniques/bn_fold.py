"""``fold.batchnorm``: fold an inference-mode BatchNorm into the conv / linear layer that feeds it.

``y = (conv(x) - mean) · γ/√(var + ε) + β`` is itself a conv with the kernel scaled per output
channel and a new bias, so the BatchNorm disappears and the outputs stay equal to float precision.

- torch: ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` replace the conv /
  linear module; the BatchNorm module becomes ``nn.Identity`` (its layer leaves the graph).
- ONNX: a ``BatchNormalization`` (inference mode) whose input comes from a ``Conv`` or ``Gemm``
  with stored weights, and whose input no other node reads, is folded into that node's W and
  B / C; the BatchNormalization node and its tensors are removed and the conv takes over its
  output name.

Selection: BatchNorm layers, or the conv / linear layers that feed one — both mean the same
pair.  ``changed`` lists both layers of every pair; the half that was not selected is in
``coupled``.  ``applies_to`` names the reason a BatchNorm has no foldable producer (its input
comes from an Add, a model input, a producer whose output is also read elsewhere, …).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.compress.techniques.lowrank import PROGRAM_HINT, drop_unused_tensors
from effstudio.core.graph import Layer, LayerGraph
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

TORCH_BN_OPS = frozenset({"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm"})
TORCH_PRODUCER_OPS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                                "conv_transpose3d", "linear"})
ONNX_PRODUCER_OPS = frozenset({"Conv", "Gemm"})


@dataclass
class FoldBatchNormConfig(TechniqueConfig):
    technique = "fold.batchnorm"
    version = 1


def _is_bn(layer: Layer, backend: str) -> bool:
    return layer.op_type == "BatchNormalization" if backend == "onnx" else layer.op_type in TORCH_BN_OPS


def _is_producer(layer: Layer, backend: str) -> bool:
    return layer.op_type in (ONNX_PRODUCER_OPS if backend == "onnx" else TORCH_PRODUCER_OPS)


def _readers(graph: LayerGraph, tensor: str) -> list[str]:
    return [lay.name for lay in graph.layers if tensor in lay.inputs]


def find_pair(layer: Layer, loaded: LoadedModel) -> tuple[str, str] | str:
    """(producer, batchnorm) names of the pair ``layer`` belongs to, or the reason it has none."""
    graph, backend = loaded.graph, loaded.backend
    if _is_bn(layer, backend):
        bn = layer
        if not bn.inputs:
            return "it has no input"
        src = graph.producers().get(bn.inputs[0])
        if src is None:
            return "its input is a model input, not the output of a conv/linear layer"
        prod = graph.layer(src)
        if not _is_producer(prod, backend):
            return f"its input comes from a {prod.op_type} ({prod.name}), not from a conv/linear layer"
    elif _is_producer(layer, backend):
        prod = layer
        readers = _readers(graph, prod.outputs[0]) if prod.outputs else []
        if len(readers) != 1 or not _is_bn(graph.layer(readers[0]), backend):
            return "its output does not feed a BatchNorm alone"
        bn = graph.layer(readers[0])
    else:
        return f"a {layer.op_type} is neither a BatchNorm nor a conv/linear layer feeding one"
    out = prod.outputs[0] if prod.outputs else ""
    others = [r for r in _readers(graph, out) if r != bn.name]
    if others:
        return f"the output of {prod.name} is also read by {others[0]}, so it cannot absorb the BatchNorm"
    if out in {t.name for t in graph.outputs}:
        return f"the output of {prod.name} is also a model output"
    if len(prod.outputs) != 1:
        return f"{prod.name} has {len(prod.outputs)} outputs"
    why = _onnx_check(prod, bn, loaded) if backend == "onnx" else _torch_check(prod, bn, loaded)
    return why if why is not None else (prod.name, bn.name)


# --- backend checks --------------------------------------------------------------------------
def _torch_check(prod: Layer, bn: Layer, loaded: LoadedModel) -> str | None:
    from torch import nn

    if loaded.torch_module is None:
        return "the torch model has no module to edit"
    for lay in (prod, bn):
        if lay.name != lay.scope:
            return f"{lay.name} is not the only op of its module (a functional call or a module used twice)"
    try:
        pm, bm = loaded.torch_module.get_submodule(prod.name), loaded.torch_module.get_submodule(bn.name)
    except AttributeError:
        return f"no modules at {prod.name!r} / {bn.name!r} to fuse"
    if not isinstance(bm, nn.modules.batchnorm._BatchNorm):
        hint = PROGRAM_HINT if loaded.format in ("torch-export", "torchscript") else ""
        return f"the module at {bn.name!r} is a {type(bm).__name__}, not a BatchNorm{hint}"
    if bm.running_mean is None or bm.running_var is None:
        return "the BatchNorm keeps no running statistics (track_running_stats=False)"
    if bm.training:
        return "the BatchNorm is in training mode"
    if isinstance(pm, nn.Linear):
        shape = loaded.graph.tensors.get(prod.outputs[0])
        if shape is None or shape.shape is None or len(shape.shape) != 2:
            return f"{prod.name}'s output is not (batch, features), so BatchNorm does not act on its features"
        if bm.num_features != pm.out_features:
            return f"BatchNorm features {bm.num_features} != {pm.out_features} outputs of {prod.name}"
        return None
    if not isinstance(pm, nn.modules.conv._ConvNd):
        return f"the module at {prod.name!r} is a {type(pm).__name__}, not a Conv or Linear"
    if bm.num_features != pm.out_channels:
        return f"BatchNorm features {bm.num_features} != {pm.out_channels} output channels of {prod.name}"
    return None


def _onnx_nodes(proto) -> dict:
    return {n.name: n for n in proto.graph.node}


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _onnx_check(prod: Layer, bn: Layer, loaded: LoadedModel) -> str | None:
    nodes = _onnx_nodes(loaded.onnx_model)
    p, b = nodes.get(prod.name), nodes.get(bn.name)
    if p is None or b is None:
        return "its nodes were not found in the model"
    if int(_attr(b, "training_mode", 0)) or (len(b.output) > 1 and any(b.output[1:])):
        return "the BatchNormalization runs in training mode"
    if int(_attr(b, "spatial", 1)) == 0:
        return "a non-spatial BatchNormalization (opset < 9) is not folded"
    stored = {w.name: w for w in prod.weights} | {w.name: w for w in bn.weights}
    if any(i not in stored for i in b.input[1:5]):
        return "the BatchNormalization's scale/bias/mean/variance are computed, not stored"
    if len(p.input) < 2 or p.input[1] not in stored:
        return f"{prod.name}'s weight is computed, not stored"
    if len(p.input) > 2 and p.input[2] and p.input[2] not in stored:
        return f"{prod.name}'s bias is computed, not stored"
    for i in p.input[1:3]:
        if i and stored[i].shared:
            return f"{prod.name}'s tensor {i!r} is shared with another layer"
    if p.op_type == "Gemm":
        shape = loaded.graph.tensors.get(p.output[0])
        if int(_attr(p, "transA", 0)) not in (0, 1) or shape is None or shape.shape is None or len(shape.shape) != 2:
            return f"{prod.name}'s output shape is unknown"
    return None


# --- the technique -------------------------------------------------------------------------------
@register
class FoldBatchNorm(Technique):
    name = "fold.batchnorm"
    title = "Fold BatchNorm into the preceding conv/linear"
    config_cls = FoldBatchNormConfig
    backends = frozenset({"onnx", "torch"})

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        pair = find_pair(layer, loaded)
        return pair if isinstance(pair, str) else None

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        if loaded.backend == "onnx":
            return Expectation("neither", "onnxruntime already fuses Conv+BatchNormalization when it loads a model, "
                               "so expect no measurable speed-up; the BatchNorm tensors leave the file and "
                               "outputs stay equal to float precision.")
        return Expectation("faster", "One op fewer per conv/linear + BatchNorm pair (eager torch runs BatchNorm as "
                           "its own kernel); outputs stay equal to float precision.")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, FoldBatchNormConfig)
        self.check_selection(loaded, config, selection)
        pairs: dict[str, str] = {}  # producer -> batchnorm, in graph order
        for name in selection:
            prod, bn = find_pair(loaded.graph.layer(name), loaded)  # type: ignore[misc]
            pairs[prod] = bn
        order = {n: i for i, n in enumerate(loaded.graph.names())}
        pairs = dict(sorted(pairs.items(), key=lambda kv: order[kv[0]]))
        progress.update(0.1, f"folding {len(pairs)} BatchNorm layer(s)")
        if loaded.backend == "onnx":
            new = self._apply_onnx(loaded, pairs, progress.sub(0.1, 1.0))
        else:
            new = self._apply_torch(loaded, pairs, progress.sub(0.1, 1.0))
        changed = [n for n in loaded.graph.names() if n in pairs or n in pairs.values()]
        chosen = set(selection)
        coupled = [n for n in changed if n not in chosen]
        p0, p1 = loaded.graph.totals()["params"], new.graph.totals()["params"]
        notes = [f"Folded {len(pairs)} BatchNorm layer(s) into their producers: "
                 + ", ".join(f"{b} → {p}" for p, b in list(pairs.items())[:6])
                 + (f" and {len(pairs) - 6} more" if len(pairs) > 6 else "") + ".",
                 f"The BatchNorm layers leave the graph; parameters {p0:,} → {p1:,}.",
                 self.expectation(loaded, config).text]
        progress.update(1.0, "folded")
        return StepResult(model=new, changed=changed, coupled=coupled, notes=notes,
                          expectation=self.expectation(loaded, config),
                          extra={"pairs": dict(pairs), "params": {"before": p0, "after": p1}})

    def _apply_torch(self, loaded, pairs, progress):
        from torch import nn
        from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

        from effstudio.core.compress.materialize import loaded_from_torch_module

        module = copy.deepcopy(loaded.torch_module)
        for prod, bn in pairs.items():
            pm, bm = module.get_submodule(prod), module.get_submodule(bn)
            if isinstance(pm, nn.Linear):
                fused = fuse_linear_bn_eval(pm, bm)
            else:
                fused = fuse_conv_bn_eval(pm, bm, transpose=isinstance(pm, nn.modules.conv._ConvTransposeNd))
            module.set_submodule(prod, fused)
            module.set_submodule(bn, nn.Identity())
        progress.update(0.2, "re-exporting the folded module")
        return loaded_from_torch_module(module, loaded, progress=progress.sub(0.2, 1.0))

    def _apply_onnx(self, loaded, pairs, progress):
        import onnx
        from onnx import numpy_helper

        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        proto = onnx.ModelProto()
        proto.CopyFrom(loaded.onnx_model)
        graph = proto.graph
        inits = {t.name: t for t in graph.initializer}
        taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        nodes = _onnx_nodes(proto)
        stored = _stored(proto)
        arr = {}

        def get(name: str) -> np.ndarray:
            if name not in arr:
                arr[name] = numpy_helper.to_array(stored[name])
            return arr[name]

        dropped: set[str] = set()
        bn_names = set(pairs.values())
        for prod, bn in pairs.items():
            p, b = nodes[prod], nodes[bn]
            scale, beta, mean, var = (get(i).astype(np.float64) for i in b.input[1:5])
            s = scale / np.sqrt(var + float(_attr(b, "epsilon", 1e-5)))
            w = get(p.input[1])
            has_bias = len(p.input) > 2 and bool(p.input[2])
            if p.op_type == "Conv":
                bias = get(p.input[2]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
                new_w = w.astype(np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))
                new_b = (bias - mean) * s + beta
            else:  # Gemm: Y = α·A'·B' + β·C, B' (K, N); BN acts on the N columns
                trans_b = int(_attr(p, "transB", 0))
                new_w = w.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
                c = get(p.input[2]).astype(np.float64) * float(_attr(p, "beta", 1.0)) if has_bias else 0.0
                new_b = (c - mean) * s + beta
                _set_attr(p, "beta", 1.0)
            _put(graph, inits, p.input[1], new_w.astype(w.dtype))
            if has_bias:
                _put(graph, inits, p.input[2], np.asarray(new_b).astype(w.dtype))
            else:
                bname = _fresh(taken, f"{p.input[1]}_bn_bias")
                graph.initializer.append(numpy_helper.from_array(np.asarray(new_b).astype(w.dtype), bname))
                while len(p.input) < 3:
                    p.input.append("")
                p.input[2] = bname
            old_out = p.output[0]
            p.output[0] = b.output[0]
            dropped.add(old_out)
            progress.update(None, f"folded {bn} into {prod}")
        keep = [n for n in graph.node if n.name not in bn_names]
        removed = [n for n in graph.node if n.name in bn_names]
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_tensors(graph, {i for n in removed for i in n.input[1:]})
        vi = [v for v in graph.value_info if v.name not in dropped]
        del graph.value_info[:]
        graph.value_info.extend(vi)
        progress.update(0.3, "loading the folded model")
        return loaded_from_onnx_proto(proto, loaded, name="bnfolded", progress=progress.sub(0.3, 1.0))


def _stored(proto) -> dict:
    out = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] not in out:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[n.output[0]] = a.t
    return out


def _put(graph, inits: dict, name: str, value: np.ndarray) -> None:
    """Write ``value`` as tensor ``name`` (an initializer, or a Constant node's value)."""
    from onnx import numpy_helper

    t = numpy_helper.from_array(value, name)
    if name in inits:
        inits[name].CopyFrom(t)
        return
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(t)
            return
    raise CompressError(f"fold.batchnorm: tensor {name!r} is not stored in the model")


def _set_attr(node, name: str, value: float) -> None:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))
            return
    node.attribute.append(helper.make_attribute(name, value))


def _fresh(taken: set[str], base: str) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name

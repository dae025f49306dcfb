"""``prune.unstructured``: zero the smallest-magnitude weights (L1), per layer or globally.

torch models go through ``torch.nn.utils.prune`` (``l1_unstructured`` / ``global_unstructured``
then ``prune.remove``, so the zeros are written into the weights); ONNX models get the same rule
in numpy on the Conv / Gemm / MatMul weight initializers.  ``amount`` is the fraction of the
weights set to zero: ``round(amount × n)`` of each selected weight (``scope="layer"``) or of all
of them together under one threshold (``scope="global"``).

The tensors stay dense, so nothing runs faster and the raw file is as large as before; what
shrinks is the file after zip/deflate (``extra["compressed_bytes"]``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.graph import Layer, Weight
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

TORCH_OPS = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                       "conv_transpose3d", "linear", "matmul", "mm", "addmm", "bmm"})
ONNX_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

DENSE_SENTENCE = ("The zeros are still stored and multiplied by dense kernels: it will not run faster and the raw "
                  "file keeps its size; the weights compress better (zip/deflate).")


@dataclass
class UnstructuredPruneConfig(TechniqueConfig):
    technique = "prune.unstructured"
    version = 1
    amount: float = 0.5  # fraction of the selected weights set to zero
    scope: Literal["layer", "global"] = "layer"  # one threshold per layer, or one over the selection

    def validate(self) -> None:
        if not 0.0 <= float(self.amount) <= 1.0:
            raise CompressError(f"{self.technique}: amount must be in [0, 1], got {self.amount}")
        if self.scope not in ("layer", "global"):
            raise CompressError(f"{self.technique}: scope must be 'layer' or 'global', got {self.scope!r}")


def prunable_weight(layer: Layer, loaded: LoadedModel) -> Weight | None:
    """The layer's weight matrix / kernel (ndim ≥ 2, a float parameter), or None."""
    if loaded.backend == "onnx":
        if layer.op_type not in ONNX_OPS:
            return None
        node_inputs = _onnx_node_inputs(loaded, layer.name)
        names = {w.name: w for w in layer.weights}
        for i in (1, 0):  # the weight is input 1 (Conv W, Gemm B, MatMul B), or a stored MatMul A
            if i < len(node_inputs) and node_inputs[i] in names:
                w = names[node_inputs[i]]
                return w if len(w.shape) >= 2 and w.dtype.startswith(("float", "bfloat")) else None
        return None
    if layer.op_type not in TORCH_OPS:
        return None
    for w in layer.weights:
        if len(w.shape) >= 2 and w.dtype.startswith(("float", "bfloat")):
            return w
    return None


def weight_refusal(layer: Layer, loaded: LoadedModel, verb: str) -> str | None:
    """Why ``verb`` (e.g. "prune") cannot act on ``layer``'s weight, or None when it can."""
    w = prunable_weight(layer, loaded)
    if w is None:
        kinds = "Conv/Gemm/MatMul" if loaded.backend == "onnx" else "conv/linear/matmul"
        return f"a {layer.op_type} has no {kinds} float weight to {verb}"
    if w.shared:
        return f"its weight {w.name!r} is shared with another layer"
    return None


def _onnx_node_inputs(loaded: LoadedModel, name: str) -> list[str]:
    for n in loaded.onnx_model.graph.node:
        if n.name == name:
            return list(n.input)
    return []


def k_of(amount: float, n: int) -> int:
    """How many of ``n`` weights ``amount`` zeroes (the rule torch.nn.utils.prune uses)."""
    return round(float(amount) * n)


def zero_smallest(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Copies of ``arrays`` with their ``k`` smallest-magnitude entries (over all of them) set to zero."""
    flat = np.concatenate([np.abs(a).reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    mask = np.ones(flat.size, dtype=bool)
    if k > 0:
        mask[np.argsort(flat, kind="stable")[:k]] = False
    out, start = [], 0
    for a in arrays:
        m = mask[start:start + a.size].reshape(a.shape)
        out.append(np.where(m, a, np.zeros((), a.dtype)).astype(a.dtype))
        start += a.size
    return out


@register
class UnstructuredPrune(Technique):
    name = "prune.unstructured"
    title = "Unstructured magnitude pruning (L1)"
    config_cls = UnstructuredPruneConfig
    backends = frozenset({"onnx", "torch"})

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        return weight_refusal(layer, loaded, "prune")

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        return Expectation("smaller-only", f"Smaller after zip only. {DENSE_SENTENCE}")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        from effstudio.core.compress.sizes import compressed_weight_bytes

        assert isinstance(config, UnstructuredPruneConfig)
        config.validate()
        self.check_selection(loaded, config, selection)
        weights = {name: prunable_weight(loaded.graph.layer(name), loaded) for name in selection}
        progress.update(0.0, "measuring the compressed size before pruning")
        before = compressed_weight_bytes(loaded, progress.sub(0.0, 0.2))
        progress.update(0.2, f"pruning {len(selection)} layer(s)")
        if loaded.backend == "onnx":
            new, zeros = self._apply_onnx(loaded, config, weights, progress.sub(0.2, 0.5))
        else:
            new, zeros = self._apply_torch(loaded, config, weights, progress.sub(0.2, 0.5))
        after = compressed_weight_bytes(new, progress.sub(0.9, 1.0))
        changed = [name for name in selection if zeros[name]["added"] > 0]
        total = sum(z["numel"] for z in zeros.values())
        zeroed = sum(z["zeros"] for z in zeros.values())
        notes = [f"{zeroed:,} of {total:,} selected weights are zero ({zeroed / max(total, 1):.1%}, "
                 f"{config.scope} threshold).",
                 f"Weights after deflate: {before:,} → {after:,} bytes ({(after - before) / max(before, 1):+.1%}).",
                 DENSE_SENTENCE]
        unchanged = [n for n in selection if n not in changed]
        if unchanged:
            notes.append(f"{len(unchanged)} selected layer(s) kept every weight: {', '.join(unchanged[:5])}.")
        progress.update(1.0, "pruned")
        return StepResult(
            model=new, changed=changed, coupled=[], notes=notes, expectation=self.expectation(loaded, config),
            extra={"compressed_bytes": {"before": before, "after": after},
                   "sparsity": {n: z["zeros"] / max(z["numel"], 1) for n, z in zeros.items()},
                   "zeroed": zeroed, "weights": total})

    # --- backends ---------------------------------------------------------------------------
    def _apply_onnx(self, loaded, config, weights, progress):
        import onnx
        from onnx import numpy_helper

        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        proto = onnx.ModelProto()
        proto.CopyFrom(loaded.onnx_model)
        tensors = {t.name: t for t in proto.graph.initializer}
        for n in proto.graph.node:  # weights held in Constant nodes
            if n.op_type == "Constant" and n.output and n.output[0] not in tensors:
                for a in n.attribute:
                    if a.name == "value":
                        tensors[n.output[0]] = a.t
        names = [w.name for w in weights.values()]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise CompressError(f"{self.name}: weight(s) {', '.join(missing)} are not stored in the model")
        arrays = {n: numpy_helper.to_array(tensors[n]) for n in names}
        if config.scope == "global":
            k = k_of(config.amount, sum(a.size for a in arrays.values()))
            pruned = dict(zip(names, zero_smallest(list(arrays.values()), k), strict=True))
        else:
            pruned = {n: zero_smallest([a], k_of(config.amount, a.size))[0] for n, a in arrays.items()}
        for n, a in pruned.items():
            tensors[n].CopyFrom(numpy_helper.from_array(a, n))
        zeros = {layer: _zero_stats(arrays[w.name], pruned[w.name]) for layer, w in weights.items()}
        progress.update(0.5, "loading the pruned model")
        new = loaded_from_onnx_proto(proto, loaded, name="pruned", progress=progress.sub(0.5, 1.0))
        return new, zeros

    def _apply_torch(self, loaded, config, weights, progress):
        import torch
        from torch.nn.utils import prune

        from effstudio.core.compress.materialize import loaded_from_torch_module

        if loaded.torch_module is None:
            raise CompressError(f"{self.name}: the torch model has no module to edit")
        module = copy.deepcopy(loaded.torch_module)
        targets = []
        for layer, w in weights.items():
            owner_path, _, attr = w.name.rpartition(".")
            try:
                owner = module.get_submodule(owner_path)
            except AttributeError:
                raise CompressError(f"{self.name}: {layer}: weight {w.name!r} is not a module parameter") from None
            if not isinstance(getattr(owner, attr, None), torch.nn.Parameter):
                raise CompressError(f"{self.name}: {layer}: weight {w.name!r} is not a module parameter")
            targets.append((layer, owner, attr))
        before = {layer: getattr(owner, attr).detach().cpu().numpy().copy() for layer, owner, attr in targets}
        unique = list({(id(o), a): (o, a) for _l, o, a in targets}.values())
        if config.scope == "global":
            k = k_of(config.amount, sum(getattr(o, a).numel() for o, a in unique))
            prune.global_unstructured(unique, pruning_method=prune.L1Unstructured, amount=k)
        else:
            for o, a in unique:
                prune.l1_unstructured(o, a, amount=k_of(config.amount, getattr(o, a).numel()))
        for o, a in unique:
            prune.remove(o, a)  # write the zeros into the parameter, drop the mask
        zeros = {layer: _zero_stats(before[layer], getattr(owner, attr).detach().cpu().numpy())
                 for layer, owner, attr in targets}
        progress.update(0.3, "re-exporting the pruned module")
        new = loaded_from_torch_module(module, loaded, progress=progress.sub(0.3, 1.0))
        return new, zeros


def _zero_stats(before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    return {"numel": int(after.size), "zeros": int((after == 0).sum()),
            "added": int(((after == 0) & (before != 0)).sum())}

"""``prune.channels``: structured channel / filter pruning, for torch and ONNX models.

One technique, two backends:
- torch modules: Torch-Pruning's DepGraph (:mod:`.prune_channels_torch`), then re-export;
- ONNX models: the same dependency analysis done on the ONNX graph
  (:mod:`effstudio.core.compress.onnx_channel_groups`, :mod:`.prune_channels_onnx`).

The selected layers are the *roots*: convs / linears (ONNX: Conv / Gemm / MatMul with a stored
weight) whose output channels go.  ``amount`` of each root's channels are removed (the kept
count rounded to a multiple of ``round_to`` when set), chosen by the group importance.  Every
layer coupled to a root (its BatchNorm, the consumers' input channels, the other side of a
residual add, concat slices, depthwise convs) changes with it: ``StepResult.coupled`` lists them
and :func:`preview` shows them before applying.  A layer whose output features are the model's
output (the classifier) is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

TORCH_ROOT_OPS = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "linear"})
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")
TAYLOR_SAMPLES = 256  # training digits used for the Taylor gradients


@dataclass
class ChannelPruneConfig(TechniqueConfig):
    technique = "prune.channels"
    version = 1
    amount: float = 0.3  # fraction of each selected layer's output channels removed
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = "l1"
    round_to: int | None = None  # keep a multiple of this many channels (e.g. 8 for SIMD-friendly widths)

    def validate(self) -> None:
        if not 0.0 <= float(self.amount) < 1.0:
            raise CompressError(f"{self.technique}: amount must be in [0, 1), got {self.amount}")
        if self.importance not in IMPORTANCES:
            raise CompressError(f"{self.technique}: importance must be one of {', '.join(IMPORTANCES)}, "
                                f"got {self.importance!r}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise CompressError(f"{self.technique}: round_to must be a positive integer or null, "
                                f"got {self.round_to!r}")


def _taylor_data(loaded: LoadedModel):
    """(inputs, labels) from the digits training split for a trained demo, else None."""
    from effstudio.core.compress.evaluate import demo_name
    from effstudio.core.zoo import DEMOS, digits

    name = demo_name(loaded)
    spec = DEMOS.get(name) if name else None
    if spec is None or not spec.trained or len(loaded.graph.inputs) != 1:
        return None
    x, y = digits("train", size=spec.input_shape[-1])
    return {loaded.graph.inputs[0].name: np.ascontiguousarray(x[:TAYLOR_SAMPLES])}, np.asarray(y[:TAYLOR_SAMPLES])


@register
class ChannelPrune(Technique):
    name = "prune.channels"
    title = "Channel pruning (structured)"
    config_cls = ChannelPruneConfig
    backends = frozenset({"onnx", "torch"})

    def __init__(self) -> None:
        self._cache: tuple[object, object] | None = None  # (ModelProto, OnnxChannelGraph) of the last model

    def _onnx_groups(self, loaded: LoadedModel):
        from effstudio.core.compress.onnx_channel_groups import OnnxChannelGraph

        proto = loaded.onnx_model
        if self._cache is None or self._cache[0] is not proto:
            self._cache = (proto, OnnxChannelGraph(proto))
        return self._cache[1]

    # --- contract -----------------------------------------------------------------------------
    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        if loaded.backend == "onnx":
            cg = self._onnx_groups(loaded)
            why = cg.root_problem(layer.name)
            if why is not None:
                return why
            return cg.group(layer.name).blocked
        from effstudio.core.compress.techniques.prune_channels_torch import output_layers, root_problem

        if layer.op_type not in TORCH_ROOT_OPS:
            return f"a {layer.op_type} has no output channels of its own to prune"
        if loaded.torch_module is None:
            return "the torch model has no module to edit"
        why = root_problem(loaded.torch_module, layer.name)
        if why is not None:
            return why
        if layer.name in output_layers(loaded.graph):
            return "its output features are the model's output"
        return None

    def check_selection(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str]) -> None:
        super().check_selection(loaded, config, selection)
        assert isinstance(config, ChannelPruneConfig)
        if config.importance == "taylor":
            if loaded.backend == "onnx":
                raise CompressError(f"{self.name}: Taylor importance needs gradients, which ONNX models do not "
                                    f"give here; use l1, l2 or bn_scale")
            if _taylor_data(loaded) is None:
                raise CompressError(f"{self.name}: Taylor importance needs labelled data, which only the trained "
                                    f"demo models have here; use l1, l2 or bn_scale")

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        return Expectation("faster-and-smaller",
                           "Removes whole channels: fewer weights and fewer MACs in the selected and coupled "
                           "layers, so dense kernels do less work; accuracy drops until the model is fine-tuned.")

    def preview(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str]) -> dict[str, list[str]]:
        """Selected layer -> the other layers its channel group changes (before applying)."""
        if loaded.backend == "onnx":
            from effstudio.core.compress.techniques.prune_channels_onnx import onnx_preview

            return onnx_preview(self._onnx_groups(loaded), selection)
        from effstudio.core.compress.techniques.prune_channels_torch import torch_preview

        return torch_preview(loaded, selection)

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, ChannelPruneConfig)
        config.validate()
        self.check_selection(loaded, config, selection)
        if loaded.backend == "onnx":
            new, report, changed = self._apply_onnx(loaded, config, selection, progress)
        else:
            new, report, changed = self._apply_torch(loaded, config, selection, progress)
        before, after = loaded.graph.totals()["params"], new.graph.totals()["params"]
        sel = set(selection)
        notes = []
        for g in report["groups"]:
            roots = ", ".join(g["roots"])
            extra = f" (with {len(g['coupled'])} coupled layer(s))" if g["coupled"] else ""
            notes.append(f"{roots}: kept {g['kept']} of {g['channels']} channels{extra}.")
        notes.append(f"Parameters: {before:,} → {after:,} ({(after - before) / max(before, 1):+.1%}).")
        notes.append("Accuracy usually needs fine-tuning to come back after removing channels.")
        progress.update(1.0, "pruned")
        return StepResult(model=new, changed=changed, coupled=[n for n in changed if n not in sel], notes=notes,
                          expectation=self.expectation(loaded, config),
                          extra={"groups": report["groups"], "params": {"before": before, "after": after},
                                 "backend": loaded.backend})

    # --- backends ---------------------------------------------------------------------------
    def _apply_onnx(self, loaded, config, selection, progress):
        from effstudio.core.compress.materialize import loaded_from_onnx_proto
        from effstudio.core.compress.techniques.prune_channels_onnx import prune_onnx_channels

        pruned, report, _cg, _removals = prune_onnx_channels(
            loaded.onnx_model, selection, amount=config.amount, importance=config.importance,
            round_to=config.round_to, progress=progress.sub(0.0, 0.5))
        changed = onnx_changed_nodes(loaded.onnx_model, pruned)
        progress.update(0.5, "loading the pruned model")
        new = loaded_from_onnx_proto(pruned, loaded, name="pruned", progress=progress.sub(0.5, 1.0))
        return new, report, changed

    def _apply_torch(self, loaded, config, selection, progress):
        from effstudio.core.compress.materialize import loaded_from_torch_module
        from effstudio.core.compress.techniques.prune_channels_torch import prune_torch_channels

        if loaded.torch_module is None:
            raise CompressError(f"{self.name}: the torch model has no module to edit")
        module, report = prune_torch_channels(
            loaded, selection, amount=config.amount, importance=config.importance, round_to=config.round_to,
            taylor_data=_taylor_data(loaded) if config.importance == "taylor" else None,
            progress=progress.sub(0.0, 0.4))
        changed = torch_changed_layers(loaded, module)
        progress.update(0.4, "re-exporting the pruned module")
        try:
            new = loaded_from_torch_module(module, loaded, progress=progress.sub(0.4, 1.0))
        except CompressError:
            raise
        except Exception as e:  # torch.export of the pruned module failed
            raise CompressError(f"{self.name}: the pruned module does not export: {type(e).__name__}: "
                                f"{(str(e).strip().splitlines() or [''])[0]}") from e
        return new, _names(report, loaded), changed


def _names(report: dict, loaded: LoadedModel) -> dict:
    """Module paths in the torch report -> layer names of the parent graph."""
    from effstudio.core.compress.techniques.prune_channels_torch import _module_layers

    for g in report["groups"]:
        g["roots"] = [n for p in g["roots"] for n in _module_layers(loaded.graph, p)]
        g["coupled"] = [n for p in g["coupled"] for n in _module_layers(loaded.graph, p)]
    return report


def onnx_changed_nodes(old, new) -> list[str]:
    """Names of the nodes whose stored inputs or attributes differ between two ModelProtos."""
    from onnx import numpy_helper

    def stored(model):
        out = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.name == "value":
                        out[n.output[0]] = a.t
        return out

    a, b = stored(old), stored(new)
    new_nodes = {n.name: n for n in new.graph.node}
    changed = []
    for n in old.graph.node:
        if n.op_type == "Constant":
            continue
        m = new_nodes.get(n.name)
        if m is None or list(m.attribute) != list(n.attribute):
            changed.append(n.name)
            continue
        for t in n.input:
            if t in a and (t not in b or list(a[t].dims) != list(b[t].dims)
                           or not np.array_equal(numpy_helper.to_array(a[t]), numpy_helper.to_array(b[t]))):
                changed.append(n.name)
                break
    return changed


def torch_changed_layers(loaded: LoadedModel, module) -> list[str]:
    """Layer names (parent graph) of the modules whose parameters or buffers changed shape."""
    from effstudio.core.compress.techniques.prune_channels_torch import _module_layers

    old = loaded.torch_module.state_dict()
    new = module.state_dict()
    paths: list[str] = []
    for key, t in old.items():
        u = new.get(key)
        if u is None or tuple(u.shape) != tuple(t.shape):
            path = key.rpartition(".")[0]
            if path not in paths:
                paths.append(path)
    order = {name: i for i, name in enumerate(loaded.graph.names())}
    names = {n for p in paths for n in _module_layers(loaded.graph, p)}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def preview(loaded: LoadedModel, config: ChannelPruneConfig, selection: list[str]) -> dict[str, list[str]]:
    """Selected layer -> the coupled layers that change with it (for the GUI, before applying)."""
    from effstudio.core.compress.registry import get_technique

    return get_technique("prune.channels").preview(loaded, config, selection)

"""Structured channel pruning of a torch module with Torch-Pruning's DepGraph.

``DependencyGraph.build_dependency`` traces the module once; ``get_pruning_group(module,
prune_out_channels, idxs)`` gives every layer that must lose the same channels (BatchNorm,
the next convs' input channels, both sides of a residual add, concat slices, depthwise convs).
The group's importance (L1 / L2 magnitude, BatchNorm scale, or first-order Taylor with
gradients from a batch of data) picks the channels; ``group.prune()`` edits the modules.

Used by :mod:`.prune_channels` (the registered technique); no registration here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from effstudio.core.compress.base import CompressError
from effstudio.core.graph import LayerGraph
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

ROOT_TYPES_DOC = "Conv1d/2d/3d or Linear"


def keep_count(channels: int, amount: float, round_to: int | None) -> int:
    """Channels kept when ``amount`` of ``channels`` go, rounded to a multiple of ``round_to``
    (at least one channel, or ``round_to`` when that is not more than there are)."""
    keep = channels - round(amount * channels)
    if round_to and round_to > 1:
        keep = round(keep / round_to) * round_to
        keep = max(keep, round_to)
        if keep > channels:
            keep = channels
    return max(1, min(channels, keep))


def output_layers(graph: LayerGraph) -> set[str]:
    """Weighted layers whose output features reach a model output through weight-free layers only
    (the classifier): their output channels are the model's output shape."""
    prod = graph.producers()
    out: set[str] = set()
    seen: set[str] = set()
    stack = [prod[t.name] for t in graph.outputs if t.name in prod]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        layer = graph.layer(name)
        if any(w.is_param and len(w.shape) >= 2 for w in layer.weights):
            out.add(name)
            continue
        stack.extend(prod[t] for t in layer.inputs if t in prod)
    return out


def _module_layers(graph: LayerGraph, path: str) -> list[str]:
    """Layer names of module ``path``: the layer itself, or the layers in its scope."""
    if path in graph:
        return [path]
    return [lay.name for lay in graph.layers if lay.scope == path]


def root_problem(module, name: str) -> str | None:
    """None if the module at ``name`` is a conv/linear whose output channels can be chosen."""
    import torch.nn as nn

    try:
        mod = module.get_submodule(name)
    except AttributeError:
        return "not a module of the model (channel pruning works on conv/linear modules)"
    if isinstance(mod, nn.modules.conv._ConvNd):
        if mod.transposed:
            return "a transposed conv"
        if mod.groups != 1:
            if mod.groups == mod.in_channels:
                return "a depthwise conv: its channels follow its input (prune the conv before it)"
            return f"a grouped conv (groups={mod.groups})"
        return None
    if isinstance(mod, nn.Linear):
        return None
    return f"a {type(mod).__name__} has no output channels of its own to prune"


@dataclass
class TorchGroups:
    """A dependency graph of a module copy, and how its modules are named."""

    module: object
    dg: object
    names: dict  # module object -> module path (inside this copy only)

    @classmethod
    def build(cls, module, example: dict) -> TorchGroups:
        import torch
        import torch_pruning as tp

        with torch.enable_grad():  # DepGraph traces through autograd
            try:
                dg = tp.DependencyGraph().build_dependency(module, example_inputs=example, verbose=False)
            except Exception as e:  # torch-pruning traces the forward; many things can go wrong
                raise CompressError(f"prune.channels: cannot trace the module's channel dependencies: "
                                    f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}") from e
        return cls(module, dg, {m: n for n, m in module.named_modules()})

    def group(self, path: str, idxs: list[int]):
        import torch_pruning as tp

        mod = self.module.get_submodule(path)
        fn = tp.prune_linear_out_channels if isinstance(mod, tp.ops.TORCH_LINEAR) else tp.prune_conv_out_channels
        return self.dg.get_pruning_group(mod, fn, idxs=idxs)

    def members(self, group) -> tuple[list[str], list[str]]:
        """(module paths losing output channels, module paths whose weights change) of a group."""
        import torch_pruning as tp

        outs, changed = [], []
        for dep, _idxs in group:
            mod = dep.target.module
            path = self.names.get(mod)
            if path is None or not any(True for _ in mod.parameters(recurse=False)):
                continue  # an op node (add, concat, flatten ...) without weights
            if path not in changed:
                changed.append(path)
            if dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels) and path not in outs:
                outs.append(path)
        return outs, changed


def torch_preview(loaded: LoadedModel, selection: list[str]) -> dict[str, list[str]]:
    """Selected layer -> the other layers (names) its pruning group changes."""
    groups = TorchGroups.build(copy.deepcopy(loaded.torch_module), _example(loaded))
    out: dict[str, list[str]] = {}
    for name in selection:
        if root_problem(groups.module, name) is not None:
            out[name] = []
            continue
        _outs, changed = groups.members(groups.group(name, [0]))
        out[name] = [lay for p in changed if p != name for lay in _module_layers(loaded.graph, p)]
    return out


def _example(loaded: LoadedModel) -> dict:
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in loaded.example_inputs.items()}


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise CompressError(f"prune.channels: unknown importance {kind!r}")


def _taylor_gradients(module, data, progress: Progress) -> None:
    """Fill ``.grad`` of every parameter with the cross-entropy gradient of a batch of ``data``."""
    import torch
    import torch.nn.functional as F

    inputs, labels = data
    module.zero_grad()
    was_training = module.training
    module.eval()  # keep BatchNorm statistics fixed
    with torch.enable_grad():
        logits = module(**{k: torch.from_numpy(v.copy()) for k, v in inputs.items()})
        loss = F.cross_entropy(logits, torch.from_numpy(labels.astype("int64")))
        loss.backward()
    module.train(was_training)
    progress.update(0.3, "Taylor importance: gradients computed")


def prune_torch_channels(loaded: LoadedModel, selection: list[str], *, amount: float, importance: str,
                         round_to: int | None, taylor_data, progress: Progress) -> tuple[object, dict]:
    """A pruned copy of ``loaded.torch_module`` and a report: ``groups`` (list of dicts with the
    selected roots, the coupled modules, the channel counts), ``changed`` / ``coupled`` layer names."""
    import torch

    module = copy.deepcopy(loaded.torch_module).eval()
    progress.update(0.0, "tracing channel dependencies (torch-pruning)")
    groups = TorchGroups.build(module, _example(loaded))
    protected = set()
    for lay in output_layers(loaded.graph):
        protected.add(loaded.graph.layer(lay).scope or lay)
    flags = {p: p.requires_grad for p in module.parameters()}
    if importance == "taylor":
        for p in module.parameters():
            p.requires_grad_(True)
        _taylor_gradients(module, taylor_data, progress)
    imp = _importance(importance)
    done: dict[frozenset, str] = {}
    report_groups = []
    sel_set = set(selection)
    for i, name in enumerate(selection):
        progress.update(0.1 + 0.8 * i / max(1, len(selection)), f"pruning {name}")
        mod = module.get_submodule(name)
        channels = int(mod.weight.shape[0])
        full = groups.group(name, list(range(channels)))
        outs, changed = groups.members(full)
        key = frozenset(outs)
        if key in done:
            continue  # already pruned with an earlier selected layer of the same group
        bad = sorted(set(outs) & protected)
        if bad:
            raise CompressError(f"prune.channels: {name}: its channel group includes {bad[0]}, whose output "
                                f"features are the model's output")
        keep = keep_count(channels, amount, round_to)
        n_prune = channels - keep
        with torch.no_grad():
            scores = imp(full)
        if scores is None:
            why = ("no BatchNorm in its group" if importance == "bn_scale"
                   else "no gradients (Taylor)" if importance == "taylor" else "no weights to score")
            raise CompressError(f"prune.channels: {name}: importance {importance!r} cannot score its channels: {why}")
        order = torch.argsort(scores.detach().cpu(), stable=True)
        idxs = sorted(int(v) for v in order[:n_prune])
        done[key] = name
        if n_prune > 0:
            group = groups.group(name, idxs)
            if not groups.dg.check_pruning_group(group):
                raise CompressError(f"prune.channels: {name}: torch-pruning refuses to remove {n_prune} of "
                                    f"{channels} channels (a layer of its group would be left empty)")
            group.prune()
        report_groups.append({"roots": [p for p in outs if p in sel_set] or [name],
                              "coupled": [p for p in changed if p not in sel_set],
                              "channels": channels, "kept": keep, "removed": idxs})
    if importance == "taylor":
        module.zero_grad(set_to_none=True)
        for p in module.parameters():  # pruned parameters are new objects: they keep requires_grad
            if p in flags:
                p.requires_grad_(flags[p])
    progress.update(0.9, "pruned")
    return module, {"groups": report_groups}

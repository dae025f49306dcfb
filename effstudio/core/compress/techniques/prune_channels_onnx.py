"""Structured channel pruning of an ONNX model, on the graph itself.

The channel groups come from :mod:`effstudio.core.compress.onnx_channel_groups` (the DepGraph
analysis done on ONNX nodes); this module scores each group's channels and rewrites the
initializers.  Used by :mod:`.prune_channels` (the registered technique); no registration here.

Importance, like Torch-Pruning's group importances: ``l1`` / ``l2`` is the mean over the
group's weights (root filters, consumers' input slices, normalization scales) of each
channel's norm divided by that weight's mean channel norm; ``bn_scale`` is ``|gamma|`` of the
group's BatchNormalization / InstanceNormalization nodes (absent when the exporter folded
them into the convs); ``taylor`` needs gradients, which an ONNX model does not give here.
"""

from __future__ import annotations

import numpy as np

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.onnx_channel_groups import ChannelGroup, OnnxChannelGraph
from effstudio.core.compress.techniques.prune_channels_torch import keep_count
from effstudio.core.progress import Progress


def channel_scores(grp: ChannelGroup, cg: OnnxChannelGraph, importance: str) -> np.ndarray:
    """One score per group channel; the lowest go first."""
    if importance == "taylor":
        raise CompressError("prune.channels: Taylor importance needs gradients, which ONNX models do not give "
                            "here; use l1, l2 or bn_scale")
    if importance == "bn_scale":
        slices = [s for s in grp.slices if s.bn_scale]
        if not slices:
            raise CompressError(f"prune.channels: {grp.roots[0]}: no BatchNormalization in its channel group "
                                f"(the exporter may have folded it into the conv); use l1 or l2")
    elif importance in ("l1", "l2"):
        slices = [s for s in grp.slices if s.role in ("out", "in") or s.bn_scale]
    else:
        raise CompressError(f"prune.channels: unknown importance {importance!r}")
    p = 1 if importance in ("l1", "bn_scale") else 2
    total = np.zeros(grp.channels)
    count = np.zeros(grp.channels)
    for s in slices:
        arr = np.abs(cg.consts[s.tensor].astype(np.float64))
        moved = np.moveaxis(arr, s.axis, 0).reshape(arr.shape[s.axis], -1)
        per_pos = (moved ** p).sum(axis=1)
        valid = s.pos >= 0
        rows = np.where(valid, per_pos[np.where(valid, s.pos, 0)], 0.0).sum(axis=1)
        rows = rows ** (1.0 / p)
        present = valid.any(axis=1)
        mean = rows[present].mean() if present.any() else 0.0
        if mean > 0:
            total[present] += rows[present] / mean
            count[present] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def onnx_preview(cg: OnnxChannelGraph, selection: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in selection:
        if cg.root_problem(name) is not None:
            out[name] = []
            continue
        grp = cg.group(name)
        out[name] = [n for n in grp.layers if n != name]
    return out


def prune_onnx_channels(model, selection: list[str], *, amount: float, importance: str, round_to: int | None,
                        progress: Progress):
    """A pruned copy of ``model`` (a ModelProto with unique node names) and a report like the torch one."""
    from effstudio.core.compress.onnx_channel_groups import prune_groups

    progress.update(0.0, "finding channel groups on the ONNX graph")
    cg = OnnxChannelGraph(model)
    removals: list[tuple[ChannelGroup, list[int]]] = []
    report = []
    done: set[int] = set()
    sel = set(selection)
    for i, name in enumerate(selection):
        progress.update(0.1 + 0.6 * i / max(1, len(selection)), f"scoring the channels of {name}")
        why = cg.root_problem(name)
        if why is not None:
            raise CompressError(f"prune.channels: {name}: {why}")
        grp = cg.group(name)
        if grp.blocked:
            raise CompressError(f"prune.channels: {name}: {grp.blocked}")
        if id(grp) in done:
            continue
        done.add(id(grp))
        keep = keep_count(grp.channels, amount, round_to)
        scores = channel_scores(grp, cg, importance)
        idxs = sorted(int(v) for v in np.argsort(scores, kind="stable")[: grp.channels - keep])
        removals.append((grp, idxs))
        report.append({"roots": [r for r in grp.roots if r in sel] or [name],
                       "coupled": [n for n in grp.layers if n not in sel], "channels": grp.channels,
                       "kept": keep, "removed": idxs})
    progress.update(0.8, "rewriting the weights")
    pruned = prune_groups(model, cg, removals)
    return pruned, {"groups": report}, cg, removals

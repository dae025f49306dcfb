"""Activation memory: bytes of each layer's outputs, and the peak of live activations.

The peak is a static estimate of what a simple executor holds: walking the layers in
execution order, a tensor is live from the layer that makes it (graph inputs from the start)
until its last consumer (graph outputs until the end).  Weights are not activations and are
not counted.  Ops that only relabel a buffer (reshape / squeeze / view ...) share their
input's storage instead of adding a copy; no other buffer reuse (in-place ops, an allocator's
arena) is assumed, so real runtimes may peak lower.
"""

from __future__ import annotations

from dataclasses import dataclass

from effstudio.core import dtypes
from effstudio.core.graph import Layer, LayerGraph, TensorInfo

# output 0 aliases input 0 (no new memory)
ALIAS_OPS_ONNX = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
ALIAS_OPS_ATEN = frozenset({
    "view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "flatten", "unflatten", "expand",
    "expand_as", "permute", "transpose", "t", "select", "slice", "narrow", "alias", "detach",
    "as_strided", "view_as", "movedim", "swapaxes", "diagonal", "unfold", "dropout", "lift_fresh",
})


def tensor_bytes(info: TensorInfo | None) -> int | None:
    """Storage bytes of a tensor, or None when its shape is unknown or symbolic, or its dtype unknown."""
    if info is None or info.shape is None or not info.dtype:
        return None
    n = 1
    for d in info.shape:
        if not isinstance(d, int):
            return None
        n *= d
    if dtypes.bits(info.dtype) == 0 and info.dtype != "string":
        return None
    return dtypes.nbytes(info.dtype, n)


class TensorSizes(dict):
    """Name -> :func:`tensor_bytes` of ``tensors[name]``, each computed once on first lookup:
    the activation-bytes column and the peak look up the same tensors."""

    def __init__(self, tensors: dict[str, TensorInfo]) -> None:
        super().__init__()
        self._tensors = tensors

    def __missing__(self, name: str) -> int | None:
        b = self[name] = tensor_bytes(self._tensors.get(name))
        return b


def output_bytes(layer: Layer, tensors: dict[str, TensorInfo], sizes: TensorSizes | None = None) -> int | None:
    """Bytes of all of the layer's outputs; None if any of them is unknown.  ``sizes``: a
    :class:`TensorSizes` of ``tensors``, shared with :func:`peak_activation`."""
    if sizes is None:
        sizes = TensorSizes(tensors)
    total = 0
    for t in layer.outputs:
        b = sizes[t]
        if b is None:
            return None
        total += b
    return total


def is_alias(layer: Layer) -> bool:
    if layer.domain == "aten":
        return layer.op_type in ALIAS_OPS_ATEN
    return layer.domain in ("", "ai.onnx") and layer.op_type in ALIAS_OPS_ONNX


@dataclass
class PeakMemory:
    bytes: int | None  # None when some tensor's size is unknown (then see lower_bound)
    lower_bound: int  # the peak over the tensors of known size
    at_layer: str | None  # the layer during which the peak is reached
    unknown_tensors: int


def peak_activation(graph: LayerGraph, sizes: TensorSizes | None = None) -> PeakMemory:
    """Peak bytes of live activations over the execution order (see the module docstring).
    ``sizes``: a :class:`TensorSizes` of ``graph.tensors``, when the caller has one."""
    if sizes is None:
        sizes = TensorSizes(graph.tensors)
    n = len(graph.layers)
    end = n  # "lives to the end"
    root: dict[str, str] = {}  # tensor -> the tensor owning its storage
    for t in graph.inputs:
        root[t.name] = t.name
    for lay in graph.layers:
        alias = is_alias(lay) and lay.inputs and lay.inputs[0] in root and len(lay.outputs) == 1
        for t in lay.outputs:
            root[t] = root[lay.inputs[0]] if alias else t

    last_use: dict[str, int] = {}  # storage root -> index of its last reader
    born: dict[str, int] = {r: -1 for r in {root[t.name] for t in graph.inputs}}
    for i, lay in enumerate(graph.layers):
        for t in lay.outputs:
            r = root[t]
            born.setdefault(r, i)
            last_use[r] = max(last_use.get(r, i), i)
        for t in lay.inputs:
            r = root.get(t)
            if r is not None:
                last_use[r] = max(last_use.get(r, i), i)
    for t in graph.outputs:
        r = root.get(t.name)
        if r is not None:
            last_use[r] = end

    size: dict[str, int | None] = {r: sizes[r] for r in born}
    unknown = sum(1 for s in size.values() if s is None)
    frees: dict[int, list[str]] = {}
    for r in born:
        frees.setdefault(last_use.get(r, born[r]), []).append(r)

    live = sum(size[r] or 0 for r in born if born[r] == -1)
    peak, at = live, None
    for r in frees.get(-1, []):
        live -= size[r] or 0
    for i, lay in enumerate(graph.layers):
        for t in lay.outputs:
            r = root[t]
            if r == t and born.get(r) == i:
                live += size[r] or 0
        if live > peak:
            peak, at = live, lay.name
        for r in frees.get(i, []):
            live -= size[r] or 0
    return PeakMemory(None if unknown else peak, peak, at, unknown)

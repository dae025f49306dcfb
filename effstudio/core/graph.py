"""The layer graph: one IR for every model format.

A :class:`LayerGraph` is a list of :class:`Layer` in execution (topological) order,
the tensors between them, and the model's inputs and outputs.  Everything downstream —
numbers, heatmaps, selections, recipes — is keyed by ``Layer.name``, the layer's unique
qualified name (a module path such as ``encoder.layer.3.attention.self.query`` or the
ONNX node name).  Weights are attached to the layer that consumes them; a weight used by
several layers is marked ``shared`` and counted once in :meth:`LayerGraph.totals`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from effstudio.core import dtypes

Dim = int | str  # a static size, or a symbolic dimension kept by name ("batch", "seq")
Shape = tuple[Dim, ...]


@dataclass
class TensorInfo:
    name: str
    shape: Shape | None = None  # None when unknown
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape) if self.shape is not None else None,
                "dtype": self.dtype}


@dataclass
class Weight:
    """A stored tensor (ONNX initializer / folded Constant, torch parameter or buffer)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    shared: bool = False  # consumed by more than one layer (counted once in totals)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def is_param(self) -> bool:
        """Float or quantized-integer storage; int32/int64 shape/index data is not a parameter."""
        return dtypes.is_param_dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.dtype, self.numel)


@dataclass
class Layer:
    name: str
    op_type: str
    scope: str = ""  # module path used for grouping ("" = top level)
    domain: str = ""  # ONNX domain ("" = ai.onnx); "aten" etc. for torch
    inputs: list[str] = field(default_factory=list)  # activation tensor names (weights excluded)
    outputs: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    weights: list[Weight] = field(default_factory=list)
    # control flow: attribute name -> nested graph (If then/else, Loop/Scan body)
    subgraphs: dict[str, LayerGraph] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # e.g. "custom-domain"

    def _all_weights(self, _seen: set[str] | None = None) -> Iterator[Weight]:
        """This layer's weights and its subgraphs', each name once (a weight read by several
        layers of an If/Loop body is counted once in the control-flow layer)."""
        seen = set() if _seen is None else _seen
        for w in self.weights:
            if w.name not in seen:
                seen.add(w.name)
                yield w
        for sub in self.subgraphs.values():
            for layer in sub.layers:
                yield from layer._all_weights(seen)

    @property
    def params(self) -> int:
        """Elements of this layer's weights (its subgraphs' included)."""
        return sum(w.numel for w in self._all_weights() if w.is_param)

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self._all_weights() if w.is_param)

    @property
    def all_inputs(self) -> list[str]:
        """Activation inputs followed by weight names."""
        return list(self.inputs) + [w.name for w in self.weights]


@dataclass
class ModelInfo:
    path: str
    format: str  # "onnx" | "torch-export" | "torchscript" | "torch-module" | "hf" | "demo"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, **self.extra}


@dataclass
class LayerGraph:
    layers: list[Layer] = field(default_factory=list)
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)  # every known activation tensor
    model: ModelInfo | None = None

    def __post_init__(self) -> None:
        self._index: dict[str, Layer] | None = None

    # --- lookup -------------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        if self._index is None or len(self._index) != len(self.layers):
            self._index = {lay.name: lay for lay in self.layers}
        return self._index[name]

    def __contains__(self, name: object) -> bool:
        try:
            self.layer(name)  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return False
        return True

    def names(self) -> list[str]:
        return [lay.name for lay in self.layers]

    def producers(self) -> dict[str, str]:
        """Tensor name -> name of the layer that produces it."""
        return {t: lay.name for lay in self.layers for t in lay.outputs}

    def edges(self) -> list[tuple[str, str]]:
        """(from_layer, to_layer) for every activation tensor passed between layers, deduplicated."""
        prod = self.producers()
        seen: set[tuple[str, str]] = set()
        out: list[tuple[str, str]] = []
        for lay in self.layers:
            for t in lay.inputs:
                src = prod.get(t)
                if src is not None and (src, lay.name) not in seen:
                    seen.add((src, lay.name))
                    out.append((src, lay.name))
        return out

    def edge_tensors(self) -> list[tuple[str, str, str]]:
        """(from_layer, to_layer, tensor) for every activation tensor passed between layers."""
        prod = self.producers()
        return [(prod[t], lay.name, t) for lay in self.layers for t in lay.inputs if t in prod]

    def output_shapes(self, layer: Layer) -> list[Shape | None]:
        return [self.tensors[t].shape if t in self.tensors else None for t in layer.outputs]

    # --- weights ------------------------------------------------------------------------
    def mark_shared_weights(self) -> None:
        """Set ``Weight.shared`` for weights consumed by more than one layer."""
        count: dict[str, int] = {}
        for lay in self.layers:
            for w in {w.name for w in lay.weights}:
                count[w] = count.get(w, 0) + 1
        for lay in self.layers:
            for w in lay.weights:
                w.shared = count[w.name] > 1

    def unique_weights(self) -> dict[str, Weight]:
        """Every weight once, subgraphs included, keyed by name."""
        out: dict[str, Weight] = {}

        def visit(g: LayerGraph) -> None:
            for lay in g.layers:
                for w in lay.weights:
                    out.setdefault(w.name, w)
                for sub in lay.subgraphs.values():
                    visit(sub)

        visit(self)
        return out

    def totals(self) -> dict[str, int]:
        ws = [w for w in self.unique_weights().values() if w.is_param]
        return {"layers": len(self.layers), "params": sum(w.numel for w in ws),
                "weight_bytes": sum(w.nbytes for w in ws)}

    # --- hierarchy ----------------------------------------------------------------------
    def scopes(self) -> list[str]:
        """Every module scope and its ancestors, sorted (``""`` is the root)."""
        out = {""}
        for lay in self.layers:
            parts = [p for p in lay.scope.split(".") if p] if lay.scope else []
            for i in range(1, len(parts) + 1):
                out.add(".".join(parts[:i]))
        return sorted(out)

    def layers_in_scope(self, scope: str) -> list[Layer]:
        """Layers whose scope is ``scope`` or below it."""
        if not scope:
            return list(self.layers)
        pre = scope + "."
        return [lay for lay in self.layers if lay.scope == scope or lay.scope.startswith(pre)]

    # --- serialisation ------------------------------------------------------------------
    def layer_json(self, lay: Layer) -> dict[str, Any]:
        return {
            "name": lay.name, "op_type": lay.op_type, "scope": lay.scope,
            "inputs": list(lay.inputs), "outputs": list(lay.outputs),
            "output_shapes": [list(s) if s is not None else None for s in self.output_shapes(lay)],
            "params": lay.params, "weight_bytes": lay.weight_bytes,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json() if self.model else None,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "layers": [self.layer_json(lay) for lay in self.layers],
            "edges": [list(e) for e in self.edges()],
            "totals": self.totals(),
        }

"""``cluster.kmeans``: weight sharing — each selected weight tensor keeps only ``clusters`` distinct values.

Per layer, the weight matrix / kernel (not the bias) is clustered with 1-D k-means and every
weight is replaced by its cluster's centroid (Han et al., *Deep Compression*, 2016).  The tensor
keeps its dtype and shape, so the model runs unchanged with dense kernels: it is not faster and
the raw file keeps its size.  What shrinks is what a format that stores a palette would hold —
``ceil(log2 k)`` bits of index per weight plus the k-entry codebook (``extra["palette_bytes"]``)
— and the weights after deflate (``extra["compressed_bytes"]``, measured like pruning).

Initialization: ``linear`` (centroids evenly spaced between min and max; Deep Compression found it
keeps accuracy best because the few large weights keep centroids of their own) or ``density``
(centroids at evenly spaced quantiles).  Deterministic: no random draws.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.compress.techniques.prune_unstructured import prunable_weight, weight_refusal
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

MAX_ITER = 300
DENSE_SENTENCE = ("The centroid values are stored as dense floats and multiplied by dense kernels: it will not run "
                  "faster and the raw file keeps its size; a palette format (or zip) stores it smaller.")


@dataclass
class ClusterConfig(TechniqueConfig):
    technique = "cluster.kmeans"
    version = 1
    clusters: int = 64  # distinct values per weight tensor (2..256: an index of at most 8 bits)
    init: Literal["linear", "density"] = "linear"

    def validate(self) -> None:
        k = self.clusters
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 256:
            raise CompressError(f"{self.technique}: clusters must be an integer in [2, 256], got {k!r}")
        if self.init not in ("linear", "density"):
            raise CompressError(f"{self.technique}: init must be 'linear' or 'density', got {self.init!r}")


@dataclass
class KMeans1D:
    centroids: np.ndarray  # ascending, float64, no empty cluster
    labels: np.ndarray  # index into centroids per value (the input's shape, flattened)
    iterations: int
    inertia: float  # sum of squared distances to the assigned centroid


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", max_iter: int = MAX_ITER) -> KMeans1D:
    """Lloyd's k-means on scalars — the same algorithm and fixed point as ``sklearn.cluster.KMeans
    (algorithm="lloyd")`` from the same initial centroids (the tests check it).

    Written here because scikit-learn treats the values as generic n-D points: O(n·k) distances per
    iteration, 20-80 s for one 786k-weight layer at k=64 (measured).  In 1-D every cluster is an
    interval of the sorted values, so after one sort each iteration is a ``searchsorted`` of the k-1
    midpoints and prefix sums: O(k log n), under a second per layer.  An empty cluster takes the
    value farthest from its centroid (scikit-learn's rule); iteration stops when no assignment
    changes (scikit-learn's ``tol=0``).
    """
    x = np.asarray(values, np.float64).reshape(-1)
    xs = np.sort(x)
    n = xs.size
    uniq = np.unique(xs)
    if uniq.size <= k:  # already few values: each is its own cluster
        return KMeans1D(uniq, np.searchsorted(uniq, x), 0, 0.0)
    if init == "linear":
        c = np.linspace(xs[0], xs[-1], k)
    else:
        c = np.quantile(xs, (np.arange(k) + 0.5) / k)
    cs = np.concatenate([[0.0], np.cumsum(xs)])
    prev = None
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        c = np.sort(c)
        bounds = np.searchsorted(xs, (c[:-1] + c[1:]) / 2, side="right")  # values <= midpoint go lower
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [n]])
        counts = ends - starts
        sums = cs[ends] - cs[starts]
        empty = counts == 0
        if empty.any():  # scikit-learn's rule: the values farthest from their centroids found the empty clusters
            owner = np.repeat(np.arange(k), counts)
            far = np.argsort(-((xs - c[owner]) ** 2), kind="stable")[:int(empty.sum())]
            counts = counts.astype(np.float64)
            for e, idx in zip(np.flatnonzero(empty), far, strict=True):
                sums[owner[idx]] -= xs[idx]
                counts[owner[idx]] -= 1
                sums[e], counts[e] = xs[idx], 1
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if prev is not None and not empty.any() and np.array_equal(bounds, prev):
            c = new
            break
        prev = bounds
        c = new
    c = np.unique(c)
    mids = (c[:-1] + c[1:]) / 2
    labels = np.searchsorted(mids, x, side="left")  # x == midpoint -> the lower cluster
    used = np.unique(labels)
    if used.size < c.size:  # drop centroids no value chose
        c = c[used]
        labels = np.searchsorted(used, labels)
    inertia = float(((x - c[labels]) ** 2).sum())
    return KMeans1D(c, labels, it, inertia)


def palette_bytes(n: int, k: int, itemsize: int) -> int:
    """Bytes of ``n`` indices of ``ceil(log2 k)`` bits (at least 1) plus a ``k``-entry codebook."""
    bits = max(1, math.ceil(math.log2(max(k, 2))))
    return math.ceil(n * bits / 8) + k * itemsize


def cluster_array(w: np.ndarray, config: ClusterConfig) -> tuple[np.ndarray, KMeans1D]:
    """``w`` with each value replaced by its centroid (same dtype and shape)."""
    km = kmeans_1d(w.astype(np.float64), int(config.clusters), config.init)
    out = km.centroids.astype(w.dtype)[km.labels].reshape(w.shape)
    return out, km


@register
class KMeansCluster(Technique):
    name = "cluster.kmeans"
    title = "Weight clustering (k-means weight sharing)"
    config_cls = ClusterConfig
    backends = frozenset({"onnx", "torch"})

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        return weight_refusal(layer, loaded, "cluster")

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        return Expectation("smaller-only", f"Smaller as a palette or after zip only. {DENSE_SENTENCE}")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        from effstudio.core.compress.sizes import compressed_weight_bytes

        assert isinstance(config, ClusterConfig)
        config.validate()
        self.check_selection(loaded, config, selection)
        weights = {name: prunable_weight(loaded.graph.layer(name), loaded).name for name in selection}
        progress.update(0.0, "measuring the compressed size before clustering")
        before = compressed_weight_bytes(loaded, progress.sub(0.0, 0.1))
        arrays = self._read(loaded, set(weights.values()))
        clustered: dict[str, np.ndarray] = {}
        layers: dict[str, dict] = {}
        for i, (layer, wname) in enumerate(weights.items()):
            progress.update(0.1 + 0.5 * i / max(len(weights), 1), f"clustering {layer}")
            w = arrays[wname]
            out, km = cluster_array(w, config)
            clustered[wname] = out
            norm = float(np.linalg.norm(w.astype(np.float64)))
            diff = float(np.linalg.norm(out.astype(np.float64) - w.astype(np.float64)))
            layers[layer] = {"weight": wname, "clusters": int(km.centroids.size), "weights": int(w.size),
                             "iterations": km.iterations, "rel_error": diff / norm if norm > 0 else 0.0,
                             "raw_bytes": int(w.nbytes),
                             "palette_bytes": palette_bytes(w.size, km.centroids.size, w.dtype.itemsize),
                             "changed": bool(not np.array_equal(out, w))}
        progress.update(0.6, "writing the clustered weights")
        if loaded.backend == "onnx":
            new = self._write_onnx(loaded, clustered, progress.sub(0.6, 0.9))
        else:
            new = self._write_torch(loaded, clustered, progress.sub(0.6, 0.9))
        after = compressed_weight_bytes(new, progress.sub(0.9, 1.0))
        changed = [n for n in selection if layers[n]["changed"]]
        raw = sum(v["raw_bytes"] for v in layers.values())
        pal = sum(v["palette_bytes"] for v in layers.values())
        notes = [f"{len(changed)} layer(s) clustered to at most {config.clusters} values each "
                 f"({config.init} initialization); weight error ‖ΔW‖/‖W‖ up to "
                 f"{max(v['rel_error'] for v in layers.values()):.2%}.",
                 f"As a palette (ceil(log2 k)-bit indices + codebook) the clustered weights would take {pal:,} "
                 f"bytes instead of {raw:,} ({(pal - raw) / max(raw, 1):+.1%}).",
                 f"Weights after deflate: {before:,} → {after:,} bytes ({(after - before) / max(before, 1):+.1%}).",
                 DENSE_SENTENCE]
        few = [n for n in selection if not layers[n]["changed"]]
        if few:
            notes.append(f"{len(few)} selected layer(s) already had at most {config.clusters} distinct values: "
                         f"{', '.join(few[:5])}.")
        progress.update(1.0, "clustered")
        return StepResult(model=new, changed=changed, coupled=[], notes=notes,
                          expectation=self.expectation(loaded, config),
                          extra={"compressed_bytes": {"before": before, "after": after},
                                 "palette_bytes": {"before": raw, "after": pal}, "layers": layers})

    # --- backends ---------------------------------------------------------------------------
    def _read(self, loaded: LoadedModel, names: set[str]) -> dict[str, np.ndarray]:
        if loaded.backend == "onnx":
            from onnx import numpy_helper

            tensors = _onnx_tensors(loaded.onnx_model)
            missing = sorted(names - set(tensors))
            if missing:
                raise CompressError(f"{self.name}: weight(s) {', '.join(missing)} are not stored in the model")
            return {n: numpy_helper.to_array(tensors[n]) for n in names}
        if loaded.torch_module is None:
            raise CompressError(f"{self.name}: the torch model has no module to edit")
        state = loaded.torch_module.state_dict()
        missing = sorted(names - set(state))
        if missing:
            raise CompressError(f"{self.name}: weight(s) {', '.join(missing)} are not module parameters")
        return {n: _torch_to_numpy(state[n]) for n in names}

    def _write_onnx(self, loaded, clustered, progress):
        import onnx
        from onnx import numpy_helper

        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        proto = onnx.ModelProto()
        proto.CopyFrom(loaded.onnx_model)
        tensors = _onnx_tensors(proto)
        for n, a in clustered.items():
            tensors[n].CopyFrom(numpy_helper.from_array(a, n))
        return loaded_from_onnx_proto(proto, loaded, name="clustered", progress=progress)

    def _write_torch(self, loaded, clustered, progress):
        import torch

        from effstudio.core.compress.materialize import loaded_from_torch_module

        module = copy.deepcopy(loaded.torch_module)
        state = module.state_dict(keep_vars=True)
        with torch.no_grad():
            for n, a in clustered.items():
                t = state[n]
                t.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(t.dtype))
        progress.update(0.3, "re-exporting the clustered module")
        return loaded_from_torch_module(module, loaded, progress=progress.sub(0.3, 1.0))


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    return t.float().numpy().copy() if t.dtype == torch.bfloat16 else t.numpy().copy()


def _onnx_tensors(proto) -> dict:
    """Initializer / Constant name -> TensorProto of the top graph (edited in place)."""
    tensors = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] not in tensors:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    tensors[n.output[0]] = a.t
    return tensors

"""Weight values of a loaded model (they live in the model, not in the layer graph) and their histogram."""

from __future__ import annotations

import os

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress


def _onnx_values(model, name: str, base_dir: str = "") -> np.ndarray | None:
    """The named initializer / Constant; a large weight the loader left in its external data file
    (the GUI opens models without reading them) is read from that file (``base_dir``: the model's
    folder; every location was checked to stay inside it when the model was opened)."""
    from onnx import numpy_helper

    def visit(graph) -> np.ndarray | None:
        for init in graph.initializer:
            if init.name == name:
                return numpy_helper.to_array(init, base_dir=base_dir)
        for node in graph.node:
            if node.op_type == "Constant" and name in node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        return numpy_helper.to_array(attr.t)
            for attr in node.attribute:  # control-flow bodies (If / Loop / Scan)
                subs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
                for sub in subs:
                    found = visit(sub)
                    if found is not None:
                        return found
        return None

    return visit(model.graph)


def _torch_values(loaded: LoadedModel, name: str) -> np.ndarray | None:
    tensors: dict[str, object] = {}
    ep = loaded.exported
    if ep is not None:
        # an ExportedProgram names weights by placeholder ("p_conv1_weight"); map them to FQNs
        sig = ep.graph_signature
        fqn = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
               **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
        if name in fqn:
            name = fqn[name]
        tensors.update(ep.state_dict)
        tensors.update(getattr(ep, "constants", {}) or {})
    if loaded.torch_module is not None:
        tensors.update(loaded.torch_module.state_dict(keep_vars=False))
    t = tensors.get(name)
    if t is None:
        return None
    import torch

    t = t.detach().cpu()
    if t.is_quantized:
        t = t.dequantize()
    if t.is_floating_point():
        return t.float().numpy()  # bfloat16 / float8 have no numpy dtype
    return t.to(torch.int64).numpy() if t.dtype == torch.bool else t.numpy()


def weight_values(loaded: LoadedModel, weight_name: str) -> np.ndarray:
    """The values of the weight ``weight_name`` as a numpy array (a copy for torch models)."""
    if loaded.onnx_model is not None:
        base_dir = os.path.dirname(loaded.onnx_path) if loaded.onnx_path else ""
        arr = _onnx_values(loaded.onnx_model, weight_name, base_dir)
    else:
        arr = _torch_values(loaded, weight_name)
    if arr is None:
        raise EffstudioError(f"{loaded.path}: no weight named {weight_name!r} in the model")
    return np.asarray(arr)


def weight_histogram(
    loaded: LoadedModel, weight_name: str, bins: int = 64, progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``(counts, edges, stats)`` of one weight's values; stats has min/max/mean/std/zeros (fraction).

    Non-finite values are left out of the histogram and counted in ``stats["nonfinite"]``.
    """
    progress = progress or Progress()
    progress.update(0.0, f"reading {weight_name}")
    values = weight_values(loaded, weight_name).astype(np.float64, copy=False).ravel()
    progress.update(0.5, "histogram")
    finite = values[np.isfinite(values)]
    stats: dict[str, float] = {"numel": float(values.size), "nonfinite": float(values.size - finite.size)}
    if finite.size:
        stats.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()),
                     std=float(finite.std()), zeros=float(np.count_nonzero(finite == 0) / finite.size))
        counts, edges = np.histogram(finite, bins=bins)
    else:
        counts, edges = np.zeros(0, dtype=np.int64), np.zeros(1)
    progress.update(1.0, "histogram")
    return counts, edges, stats

"""The stored bytes of a model's weights, raw and after deflate (what a zip of the weights takes).

Sparsity and weight sharing do not shrink the raw bytes of a dense tensor, but they make the
bytes compressible: ``compressed_weight_bytes`` is the honest "smaller after zip" number.  It
deflates (zlib level 6, the zip default) the raw storage bytes of every parameter tensor once,
in graph order, as one stream.  Quantized torch tensors count their integer storage
(``int_repr``) plus their scales and zero points.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

DEFLATE_LEVEL = 6  # zlib's and zip's default
_CHUNK = 1 << 20


def _onnx_tensors(model) -> dict[str, object]:
    """Initializer / Constant name -> TensorProto, subgraphs included."""
    out: dict[str, object] = {}

    def visit(g) -> None:
        for init in g.initializer:
            out.setdefault(init.name, init)
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value":
                        out.setdefault(node.output[0], a.t)
            for a in node.attribute:
                if a.HasField("g"):
                    visit(a.g)
                for sub in a.graphs:
                    visit(sub)

    visit(model.graph)
    return out


def _onnx_bytes(t) -> bytes:
    from onnx import numpy_helper

    if t.HasField("raw_data") and t.raw_data:
        return bytes(t.raw_data)  # the exact storage (packed int4 included)
    return numpy_helper.to_array(t).tobytes()


def _torch_tensors(loaded: LoadedModel) -> dict[str, object]:
    tensors: dict[str, object] = {}
    if loaded.torch_module is not None:
        tensors.update(loaded.torch_module.state_dict(keep_vars=False))
    ep = loaded.exported
    if ep is not None:  # the graph names weights by the ExportedProgram's state-dict keys
        tensors.update(ep.state_dict)
        tensors.update(getattr(ep, "constants", {}) or {})
    if loaded.torch_module is not None:
        tensors.update(_packed_tensors(loaded.torch_module))
    return tensors


def _packed_tensors(module) -> dict[str, object]:
    """torch.ao's dynamically quantized modules keep their weights in packed parameters that
    ``state_dict`` does not list as tensors: unpack them under the names the graph gives them."""
    out: dict[str, object] = {}
    for path, mod in module.named_modules():
        for getter, key in (("get_weight", None), ("get_bias", None), ("weight", "weight"), ("bias", "bias")):
            fn = getattr(mod, getter, None)
            if not callable(fn) or not type(mod).__module__.startswith("torch.ao.nn.quantized"):
                continue
            try:
                value = fn()
            except Exception:  # a module without this kind of storage
                continue
            items = value.items() if isinstance(value, dict) else [(key, value)]
            for name, t in items:
                if t is not None and hasattr(t, "is_quantized"):
                    out[f"{path}.{name}" if path else name] = t
    return out


def _torch_bytes(t) -> Iterator[bytes]:
    import torch

    t = t.detach().cpu().contiguous()
    if t.is_quantized:
        yield t.int_repr().numpy().tobytes()
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            yield t.q_per_channel_scales().numpy().tobytes()
            yield t.q_per_channel_zero_points().numpy().tobytes()
        else:
            yield np.array([t.q_scale()], dtype=np.float64).tobytes()
            yield np.array([t.q_zero_point()], dtype=np.int64).tobytes()
        return
    yield t.reshape(-1).view(torch.uint8).numpy().tobytes()


def weight_byte_chunks(loaded: LoadedModel) -> Iterator[tuple[str, bytes]]:
    """(weight name, raw bytes) of every parameter weight of the graph, each once, in graph order.

    A quantized tensor yields its scales and zero points with it, so the graph's separate
    ``<name>_scale`` / ``<name>_zero_point`` entries are found through it.  Any other weight the
    model does not hold raises KeyError: a size over part of the weights would be wrong."""
    weights = [w for w in loaded.graph.unique_weights().values() if w.is_param]
    if loaded.onnx_model is not None:
        protos = _onnx_tensors(loaded.onnx_model)
        for w in weights:
            if w.name in protos:
                yield w.name, _onnx_bytes(protos[w.name])
        return
    tensors = _torch_tensors(loaded)
    covered = {f"{n}{suffix}" for n, t in tensors.items() if getattr(t, "is_quantized", False)
               for suffix in ("_scale", "_zero_point", "_scales", "_zero_points")}
    for w in weights:
        t = tensors.get(w.name)
        if t is None:
            if w.name in covered:
                continue
            raise KeyError(w.name)
        for part in _torch_bytes(t):
            yield w.name, part


def compressed_weight_bytes(loaded: LoadedModel, progress: Progress | None = None,
                            level: int = DEFLATE_LEVEL) -> int | None:
    """Bytes of the parameter weights after deflate (level 6): one stream over every weight once;
    None (unknown) when some weight's storage cannot be read."""
    try:
        return _compressed_weight_bytes(loaded, progress, level)
    except KeyError:
        return None


def _compressed_weight_bytes(loaded: LoadedModel, progress: Progress | None, level: int) -> int:
    progress = progress or Progress()
    total_raw = max(1, loaded.graph.totals()["weight_bytes"])
    comp = zlib.compressobj(level)
    size = 0
    done = 0
    for i, (_name, data) in enumerate(weight_byte_chunks(loaded)):
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            size += len(comp.compress(view[start:start + _CHUNK]))
        done += len(data)
        if i % 16 == 0:
            progress.update(min(1.0, done / total_raw), "compressing weights (deflate)")
    size += len(comp.flush())
    progress.update(1.0, "compressed weight bytes")
    return size

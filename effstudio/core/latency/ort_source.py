"""What onnxruntime loads for a held ONNX model, without holding the GIL for seconds.

``ModelProto.SerializeToString()`` (and ``ByteSize()``, which serializes too) of a model with
hundreds of MB of weights is one C call that holds the GIL: about 3 s each for BERT-base here,
during which every other Python thread — the GUI's included — stands still.  So:

- when the held proto is exactly the file it was loaded from (the loader stamps it, and the
  files are unchanged since), onnxruntime reads that file itself (in C++, GIL released);
- otherwise the model is written to a scratch folder tensor by tensor: the structure as a small
  proto, each large initializer's bytes appended to one external-data file.  Each tensor is a
  short C call, so other threads run in between.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
from onnx import external_data_helper, numpy_helper

from effstudio.core.model import LoadedModel

EXTERNAL_MIN_BYTES = 1024  # initializers from this size on go to the external-data file
_DATA_NAME = "model.onnx.data"


def file_stamp(path: str | os.PathLike, model: onnx.ModelProto,
               external: list[onnx.TensorProto] | None = None) -> tuple | None:
    """(path, size, mtime) of an ONNX file and of every external-data file it names; None when
    one is missing or lies outside the model's folder (the loader reports those).
    ``external``: the model's tensors held in external files, when the caller has them (else
    the initializers are looked through)."""
    base = Path(path).parent
    files = {Path(path)}
    seen: set[str] = set()  # tensors share a few files: each location once
    for t in _initializers(model.graph) if external is None else external:
        if external_data_helper.uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if loc in seen:
                continue
            seen.add(loc)
            parts = loc.replace("\\", "/").split("/")
            if not loc or os.path.isabs(loc) or ".." in parts or ":" in loc:
                return None
            files.add(base / loc)
    out = []
    try:
        for f in sorted(files):
            st = f.stat()
            out.append((str(f), st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    return tuple(out)


def _stamp_still_valid(stamp: Any) -> bool:
    try:
        return all((st := os.stat(p)).st_size == size and st.st_mtime_ns == mtime for p, size, mtime in stamp)
    except (OSError, TypeError, ValueError):
        return False


def _initializers(g: onnx.GraphProto):
    yield from g.initializer
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _initializers(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _initializers(sub)


def ort_source(loaded: LoadedModel, workdir: str) -> str:
    """A path onnxruntime can load ``loaded.onnx_model`` from (the original file when it is
    unchanged, else a copy written into ``workdir``)."""
    if loaded.onnx_path and loaded.onnx_file_stamp and _stamp_still_valid(loaded.onnx_file_stamp):
        return loaded.onnx_path
    return write_for_runtime(loaded.onnx_model, workdir)


def _external_copy(t: onnx.TensorProto, f, offset: int) -> tuple[onnx.TensorProto, int]:
    """``t`` without its data, pointing at its bytes appended to ``f`` at ``offset``."""
    data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
    f.write(data)
    out = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string)
    if t.HasField("segment"):
        out.segment.CopyFrom(t.segment)
    out.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", _DATA_NAME), ("offset", str(offset)), ("length", str(len(data)))):
        entry = out.external_data.add()
        entry.key, entry.value = key, value
    return out, offset + len(data)


def write_for_runtime(model: onnx.ModelProto, workdir: str) -> str:
    """Write ``model`` into ``workdir`` for onnxruntime, one tensor at a time; return the path.

    Top-level initializers of :data:`EXTERNAL_MIN_BYTES` or more go to ``model.onnx.data``; the
    rest (nodes, subgraphs, small tensors) is copied as is.  ``model`` is not changed.
    """
    path = os.path.join(workdir, "model.onnx")
    light = onnx.ModelProto()
    light.ir_version = model.ir_version  # everything but the graph is small: copied as is
    light.producer_name, light.producer_version = model.producer_name, model.producer_version
    light.domain, light.model_version, light.doc_string = model.domain, model.model_version, model.doc_string
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.metadata_props.extend(model.metadata_props)
    src, g = model.graph, light.graph
    g.name, g.doc_string = src.name, src.doc_string
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    g.quantization_annotation.extend(src.quantization_annotation)
    g.metadata_props.extend(src.metadata_props)
    offset = 0
    with open(os.path.join(workdir, _DATA_NAME), "wb") as f:
        for t in src.initializer:
            n = 1
            for d in t.dims:
                n *= int(d)
            big = t.data_type != onnx.TensorProto.STRING and n * _itemsize(t.data_type) >= EXTERNAL_MIN_BYTES
            if big and not external_data_helper.uses_external_data(t):
                ext, offset = _external_copy(t, f, offset)
                g.initializer.append(ext)
            else:
                g.initializer.append(t)
    with open(path, "wb") as f:
        f.write(light.SerializeToString())
    return path


def _itemsize(data_type: int) -> float:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 1.0

"""External data of an ONNX model: every location is checked before any byte of it is read.

A model file names the files that hold its weights (``external_data`` entries).  A crafted
model could name ``/etc/passwd``, ``../../secret`` or a symlink pointing out of the model's
folder; those are refused with a :class:`ModelLoadError` before anything is opened.  The
reading itself is onnx's own (which bounds-checks offset and length against the file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from effstudio.core.errors import ModelLoadError
from effstudio.core.progress import Progress


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto that may hold data: initializers, sparse initializers and attribute
    tensors of the main graph, of every subgraph and of every model-local function."""

    def graph_tensors(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        yield from node_tensors(g.node)

    def node_tensors(nodes) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values
                    yield a.sparse_tensor.indices
                for sp in a.sparse_tensors:
                    yield sp.values
                    yield sp.indices
                if a.HasField("g"):
                    yield from graph_tensors(a.g)
                for sub in a.graphs:
                    yield from graph_tensors(sub)

    yield from graph_tensors(model.graph)
    for fn in model.functions:
        yield from node_tensors(fn.node)


def _location(tensor: onnx.TensorProto) -> str | None:
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def check_location(path: Path, base: Path, tensor: onnx.TensorProto) -> Path:
    """The file holding ``tensor``'s data, inside ``base`` (the model's folder), or an error."""
    loc = _location(tensor)
    name = tensor.name or "<unnamed>"
    if not loc:
        raise ModelLoadError(str(path), f"tensor {name!r} has external data but no location")
    parts = re.split(r"[\\/]", loc)
    # absolute POSIX or Windows paths ("/x", "\\x", "C:x", "C:\\x") are refused outright
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc):
        raise ModelLoadError(str(path), f"external data location {loc!r} (tensor {name!r}) is an absolute "
                             "path; only files inside the model's folder are read")
    if ".." in parts:
        raise ModelLoadError(str(path), f"external data location {loc!r} (tensor {name!r}) escapes the "
                             "model's folder; only files inside it are read")
    real_base = os.path.realpath(base)
    target = os.path.realpath(os.path.join(real_base, *[p for p in parts if p]))
    if os.path.commonpath([real_base, target]) != real_base or target == real_base:
        raise ModelLoadError(str(path), f"external data location {loc!r} (tensor {name!r}) resolves to "
                             f"{target}, outside the model's folder; only files inside it are read")
    if not os.path.exists(target):
        raise ModelLoadError(str(path), f"external data file {loc!r} (tensor {name!r}) is missing; it must "
                             "lie next to the model")
    if not os.path.isfile(target):
        raise ModelLoadError(str(path), f"external data location {loc!r} (tensor {name!r}) is not a file")
    return Path(target)


def load_external_data(model: onnx.ModelProto, path: Path, progress: Progress,
                       select: Callable[[onnx.TensorProto], bool] | None = None) -> int:
    """Check every external location of ``model`` (loaded from ``path``), then read the data into
    the tensors (only those ``select`` accepts, when given).  Returns how many tensors were read."""
    external = [t for t in iter_tensors(model) if external_data_helper.uses_external_data(t)]
    if not external:
        return 0
    base = path.parent
    for t in external:  # all checked before the first read
        check_location(path, base, t)
    if select is not None:
        external = [t for t in external if select(t)]
        if not external:
            return 0
    n = len(external)
    for i, t in enumerate(external):
        if i % 16 == 0:
            progress.update(i / n, f"reading external data ({i}/{n} tensors)")
        try:
            external_data_helper.load_external_data_for_tensor(t, str(base))
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(str(path), f"cannot read external data of tensor {t.name!r}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    progress.update(1.0, f"read external data of {n} tensors")
    return n

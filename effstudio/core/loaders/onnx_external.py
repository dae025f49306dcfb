"""External data of an ONNX model: every location is checked before any byte of it is read.

A model file names the files that hold its weights (``external_data`` entries).  A crafted
model could name ``/etc/passwd``, ``../../secret`` or a symlink pointing out of the model's
folder; those are refused with a :class:`ModelLoadError` before anything is opened.  Offsets
and lengths are checked against the file's size before a byte is read.  Each location is
checked and each file opened once, not per tensor as ``onnx.external_data_helper`` does; the
bytes themselves cost two copies (file to ``bytes``, ``bytes`` into the proto: upb takes only
``bytes`` and copies them), the floor for a ModelProto that holds its weights.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import external_data_helper

from effstudio.core.errors import ModelLoadError
from effstudio.core.progress import Progress

_EXTERNAL = onnx.TensorProto.EXTERNAL
# tensors up to this size are read with os.pread, where the OS has it (see read_tensor)
_PREAD_MAX = (1 << 20) if hasattr(os, "pread") else -1


def iter_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every TensorProto that may hold data: initializers, sparse initializers and attribute
    tensors of the main graph, of every subgraph and of every model-local function."""
    out: list[onnx.TensorProto] = []

    def graph_tensors(g: onnx.GraphProto) -> None:
        out.extend(g.initializer)
        if g.sparse_initializer:
            for sp in g.sparse_initializer:
                out.append(sp.values)
                out.append(sp.indices)
        node_tensors(g.node)

    def node_tensors(nodes) -> None:
        # every field that can hold a tensor or a graph is looked at, whatever the attribute's
        # declared type (a malformed file may set both)
        for node in nodes:
            for a in node.attribute[:]:  # (a slice: see onnx_graph, _WeightInfo)
                if a.HasField("t"):
                    out.append(a.t)
                if a.tensors:
                    out.extend(a.tensors)
                if a.HasField("sparse_tensor"):
                    out.append(a.sparse_tensor.values)
                    out.append(a.sparse_tensor.indices)
                if a.sparse_tensors:  # (iterating an empty repeated field costs more than testing it)
                    for sp in a.sparse_tensors:
                        out.append(sp.values)
                        out.append(sp.indices)
                if a.HasField("g"):
                    graph_tensors(a.g)
                if a.graphs:
                    for sub in a.graphs:
                        graph_tensors(sub)

    graph_tensors(model.graph)
    for fn in model.functions:
        node_tensors(fn.node)
    return out


def uses_external(t: onnx.TensorProto) -> bool:
    """``external_data_helper.uses_external_data`` without its Python-level checks."""
    return t.data_location == _EXTERNAL


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` whose data is (still) in an external file."""
    return [t for t in iter_tensors(model) if t.data_location == _EXTERNAL]


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
    try:  # (one stat: what os.path.exists, then os.path.isfile, would each make)
        is_file = stat.S_ISREG(os.stat(target).st_mode)
    except (OSError, ValueError):
        raise ModelLoadError(str(path), f"external data file {loc!r} (tensor {name!r}) is missing; it must "
                             "lie next to the model") from None
    if not is_file:
        raise ModelLoadError(str(path), f"external data location {loc!r} (tensor {name!r}) is not a file")
    return Path(target)


def _span(path: Path, tensor: onnx.TensorProto, size: int) -> tuple[int, int]:
    """(offset, length) of ``tensor``'s data in its file of ``size`` bytes, checked against it."""
    try:
        info = external_data_helper.ExternalDataInfo(tensor)  # onnx's parsing: known keys, non-negative
    except ValueError as e:
        raise ModelLoadError(str(path), f"cannot read external data of tensor {tensor.name!r}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    offset = info.offset or 0
    length = size - offset if info.length is None else info.length
    if offset > size or length > size - offset:
        raise ModelLoadError(str(path), f"cannot read external data of tensor {tensor.name!r}: it spans "
                             f"bytes {offset} to {offset + length} of a {size}-byte file")
    return offset, length


def read_tensor(tensor: onnx.TensorProto, f: BinaryIO, offset: int, length: int) -> None:
    """Read ``length`` bytes at ``offset`` of the open file ``f`` into ``tensor`` (which then no
    longer refers to external data), as ``load_external_data_for_tensor`` does."""
    # small tensors (most of a model's): one system call, no seek; large ones, or a short read,
    # through the buffered file, which repeats the call until it has every byte
    data = os.pread(f.fileno(), length, offset) if length <= _PREAD_MAX else b""
    if len(data) != length:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"read {len(data)} of {length} bytes")
    tensor.raw_data = data
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.external_data[:]


def load_external_data(model: onnx.ModelProto, path: Path, progress: Progress,
                       select: Callable[[onnx.TensorProto], bool] | None = None,
                       external: list[onnx.TensorProto] | None = None) -> int:
    """Check every external location of ``model`` (loaded from ``path``), then read the data into
    the tensors (only those ``select`` accepts, when given).  Returns how many tensors were read.
    ``external``: :func:`external_tensors` of ``model``, when the caller has it already."""
    if external is None:
        external = external_tensors(model)
    else:
        external = [t for t in external if t.data_location == _EXTERNAL]  # some may have been read since
    if not external:
        return 0
    base = path.parent
    checked: dict[str | None, Path] = {}  # location -> file: tensors share a few files
    files = []
    for t in external:  # all checked before the first read
        loc = _location(t)
        if loc not in checked:
            checked[loc] = check_location(path, base, t)
        files.append(checked[loc])
    if select is not None:
        chosen = [(t, f) for t, f in zip(external, files, strict=True) if select(t)]
    else:
        chosen = list(zip(external, files, strict=True))
    if not chosen:
        return 0
    by_file: dict[Path, list[onnx.TensorProto]] = {}
    for t, f in chosen:
        by_file.setdefault(f, []).append(t)
    n, i = len(chosen), 0
    for target, tensors in by_file.items():
        try:
            with open(target, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                spans = sorted(((_span(path, t, size), t) for t in tensors), key=lambda st: st[0][0])
                for (offset, length), t in spans:  # in file order
                    if i % 16 == 0:
                        progress.update(i / n, f"reading external data ({i}/{n} tensors)")
                    i += 1
                    try:
                        read_tensor(t, fh, offset, length)
                    except (OSError, ValueError) as e:
                        raise ModelLoadError(str(path), f"cannot read external data of tensor {t.name!r}: "
                                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        except OSError as e:
            raise ModelLoadError(str(path), f"cannot read external data file {target.name!r}: "
                                 f"{e.strerror or type(e).__name__}") from e
    progress.update(1.0, f"read external data of {n} tensors")
    return n

"""Open an ONNX file into a :class:`LoadedModel` (``effstudio inspect model.onnx``).

Steps: parse the file without its external data; check IR version and opsets; check every
external-data location (nothing outside the model's folder is read) and read the small tensors;
infer shapes on a light copy of the graph (see ``onnx_shapes``; a run on example inputs reads the
large weights from their files itself); build the layer graph (see ``onnx_graph``); then read
the large weights.  The ModelProto (weights included, held once) is kept for onnxruntime.
"""

from __future__ import annotations

import functools
import mmap
from collections.abc import Callable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from effstudio.core.errors import ModelLoadError
from effstudio.core.graph import ModelInfo
from effstudio.core.inputs import InputSpec, make_example_inputs
from effstudio.core.latency.ort_source import file_stamp
from effstudio.core.loaders import onnx_graph, onnx_shapes
from effstudio.core.loaders.onnx_external import external_tensors, load_external_data, uses_external
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _parse(path: Path) -> onnx.ModelProto:
    """``onnx.load(path, load_external_data=False)``, parsed from a memory map of the file.

    ``onnx.load`` reads the file into a new bytes object first: for weights inside the file
    that is a second copy of them, page-faulted in afresh on every open (reading a 4.6 MB model
    took 8.7 ms of CPU that way, 5.3 ms from the map).  The parser copies what it keeps, so the
    map is closed when it returns."""
    with open(path, "rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data: bytes | memoryview = f.read()
        else:
            with mapped, memoryview(mapped) as data:
                return _decoded(data)
    return _decoded(data)


def _decoded(data: bytes | memoryview) -> onnx.ModelProto:
    model = onnx.ModelProto()
    used = model.ParseFromString(data)
    if used is not None and used != len(data):  # as onnx.load checks
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {used} out of {len(data)}")
    return model


def read_model(path: Path) -> onnx.ModelProto:
    """Parse ``path`` (external data not read) or raise ``ModelLoadError``."""
    try:
        model = _parse(path)
    except DecodeError as e:
        raise ModelLoadError(str(path), f"not a valid ONNX model: {_first_line(e)}") from e
    except OSError as e:
        raise ModelLoadError(str(path), f"cannot read the file: {e.strerror or _first_line(e)}") from e
    except Exception as e:  # onnx's C++ layer raises assorted errors on garbage
        raise ModelLoadError(str(path), f"not a valid ONNX model: {_first_line(e)}") from e
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelLoadError(str(path), "not a valid ONNX model: no graph or IR version in the file")
    return model


def check_versions(path: Path, model: onnx.ModelProto) -> int:
    """Refuse IR versions and opsets this onnx does not know; return the ai.onnx opset."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(str(path), f"unsupported ONNX IR version {model.ir_version} (the installed onnx "
                             f"{onnx.__version__} reads up to {onnx.IR_VERSION})")
    if not model.opset_import:
        raise ModelLoadError(str(path), "not a valid ONNX model: it imports no opset (truncated file?)")
    opset = 0
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
            limit = onnx.defs.onnx_opset_version()
            if not 1 <= opset <= limit:
                raise ModelLoadError(str(path), f"unsupported opset {opset} (the installed onnx "
                                     f"{onnx.__version__} supports opsets 1 to {limit})")
        elif imp.domain == "ai.onnx.ml":
            limit = onnx.defs.onnx_ml_opset_version()
            if not 1 <= imp.version <= limit:
                raise ModelLoadError(str(path), f"unsupported ai.onnx.ml opset {imp.version} (the installed "
                                     f"onnx {onnx.__version__} supports 1 to {limit})")
    return opset


def _read_early(t: onnx.TensorProto) -> bool:
    """External tensors read before the layer graph is built: what shape inference and FLOP
    counting may look at (scalars, vectors, shape constants); the large weights come after."""
    return len(t.dims) <= 1 or onnx_shapes.tensor_nbytes(t) <= onnx_shapes.INT_DATA_BYTES


def _same_tensors(a, b) -> bool:
    return [(t.name, t.shape, t.dtype) for t in a] == [(t.name, t.shape, t.dtype) for t in b]


def load_onnx(path: Path, *, inputs: dict[str, InputSpec], progress: Progress,
              on_graph: Callable[[LoadedModel], None] | None = None, read_weights: bool = True) -> LoadedModel:
    """Load ``path`` into a :class:`LoadedModel` whose graph has one layer per ONNX node.

    ``on_graph(loaded)`` is called as soon as the layer graph is built, before the large weights
    are read from external data (seconds for a big model): the caller may show ``loaded.graph``
    and count it (:func:`~effstudio.core.metrics.static.compute_static` reads only small
    tensors), nothing more; the returned model is the same object, complete.

    ``read_weights=False`` returns that model as it is then (for counting and showing only, as
    ``effstudio inspect`` does): its large tensors still refer to their external files, every
    location checked.  Reading and copying them is most of the load time of a large model.

    ``inputs`` gives shapes (and dtypes) for the model's inputs (``--input``); a symbolic
    leading dim defaults to 1, other symbolic dims stay symbolic.  ``example_inputs`` is filled
    only when every input dim is concrete.
    """
    path = Path(path)
    progress.update(0.0, f"reading {path.name}")
    model = read_model(path)
    opset = check_versions(path, model)
    external = external_tensors(model)
    stamp = file_stamp(path, model, external)  # before reading: a file changed meanwhile voids it
    progress.update(0.05, "checking external data")
    load_external_data(model, path, progress.sub(0.05, 0.1), select=_read_early, external=external)
    external = [t for t in external if uses_external(t)]  # those left in their files
    deferred = bool(external)

    progress.update(0.1, "inferring shapes")
    declared = onnx_shapes.graph_inputs(model.graph)
    resolved = onnx_shapes.resolve_inputs(str(path), declared, inputs)
    symbols = onnx_shapes.symbol_values(declared, resolved)
    concrete = all(t.shape is not None and all(isinstance(d, int) for d in t.shape) for t in resolved)
    # example data, made on first use: by a shape run, or by whoever reads loaded.example_inputs
    feeds = functools.cache(functools.partial(make_example_inputs, resolved)) if concrete else None
    infos, shape_problem = onnx_shapes.infer_tensor_infos(
        model, resolved, symbols, feeds, external_folder=str(path.parent) if deferred else None)

    progress.update(0.35, "building layers")
    ctx = onnx_graph.BuildContext(functions=frozenset((f.domain, f.name) for f in model.functions),
                                  progress=progress.sub(0.35, 0.5),
                                  count_total=functools.partial(onnx_graph.count_nodes, model.graph))
    try:
        graph = onnx_graph.build_graph(model.graph, infos=infos, outer_weights={}, outer_values=set(),
                                       ctx=ctx, inputs=resolved)
    except onnx_graph.GraphError as e:
        raise ModelLoadError(str(path), f"not a valid ONNX model: {e}") from e
    onnx_graph.mark_shared(graph)

    producer = f"{model.producer_name} {model.producer_version}".strip()
    extra: dict[str, object] = {"opset": opset, "producer": producer, "ir_version": int(model.ir_version)}
    if shape_problem:
        extra["shape_inference_error"] = shape_problem
    graph.model = ModelInfo(str(path), "onnx", extra)
    loaded = LoadedModel(graph, "onnx", str(path), onnx_model=model, onnx_path=str(path))
    if ctx.renamed == 0:  # the held proto is the file: a runtime may load the file itself
        loaded.onnx_file_stamp = stamp
    if feeds is not None and _same_tensors(graph.inputs, resolved):
        loaded.defer_example_inputs(feeds)  # a shape run's data when there was one: the same arrays
    elif all(t.shape is not None and all(isinstance(d, int) for d in t.shape) for t in graph.inputs):
        loaded.defer_example_inputs(functools.partial(make_example_inputs, list(graph.inputs)))
    if on_graph is not None:
        on_graph(loaded)
    if deferred and read_weights:
        progress.update(0.5, "reading weights")
        load_external_data(model, path, progress.sub(0.5, 1.0), external=external)
    progress.update(1.0, f"loaded {path.name}: {len(graph.layers)} layers")
    return loaded

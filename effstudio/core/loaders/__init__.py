"""Open any supported model into a :class:`~effstudio.core.model.LoadedModel`.

``open_model(spec)`` decides the format from the spec and the file's bytes (never only from
the extension) and calls the loader for it.  Loaders are imported lazily so that
``import effstudio.core`` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from effstudio.core.errors import ModelLoadError
from effstudio.core.inputs import InputSpec
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

DEMO_PREFIX = "demo:"


def _is_factory_spec(spec: str) -> bool:
    # "pkg.module:callable" — a dotted module path, one colon, an identifier; not a file
    if spec.count(":") != 1 or os.path.exists(spec):
        return False
    mod, fn = spec.split(":")
    return bool(mod) and bool(fn) and all(p.isidentifier() for p in mod.split(".")) and fn.isidentifier()


def open_model(
    spec: str,
    *,
    inputs: dict[str, InputSpec] | None = None,
    weights: str | None = None,
    trust: bool = False,
    progress: Progress | None = None,
    on_graph: Callable[[LoadedModel], None] | None = None,
    read_weights: bool = True,
) -> LoadedModel:
    """Open ``spec``: a file path, a Hugging Face folder, ``pkg.module:callable`` or ``demo:NAME``.

    ``on_graph(loaded)``: called by loaders that can show the layer graph before they finish
    (ONNX: before the large weights are read); see :func:`~.onnx_loader.load_onnx`.
    ``read_weights=False``: an ONNX model's large external weights are left in their files
    (for counting and showing only); other formats ignore it.

    Raises :class:`~effstudio.core.errors.ModelLoadError` with a one-line message naming the
    file and the problem for anything it cannot open.
    """
    progress = progress or Progress()
    inputs = inputs or {}
    if spec.startswith(DEMO_PREFIX):
        from effstudio.core.zoo import load_demo

        return load_demo(spec[len(DEMO_PREFIX):], inputs=inputs, progress=progress)
    if _is_factory_spec(spec):
        from effstudio.core.loaders.torch_loader import load_factory

        return load_factory(spec, weights=weights, inputs=inputs, progress=progress)
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(spec, "no such file or folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            from effstudio.core.loaders.hf_loader import load_hf

            return load_hf(path, inputs=inputs, progress=progress)
        raise ModelLoadError(spec, "a folder, but not a Hugging Face model folder (no config.json)")
    from effstudio.core.loaders.sniff import sniff_format

    fmt = sniff_format(path)
    if fmt == "onnx":
        from effstudio.core.loaders.onnx_loader import load_onnx

        return load_onnx(path, inputs=inputs, progress=progress, on_graph=on_graph, read_weights=read_weights)
    from effstudio.core.loaders import torch_loader

    return torch_loader.load_torch_file(path, fmt, inputs=inputs, trust=trust, progress=progress)

"""Exported copies of the demos (ONNX, ``.pt2``), made on first use and cached.

A copy lives in ``cache_dir("demo-exports")`` under ``<name>-<key>.<ext>`` where the key hashes
the weights, the torch version and this module's export settings, so new weights or a new torch
make a new file (older copies of the same demo are removed).  Files are written to a temporary
name and renamed, so a crash or a second process never leaves a half-written copy behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from effstudio.core.errors import EffstudioError, ModelLoadError
from effstudio.core.progress import Cancelled, Progress

if TYPE_CHECKING:
    import torch

EXPORT_VERSION = 1  # bump when the export settings below change
ONNX_OPSET = 18


def weights_key(module: torch.nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes."""
    import torch

    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        t = t.detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cache_key(module: torch.nn.Module, fmt: str) -> str:
    import torch

    h = hashlib.sha256()
    h.update(f"{fmt}|export-v{EXPORT_VERSION}|opset{ONNX_OPSET}|torch {torch.__version__}|".encode())
    h.update(weights_key(module).encode())
    return h.hexdigest()[:16]


def _remove_stale(folder: Path, name: str, ext: str, keep: Path) -> None:
    pattern = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{16}}\.{re.escape(ext)}$")
    for old in folder.iterdir():
        if old != keep and pattern.match(old.name):
            with contextlib.suppress(OSError):
                old.unlink()


def _cached_export(name: str, ext: str, write: Callable[[torch.nn.Module, dict, Path], None],
                   progress: Progress | None) -> Path:
    from effstudio.core.paths import cache_dir
    from effstudio.core.zoo import build_demo, example_inputs

    progress = progress or Progress()
    progress.update(0.0, f"building demo {name}")
    module = build_demo(name)
    folder = cache_dir("demo-exports")
    target = folder / f"{name}-{_cache_key(module, ext)}.{ext}"
    if target.is_file():
        progress.update(1.0, f"demo {name}.{ext} is cached")
        return target
    progress.update(0.1, f"exporting demo {name} to .{ext} (once; cached afterwards)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=f".{ext}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(module, example_inputs(name), tmp)
        progress.check()
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, (EffstudioError, Cancelled)) or not isinstance(exc, Exception):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"demo:{name}.{ext}",
                             f"export failed: {type(exc).__name__}: {first_line}") from exc
    _remove_stale(folder, name, ext, target)
    progress.update(1.0, f"exported demo {name}.{ext}")
    return target


def _write_onnx(module: torch.nn.Module, inputs: dict, path: Path) -> None:
    import torch

    # the exporter prints its steps to stdout and logs that torchvision ops are skipped; keep the
    # CLI's output (maybe JSON) clean
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (), kwargs=inputs, dynamo=True, opset_version=ONNX_OPSET,
                                        external_data=False, optimize=True, verbose=False)
            program.save(str(path), external_data=False)
    finally:
        onnx_log.setLevel(level)


def _write_pt2(module: torch.nn.Module, inputs: dict, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(module, (), kwargs=inputs, strict=False)
    torch.export.save(exported, str(path))


def demo_onnx_path(name: str, progress: Progress | None = None) -> Path:
    """The demo exported to ONNX (dynamo exporter, opset 18, batch-1 static shapes), cached."""
    return _cached_export(name, "onnx", _write_onnx, progress)


def demo_pt2_path(name: str, progress: Progress | None = None) -> Path:
    """The demo as a ``torch.export`` ExportedProgram saved with ``torch.export.save``, cached."""
    return _cached_export(name, "pt2", _write_pt2, progress)

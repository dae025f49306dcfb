"""Writing a version's model to disk and reading it back.

- ONNX models are written as ``.onnx`` (weights above 1 GiB go to ``<name>.data`` beside it,
  since protobuf cannot hold 2 GiB) and read back with the ONNX loader.
- torch models are written as ``.pt2`` with ``torch.export.save`` of the version's
  ExportedProgram (every version is re-exported when it is made, see ``materialize``).  It
  holds the graph and the weights, loads without unpickling anything (the ``.pt2`` loader
  checks the archive first) and runs, profiles and exports like the live model.  What it does
  not give back is the eager ``nn.Module`` a torch technique edits; the session rebuilds that
  by replaying the recipe when it continues from a reloaded version (see ``session``).
- torch models that ``torch.export`` cannot trace (torch.ao's dynamically quantized Linear/LSTM
  hold packed parameters it does not know) are written as TorchScript (``.pt``, ``torch.jit.trace``
  with the version's example inputs), which loads without unpickling code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from effstudio.core.compress.base import CompressError
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

EXTERNAL_DATA_ABOVE = 1 << 30


TORCH_SUFFIXES = (".pt2", ".pt", ".ts")


def model_suffix(loaded: LoadedModel) -> str:
    """The file suffix a version of this model is stored with by default."""
    return ".onnx" if loaded.onnx_model is not None else ".pt2"


def _example(loaded: LoadedModel) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in loaded.example_inputs.items()}


def _write_torchscript(loaded: LoadedModel, path: Path) -> None:
    import torch

    try:
        with torch.no_grad():
            traced = torch.jit.trace(loaded.torch_module.eval(), example_kwarg_inputs=_example(loaded),
                                     check_trace=False)
        torch.jit.save(traced, str(path))
    except Exception as e:  # torch raises many kinds here
        raise CompressError(f"cannot save the torch model as TorchScript: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0]}") from e


def _onnx_for_saving(model):
    """``model`` itself, or a copy whose external-data tensors (already read into memory by the
    loader) are marked as inline, so that saving writes their bytes rather than stale references."""
    from onnx import TensorProto, external_data_helper

    from effstudio.core.loaders.onnx_external import iter_tensors

    if not any(external_data_helper.uses_external_data(t) for t in iter_tensors(model)):
        return model
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in iter_tensors(copy):
        if external_data_helper.uses_external_data(t):
            if not t.HasField("raw_data"):
                raise CompressError(f"weight {t.name!r} was never read from its external data file")
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
    return copy


def write_model(loaded: LoadedModel, folder: Path, stem: str = "model", suffix: str | None = None) -> list[Path]:
    """Write ``loaded`` into ``folder`` as ``<stem>.onnx`` (+ ``.data``), ``<stem>.pt2``, or — for
    torch models torch.export cannot trace, or when ``suffix`` asks for it — TorchScript
    ``<stem>.pt``; return the files, main file first.  Not atomic by itself: write into a fresh folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if loaded.onnx_model is not None:
        import onnx

        model = _onnx_for_saving(loaded.onnx_model)
        path = folder / f"{stem}.onnx"
        if model.ByteSize() > EXTERNAL_DATA_ABOVE:
            if model is loaded.onnx_model:  # saving with external data empties the tensors it moves
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                model = copy
            data = f"{stem}.onnx.data"
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
            return [path, folder / data]
        onnx.save_model(model, str(path))
        return [path]
    if loaded.torch_module is None:
        raise CompressError(f"{loaded.path}: nothing to save (neither ONNX nor torch)")
    import torch

    if suffix in (".pt", ".ts"):
        path = folder / f"{stem}{suffix}"
        _write_torchscript(loaded, path)
        return [path]
    ep = loaded.exported
    if ep is None:
        try:
            ep = torch.export.export(loaded.torch_module, (), kwargs=_example(loaded), strict=False)
        except Exception as e:  # torch raises many kinds here
            if suffix == ".pt2":
                raise CompressError(
                    f"this version cannot be written as .pt2 (torch.export failed: {type(e).__name__}: "
                    f"{(str(e).strip().splitlines() or [''])[0]}); name the output *.pt for TorchScript") from e
            path = folder / f"{stem}.pt"
            _write_torchscript(loaded, path)
            return [path]
    path = folder / f"{stem}.pt2"
    torch.export.save(ep, str(path))
    return [path]


def fsync_files(paths: list[Path]) -> None:
    """Flush written files to the disk (so a rename after it never exposes a half-written file)."""
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def save_model_file(loaded: LoadedModel, path: str | Path) -> list[Path]:
    """Write ``loaded`` to ``path`` atomically (a temporary folder beside it, then renames).

    ``.onnx`` for ONNX models, ``.pt2`` for torch models; another suffix is a CompressError.
    An ONNX file over 1 GiB gets its weights in ``<path>.data``.  Returns the files written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if loaded.onnx_model is not None and suffix != ".onnx":
        raise CompressError(f"{path}: an ONNX model is written as .onnx; name the output *.onnx")
    if loaded.onnx_model is None and suffix not in TORCH_SUFFIXES:
        raise CompressError(f"{path}: a torch model is written as .pt2 (ExportedProgram) or .pt "
                            "(TorchScript); name the output *.pt2 or *.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        files = write_model(loaded, tmp, stem=path.stem, suffix=suffix)
        fsync_files(files)
        # data before the main file: the main file never points at data that is not there yet
        targets = []
        for f in reversed(files):
            target = path.parent / (path.name if f == files[0] else f.name)
            os.replace(f, target)
            targets.append(target)
        return list(reversed(targets))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def load_model(path: str | Path, like: LoadedModel | None = None, progress: Progress | None = None) -> LoadedModel:
    """Read a file written by :func:`write_model`; ``like`` (the parent) gives the input shapes and
    example data so that every version runs on the same inputs."""
    from effstudio.core.compress.materialize import parent_input_specs

    progress = progress or Progress()
    path = Path(path)
    if path.suffix == ".onnx":
        from effstudio.core.loaders.onnx_loader import load_onnx

        loaded = load_onnx(path, inputs=parent_input_specs(like) if like else {}, progress=progress)
    elif path.suffix in (".pt", ".ts"):
        from effstudio.core.loaders.torch_loader import load_torch_file

        loaded = load_torch_file(path, "torchscript", inputs=parent_input_specs(like) if like else {},
                                 trust=False, progress=progress)
    else:
        from effstudio.core.loaders.torch_loader import load_pt2

        loaded = load_pt2(path, inputs={}, trust=False, progress=progress)
    if like is not None and like.example_inputs and set(like.example_inputs) == {t.name for t in loaded.graph.inputs}:
        loaded.example_inputs = dict(like.example_inputs)
    return loaded

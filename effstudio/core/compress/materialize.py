"""Turn a technique's output (a new ONNX proto or torch module) into a LoadedModel.

The new model keeps the parent's concrete input shapes, so numbers and fidelity compare the
same inputs.  ONNX models are written to a work folder (the session store later moves the file
into its own folder); torch modules are re-exported with the parent's example inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from effstudio.core.inputs import InputSpec
from effstudio.core.model import LoadedModel
from effstudio.core.paths import cache_dir
from effstudio.core.progress import Progress

_EXTERNAL_DATA_ABOVE = 1 << 30  # protobuf cannot hold more than 2 GB: store big weights beside the file


def work_dir() -> Path:
    """A fresh folder for one step's output files (in the user cache)."""
    return Path(tempfile.mkdtemp(prefix="step-", dir=cache_dir("work")))


def parent_input_specs(parent: LoadedModel) -> dict[str, InputSpec]:
    specs = {}
    for t in parent.graph.inputs:
        if t.shape is not None and all(isinstance(d, int) for d in t.shape):
            specs[t.name] = InputSpec(t.name, tuple(int(d) for d in t.shape), t.dtype)
    return specs


def loaded_from_onnx_proto(proto, parent: LoadedModel, *, name: str = "model",
                           folder: Path | None = None, progress: Progress | None = None) -> LoadedModel:
    """Save ``proto`` into ``folder`` (a new work folder by default) and load it as the new version."""
    import onnx

    from effstudio.core.loaders.onnx_loader import load_onnx

    folder = folder or work_dir()
    path = folder / f"{name}.onnx"
    big = proto.ByteSize() > _EXTERNAL_DATA_ABOVE if hasattr(proto, "ByteSize") else False
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data")
    loaded = load_onnx(path, inputs=parent_input_specs(parent), progress=progress or Progress())
    if parent.example_inputs and set(parent.example_inputs) == set(loaded.example_inputs or parent.example_inputs):
        loaded.example_inputs = dict(parent.example_inputs)  # identical data for fidelity checks
    return loaded


def loaded_from_torch_module(module, parent: LoadedModel, *, progress: Progress | None = None) -> LoadedModel:
    """Re-export ``module`` with the parent's example inputs (same names, shapes and data)."""
    import torch

    from effstudio.core.loaders.torch_graph import loaded_from_module

    example = {k: torch.from_numpy(v) for k, v in parent.example_inputs.items()}
    loaded = loaded_from_module(module, example, path=parent.path, format=parent.format,
                                progress=progress or Progress())
    loaded.example_inputs = dict(parent.example_inputs)
    return loaded

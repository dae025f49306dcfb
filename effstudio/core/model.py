"""A loaded model: its layer graph plus the runnable object behind it (the backend's handle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from effstudio.core.graph import LayerGraph


@dataclass
class LoadedModel:
    """What every loader returns.

    ``graph`` is the common view.  Exactly one runnable form is set:
    - ``onnx_model``: an ``onnx.ModelProto`` (weights loaded once; ``onnx_path`` is the file it
      came from, with external data resolved relative to it), run by onnxruntime;
    - ``torch_module``: an ``nn.Module`` in eval mode (for ``.pt2`` it is
      ``ExportedProgram.module()``; ``exported`` keeps the ExportedProgram), run by torch.
    ``onnx_file_stamp`` (set by the ONNX loader when ``onnx_model`` is exactly what ``onnx_path``
    holds: no node renamed) is the files' (path, size, mtime); onnxruntime then loads the file
    itself instead of a serialized copy while the stamp still matches.  Code that edits
    ``onnx_model`` in place must set it to None.
    ``example_inputs`` maps input name -> numpy array with the graph's concrete input shapes
    (random data of the right dtype; token ids in range), used for shape tracing and profiling.
    """

    graph: LayerGraph
    format: str
    path: str
    onnx_model: Any = None
    onnx_path: str | None = None
    onnx_file_stamp: tuple | None = None
    torch_module: Any = None
    exported: Any = None
    example_inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx_model is not None else "torch"

"""A loaded model: its layer graph plus the runnable object behind it (the backend's handle)."""

from __future__ import annotations

from collections.abc import Callable
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
    A loader may leave it to be made on first access (:meth:`defer_example_inputs`): an
    inspection that never runs the model does not pay for it.
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

    def defer_example_inputs(self, make: Callable[[], dict[str, Any]]) -> None:
        """Make ``example_inputs`` with ``make()`` when it is first read (then it is a plain dict)."""
        del self.example_inputs
        self._make_example_inputs = make

    def __getattr__(self, name: str) -> Any:  # only called for attributes not set on the instance
        d = self.__dict__
        if name == "example_inputs":
            make = d.get("_make_example_inputs")
            if make is not None:
                d.setdefault("example_inputs", make())  # another thread may have set it meanwhile
                d.pop("_make_example_inputs", None)
            if "example_inputs" in d:
                return d["example_inputs"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx_model is not None else "torch"

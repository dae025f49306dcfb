"""Small real models for the compression-machinery tests (sessions, store, recipes, fidelity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import effstudio.core.compress.testing  # noqa: F401  (registers testing.scale / testing.fail)
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.model import LoadedModel


class TinyNet(nn.Module):
    """conv -> relu -> mean -> fc: 10 class scores from a 1×8×8 image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def tiny_torch(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return loaded_from_module(TinyNet().eval(), {"x": torch.randn(1, 1, 8, 8, generator=gen)},
                              path="tests:tiny", format="torch-module")


def tiny_onnx_file(folder: Path, *, batch: int | str = 1, seed: int = 0) -> Path:
    """The same architecture as ONNX: Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (zero bias)."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        [init("w", 8, 1, 3, 3), init("b", 8), init("fw", 10, 8),
         numpy_helper.from_array(np.zeros(10, np.float32), "fb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-b{batch}-s{seed}.onnx"
    onnx.save(model, path)
    return path


def tiny_onnx(folder: Path, **kw) -> LoadedModel:
    from effstudio.core.progress import Progress

    return load_onnx(tiny_onnx_file(folder, **kw), inputs={}, progress=Progress())


def weights_of(loaded: LoadedModel) -> dict[str, np.ndarray]:
    """Every stored tensor: ONNX initializers, or the torch module's state dict."""
    if loaded.onnx_model is not None:
        return {i.name: numpy_helper.to_array(i) for i in loaded.onnx_model.graph.initializer}
    return {k: v.detach().cpu().numpy().copy() for k, v in loaded.torch_module.state_dict().items()}


def same_weights(a: LoadedModel, b: LoadedModel) -> bool:
    wa, wb = weights_of(a), weights_of(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


_DEMOS: dict[str, object] = {}


def cached_demo(name: str):
    """Each demo loaded once per test session (loading and exporting take seconds)."""
    from effstudio.core.zoo import load_demo

    if name not in _DEMOS:
        _DEMOS[name] = load_demo(name)
    return _DEMOS[name]

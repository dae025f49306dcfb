"""Qt test setup: QSettings in a temporary folder (never the user's), app names, light theme,
and hand-built models for tests that must not depend on the loaders."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings

from effstudio.core.graph import Layer, LayerGraph, ModelInfo, TensorInfo, Weight
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel


@pytest.fixture(autouse=True)
def private_settings(qapp, tmp_path):
    """Every test gets empty settings in its own tmp folder."""
    from effstudio.ui import theme
    from effstudio.ui.app import configure_application

    configure_application(qapp)
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    theme.apply_theme(qapp, "light")
    yield tmp_path / "settings"


def small_graph() -> LayerGraph:
    """conv (3→8, 3×3) → relu → fc (8·4·4 → 10) on a 1×3×4×4 input; closed-form numbers."""
    t = {
        "x": TensorInfo("x", (1, 3, 4, 4), "float32"),
        "c": TensorInfo("c", (1, 8, 4, 4), "float32"),
        "r": TensorInfo("r", (1, 8, 4, 4), "float32"),
        "f": TensorInfo("f", (1, 128), "float32"),
        "y": TensorInfo("y", (1, 10), "float32"),
    }
    layers = [
        Layer("features.conv", "Conv", scope="features", inputs=["x"], outputs=["c"],
              attributes={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
              weights=[Weight("features.conv.weight", (8, 3, 3, 3), "float32"),
                       Weight("features.conv.bias", (8,), "float32")]),
        Layer("features.relu", "Relu", scope="features", inputs=["c"], outputs=["r"]),
        Layer("flatten", "Flatten", inputs=["r"], outputs=["f"]),
        Layer("head.fc", "Gemm", scope="head", inputs=["f"], outputs=["y"],
              weights=[Weight("head.fc.weight", (10, 128), "float32"),
                       Weight("head.fc.bias", (10,), "float32")]),
        Layer("head.custom", "MyOp", scope="head", domain="com.example", inputs=["y"], outputs=["z"],
              flags=["custom-domain"]),
    ]
    return LayerGraph(layers, inputs=[t["x"]], outputs=[TensorInfo("z")], tensors=t,
                      model=ModelInfo("small.onnx", "onnx"))


def small_metrics(graph: LayerGraph) -> MetricsTable:
    """Static numbers of :func:`small_graph`, worked out by hand (MyOp is uncountable)."""
    conv_macs = 8 * 4 * 4 * 3 * 3 * 3  # out elements × kernel volume × in channels
    fc_macs = 10 * 128
    values = {
        "params": {lay.name: float(lay.params) for lay in graph.layers},
        "weight_bytes": {lay.name: float(lay.weight_bytes) for lay in graph.layers},
        "macs": {"features.conv": conv_macs, "features.relu": 0, "flatten": 0, "head.fc": fc_macs},
        "flops": {"features.conv": 2 * conv_macs + 128, "features.relu": 128, "flatten": 0,
                  "head.fc": 2 * fc_macs + 10},
        "activation_bytes": {"features.conv": 512, "features.relu": 512, "flatten": 512, "head.fc": 40},
    }
    uncounted = [{"op_type": "MyOp", "count": 1, "reason": "custom domain com.example"}]
    return MetricsTable(values, totals={"macs": conv_macs + fc_macs}, uncounted_ops=uncounted)


@pytest.fixture
def graph() -> LayerGraph:
    return small_graph()


@pytest.fixture
def metrics(graph) -> MetricsTable:
    return small_metrics(graph)


def fake_loaded(spec: str = "small.onnx") -> LoadedModel:
    return LoadedModel(small_graph(), "onnx", spec)


@pytest.fixture
def make_loaded():
    """``make_loaded(spec)`` -> a :class:`LoadedModel` over :func:`small_graph` (no backend)."""
    return fake_loaded


@pytest.fixture
def make_metrics():
    return small_metrics

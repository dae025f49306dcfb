"""effstudio.core.weights: weight values from ONNX initializers / Constants and torch modules /
ExportedPrograms, and their histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from effstudio.core.errors import EffstudioError
from effstudio.core.graph import LayerGraph
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Cancelled, Progress
from effstudio.core.weights import weight_histogram, weight_values


def onnx_loaded() -> tuple[LoadedModel, np.ndarray, np.ndarray]:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = np.array([0.5, -0.5], dtype=np.float16)
    const = helper.make_node("Constant", [], ["folded"], value=numpy_helper.from_array(c, "folded"))
    g = helper.make_graph([const], "g", [], [], [numpy_helper.from_array(w, "fc.weight")])
    return LoadedModel(LayerGraph(), "onnx", "m.onnx", onnx_model=helper.make_model(g)), w, c


def test_onnx_initializer_and_folded_constant() -> None:
    loaded, w, c = onnx_loaded()
    np.testing.assert_array_equal(weight_values(loaded, "fc.weight"), w)
    np.testing.assert_array_equal(weight_values(loaded, "folded"), c)


def test_missing_weight_is_a_one_line_error() -> None:
    loaded, _, _ = onnx_loaded()
    with pytest.raises(EffstudioError, match=r"m\.onnx: no weight named 'nope'"):
        weight_values(loaded, "nope")


def test_torch_module_and_exported_program_names() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    ep = torch.export.export(module, (torch.randn(2, 4),))
    loaded = LoadedModel(LayerGraph(), "torch-export", "m.pt2", torch_module=ep.module(), exported=ep)
    expected = module[0].weight.detach().numpy()
    np.testing.assert_array_equal(weight_values(loaded, "0.weight"), expected)
    placeholder = next(k for k, v in ep.graph_signature.inputs_to_parameters.items() if v == "0.weight")
    np.testing.assert_array_equal(weight_values(loaded, placeholder), expected)
    np.testing.assert_array_equal(weight_values(loaded, "1.running_var"), np.ones(3, dtype=np.float32))


def test_bfloat16_weights_come_back_as_float32() -> None:
    module = nn.Linear(2, 2).to(torch.bfloat16)
    loaded = LoadedModel(LayerGraph(), "torch-module", "m", torch_module=module)
    out = weight_values(loaded, "weight")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, module.weight.float().detach().numpy())


def test_histogram_counts_every_finite_value_and_reports_the_rest() -> None:
    loaded, _, _ = onnx_loaded()
    counts, edges, stats = weight_histogram(loaded, "fc.weight", bins=4)
    assert counts.tolist() == [3, 3, 3, 3] and edges[0] == 0 and edges[-1] == 11
    assert stats["mean"] == pytest.approx(5.5) and stats["zeros"] == pytest.approx(1 / 12)
    w2 = np.array([1.0, np.nan, np.inf, 0.0], dtype=np.float32)
    g = helper.make_graph([], "g", [], [], [numpy_helper.from_array(w2, "x")])
    loaded2 = LoadedModel(LayerGraph(), "onnx", "m.onnx", onnx_model=helper.make_model(g))
    counts, _, stats = weight_histogram(loaded2, "x", bins=2)
    assert counts.sum() == 2 and stats["nonfinite"] == 2 and stats["numel"] == 4


def test_histogram_can_be_cancelled() -> None:
    loaded, _, _ = onnx_loaded()
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        weight_histogram(loaded, "fc.weight", progress=p)

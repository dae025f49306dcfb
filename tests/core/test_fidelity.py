"""Fidelity and accuracy: closed-form metrics, batching over fixed-batch models, labelled data,
deflated weight bytes, and the demo models judged on the digits test split."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compress_models import tiny_onnx, tiny_onnx_file, weights_of

from effstudio.core.compress.evaluate import (
    EvalData,
    accuracy,
    demo_name,
    eval_data_for,
    load_npz_data,
    run_outputs,
)
from effstudio.core.compress.fidelity import compare_outputs, fidelity, fidelity_inputs
from effstudio.core.compress.sizes import compressed_weight_bytes
from effstudio.core.errors import EffstudioError
from effstudio.core.inputs import InputSpec
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Progress


def _reference_logits(loaded, x: np.ndarray) -> np.ndarray:
    """The tiny ONNX network computed with torch.nn.functional (an independent implementation)."""
    w = {k: torch.from_numpy(v.copy()) for k, v in weights_of(loaded).items()}
    h = F.relu(F.conv2d(torch.from_numpy(x), w["w"], w["b"], padding=1)).mean((2, 3))
    return (h @ w["fw"].T + w["fb"]).numpy()


def test_metrics_in_closed_form():
    ref = [np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)]
    cand = [np.array([[2.0, 0.0], [0.0, -1.0]], np.float32)]
    f = compare_outputs(ref, cand, ["y"], source="two samples")
    assert f["cosine"] == pytest.approx(1 / math.sqrt(10))
    assert f["rel_l2"] == pytest.approx(math.sqrt(5) / math.sqrt(2))
    assert f["max_abs"] == 2.0 and f["cosine_min"] == pytest.approx(-1.0)
    assert f["top1_agreement"] == 0.5 and f["n_samples"] == 2 and f["inputs"] == "two samples"
    same = compare_outputs(ref, ref)
    assert (same["cosine"], same["rel_l2"], same["max_abs"], same["top1_agreement"]) == (1.0, 0.0, 0.0, 1.0)
    ints = compare_outputs([np.array([1, 2, 3, 4])], [np.array([1, 2, 0, 4])])
    assert ints["exact"] == 0.75 and "cosine" not in ints
    nan = compare_outputs(ref, [np.array([[np.nan, 0], [0, 1]], np.float32)])
    assert nan["cosine"] is None and nan["nonfinite"] == 1
    shape = compare_outputs(ref, [np.zeros((2, 3), np.float32)])
    assert shape["error"] == "output shape changed from [2, 2] to [2, 3]"


@pytest.mark.parametrize("batch", [1, 4, "N"])
def test_run_outputs_batches_any_input_batch(tmp_path, batch):
    if batch == "N":  # a symbolic batch: loaded with a concrete one, run with any
        loaded = load_onnx(tiny_onnx_file(tmp_path, batch="N", seed=3), inputs={"x": InputSpec("x", (2, 1, 8, 8))},
                           progress=Progress())
    else:
        loaded = tiny_onnx(tmp_path, batch=batch, seed=3)
    x = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)
    (y,) = run_outputs(loaded, {"x": x}, batch=3)
    assert y.shape == (10, 10)
    np.testing.assert_allclose(y, _reference_logits(loaded, x), rtol=1e-5, atol=1e-5)


def test_accuracy_on_a_user_npz(tmp_path):
    loaded = load_onnx(tiny_onnx_file(tmp_path, batch="N"), inputs={"x": InputSpec("x", (1, 1, 8, 8))},
                       progress=Progress())
    x = np.random.default_rng(1).standard_normal((50, 1, 8, 8)).astype(np.float32)
    pred = _reference_logits(loaded, x).argmax(1)
    y = np.where(np.arange(50) < 30, pred, (pred + 1) % 10)  # 30 of 50 right
    np.savez(tmp_path / "data.npz", x=x, y=y)
    data = load_npz_data(tmp_path / "data.npz", loaded)
    assert data.source == "data.npz (50 samples, labelled)"
    acc = accuracy(loaded, data)
    assert (acc["top1"], acc["correct"], acc["n"]) == (0.6, 30, 50)
    assert accuracy(loaded, x, y)["top1"] == 0.6
    # fidelity uses the same data when given
    assert fidelity_inputs(loaded, data).data is data


def test_bad_npz_data_is_one_clear_error(tmp_path):
    loaded = tiny_onnx(tmp_path)
    cases = [({"images": np.zeros((2, 1, 8, 8), np.float32)}, "no input data: expected an array 'x'"),
             ({"x": np.zeros((2, 1, 9, 8), np.float32)}, "'x' has shape \\[2, 1, 9, 8\\]"),
             ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.zeros(3, np.int64)}, "'y' has 3 labels for 2"),
             ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.zeros(2, np.float32)}, "integer class labels")]
    for arrays, message in cases:
        np.savez(tmp_path / "d.npz", **arrays)
        with pytest.raises(EffstudioError, match=message):
            load_npz_data(tmp_path / "d.npz", loaded)
    with pytest.raises(EffstudioError, match="no such file"):
        load_npz_data(tmp_path / "none.npz", loaded)


def test_fidelity_on_random_draws_like_the_example(tmp_path):
    a = tiny_onnx(tmp_path / "a", seed=0)
    b = tiny_onnx(tmp_path / "b", seed=0)
    c = tiny_onnx(tmp_path / "c", seed=5)
    fin = fidelity_inputs(a)
    assert fin.data.n == 4 and fin.batch == 1 and fin.data.labels is None
    assert np.array_equal(fin.data.inputs["x"][:1], a.example_inputs["x"])
    same = fidelity(a, b)
    assert same["cosine"] == pytest.approx(1.0) and same["max_abs"] == 0.0 and same["n_samples"] == 4
    other = fidelity(a, c)
    assert other["cosine"] < 0.99 and other["rel_l2"] > 0.1
    assert eval_data_for(a) is None and demo_name(a) is None


def test_compressed_weight_bytes_is_deflate_of_the_raw_weights(tmp_path):
    loaded = tiny_onnx(tmp_path)
    w = weights_of(loaded)
    raw = b"".join(w[k].tobytes() for k in ("w", "b", "fw", "fb"))  # graph order: conv, then fc
    assert compressed_weight_bytes(loaded) == len(zlib.compress(raw, 6))


@pytest.mark.slow
def test_demo_models_are_judged_on_the_digits_test_split():
    from effstudio.core.zoo import DEMOS, load_demo

    torch_demo = load_demo("cnn")
    onnx_demo = load_demo("cnn.onnx")
    assert demo_name(torch_demo) == demo_name(onnx_demo) == "cnn"
    data = eval_data_for(onnx_demo)
    assert isinstance(data, EvalData) and data.n == len(data.labels) and data.source.startswith("digits test split")
    acc_t = accuracy(torch_demo, data)
    acc_o = accuracy(onnx_demo, data)  # batch-1 ONNX: run one sample at a time
    assert acc_t["top1"] >= DEMOS["cnn"].min_test_accuracy
    assert abs(acc_t["correct"] - acc_o["correct"]) <= 1
    cross = fidelity(torch_demo, onnx_demo)  # the same network on two backends
    assert cross["n_samples"] == data.n and cross["cosine"] > 0.99999 and cross["top1_agreement"] >= 0.99

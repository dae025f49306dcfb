"""choose_int8_policy on a tiny ONNX MLP whose middle layer reads an outlier activation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from effstudio.core.compress.auto_int8 import choose_int8_policy
from effstudio.core.compress.base import CompressError
from effstudio.core.compress.recipe import Recipe, replay
from effstudio.core.loaders import open_model
from effstudio.core.progress import Progress


def outlier_mlp(tmp_path):
    """x -> mm1 (64×64) -> Relu -> mm2 (64×16) -> mm3 (16×8).  Channel 0 of mm2's input is ~1000×
    the others (and mm2's row for it ~1000× smaller): one int8 scale for that activation rounds the
    other channels away, so quantizing mm2 ruins the output; mm1 and mm3 quantize well."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 64)).astype(np.float32) * 0.1
    w1[:, 0] = np.abs(w1[:, 0]) * 1000.0
    w2 = rng.standard_normal((64, 16)).astype(np.float32) * 0.2
    w2[0, :] *= 1e-3
    w3 = rng.standard_normal((16, 8)).astype(np.float32) * 0.2
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
         helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
         helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
         helper.make_node("MatMul", ["h2", "w3"], ["y"], name="mm3")], "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "outlier_mlp.onnx"
    onnx.save(model, str(path))
    return open_model(str(path))


def inputs(n: int = 6):
    rng = np.random.default_rng(1)
    return [{"x": np.abs(rng.standard_normal((2, 64))).astype(np.float32)} for _ in range(n)]


def run(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def test_keeps_the_outlier_layer_float_and_replays_as_a_recipe(tmp_path):
    parent = outlier_mlp(tmp_path)
    names = [lay.name for lay in parent.graph.layers if lay.op_type == "MatMul"]
    assert names == ["mm1", "mm2", "mm3"]
    feeds = inputs()
    pol = choose_int8_policy(parent, feeds, target_cosine=0.98, progress=Progress(), max_float_fraction=0.5)
    assert pol.all_quantized_worst < 0.98  # quantizing everything misses the target ...
    assert pol.kept_float == ["mm2"]  # ... the outlier layer is the one to keep float
    assert pol.quantized == ["mm1", "mm3"]
    assert pol.reached and pol.worst_cosine >= 0.98 and pol.mean_cosine >= pol.worst_cosine
    assert pol.gains["mm2"] > max(pol.gains["mm1"], pol.gains["mm3"])
    ops = {n.name: n.op_type for n in pol.model.onnx_model.graph.node}
    assert ops["mm2"] == "MatMul" and "mm1" not in ops  # mm1 became DynamicQuantizeLinear + MatMulInteger

    # the policy is an ordinary recipe: replaying it gives the same model
    session = replay(Recipe({"path": str(parent.path), "format": "onnx"}, pol.steps), parent, measure=False)
    again = session.current.model
    assert np.array_equal(run(again.onnx_model, feeds), run(pol.model.onnx_model, feeds))


def test_target_met_quantizes_everything_without_a_search(tmp_path):
    parent = outlier_mlp(tmp_path)
    pol = choose_int8_policy(parent, inputs(2), target_cosine=-1.0)
    assert pol.kept_float == [] and pol.quantized == ["mm1", "mm2", "mm3"] and pol.gains == {}
    assert pol.reached


def test_budget_too_small_says_target_not_reached(tmp_path):
    parent = outlier_mlp(tmp_path)
    pol = choose_int8_policy(parent, inputs(2), target_cosine=0.99, max_float_fraction=0.01)
    assert not pol.reached and pol.kept_float == []
    assert any("not reached" in n for n in pol.notes)


def test_refuses_no_inputs(tmp_path):
    with pytest.raises(CompressError, match="at least one input"):
        choose_int8_policy(outlier_mlp(tmp_path), [])

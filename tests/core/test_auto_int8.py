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


def tables_model(tmp_path):
    """ids -> Gather(words 2000×16) + Gather(positions 8×16) -> MatMul(16×16): a big and a small table."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["words", "ids"], ["w"], name="word_table"),
         helper.make_node("Gather", ["positions", "pos"], ["p"], name="position_table"),
         helper.make_node("Add", ["w", "p"], ["e"], name="add"),
         helper.make_node("MatMul", ["e", "proj_w"], ["y"], name="proj")], "tables",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 16])],
        [numpy_helper.from_array(rng.standard_normal((2000, 16)).astype(np.float32), "words"),
         numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "positions"),
         numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.2, "proj_w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tables.onnx"
    onnx.save(model, str(path))
    return open_model(str(path))


def test_small_embedding_tables_are_not_candidates(tmp_path):
    from effstudio.core.compress.auto_int8 import candidates
    from effstudio.core.compress.registry import get_technique

    parent = tables_model(tmp_path)
    cfg = get_technique("quant.int8_dynamic").config_cls()
    # the position table is 0.4 % of the weight bytes: quantizing it would add a dequantize per call for nothing
    assert candidates(parent, cfg) == ["word_table", "proj"]
    assert candidates(parent, cfg, min_table_fraction=0.0) == ["word_table", "position_table", "proj"]
    feeds = [{"ids": np.array([[1, 5, 9, 1999, 0, 7]], np.int64), "pos": np.arange(6, dtype=np.int64)[None]}]
    pol = choose_int8_policy(parent, feeds, target_cosine=-1.0)
    assert pol.quantized == ["word_table", "proj"]


def test_policy_takes_a_smoothing_config(tmp_path):
    from test_smoothing import MATMULS, block, npz

    from effstudio.core.compress.registry import get_technique

    parent = block(tmp_path)
    cfg = get_technique("quant.int8_dynamic").config_cls(smooth="auto", per_channel="auto", reduce_range="auto",
                                                         calibration=npz(tmp_path, 8, 1))
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((1, 6, 16)).astype(np.float32)} for _ in range(6)]
    plain = choose_int8_policy(parent, feeds, target_cosine=-1.0)
    smooth = choose_int8_policy(parent, feeds, target_cosine=-1.0, config=cfg)
    assert smooth.quantized == plain.quantized == MATMULS and smooth.kept_float == []
    assert smooth.worst_cosine > plain.worst_cosine
    assert smooth.steps[0].config["smooth"] == "auto"  # the recipe step carries the settings


def test_smoothing_fixes_the_outlier_layer_without_keeping_it_float(tmp_path):
    """With SmoothQuant (mm2's input scale folded into mm1's columns through the Relu), every layer is
    quantized and the target met; the plain policy had to keep mm2 float."""
    from effstudio.core.compress.registry import get_technique

    parent = outlier_mlp(tmp_path)
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=np.concatenate([f["x"] for f in inputs(8)]))
    cfg = get_technique("quant.int8_dynamic").config_cls(smooth="auto", calibration=str(cal))
    pol = choose_int8_policy(parent, inputs(), target_cosine=0.98, config=cfg)
    assert pol.reached and pol.kept_float == [] and pol.quantized == ["mm1", "mm2", "mm3"]
    assert not any(n.name == "mm2_smooth" for n in pol.model.onnx_model.graph.node)  # folded: no Mul needed

"""SmoothQuant smoothing and per-input weight formats for quant.int8_dynamic (ONNX), and the
emulation of onnxruntime's int8 product they are chosen by."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.registry import config_from_dict, get_technique
from effstudio.core.compress.techniques import _int8_emulation as E
from effstudio.core.compress.techniques import _onnx_quant_util as U
from effstudio.core.compress.techniques import _smoothing as S
from effstudio.core.loaders import open_model
from effstudio.core.progress import Progress

DYNAMIC = get_technique("quant.int8_dynamic")
D, F = 16, 32  # hidden size, FFN size


def block(tmp_path, outlier: float = 40.0):
    """A post-LN transformer block with the shapes of the real thing, as torch.onnx writes it:
    LayerNorm -> Q, V projections (and the residual) -> attention over 2 heads (Reshape /
    Transpose / Softmax / MatMul) -> output projection -> residual Add -> LayerNorm -> FFN with an
    erf GELU.  LayerNorm 0's scale makes hidden channel 3 ``outlier``× the others and the Q and V rows
    that read it as much smaller (BERT has such a channel): one per-tensor activation scale then
    leaves the other channels, which carry the signal, a few levels."""
    rng = np.random.default_rng(0)

    def w(*shape, s=0.3):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    g0 = np.ones(D, np.float32)
    g0[3] = outlier
    inits = {"g0": g0, "b0": w(D, s=0.1), "wq": w(D, D), "bq": w(D, s=0.1), "wv": w(D, D), "bv": w(D, s=0.1),
             "wo": w(D, D), "bo": w(D, s=0.1), "g1": np.abs(w(D)) + 0.5, "b1": w(D, s=0.1), "wf": w(D, F),
             "bf": w(F, s=0.1), "w2": w(F, D), "b2": w(D, s=0.1),
             "heads": np.array([0, 0, 2, D // 2], np.int64), "flat": np.array([0, 0, D], np.int64),
             "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
             "sqrt2": np.array(np.sqrt(2.0), np.float32)}
    inits["wq"][3] /= outlier
    inits["wv"][3] /= outlier
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "g0", "b0"], ["ln0"], name="ln0", axis=-1),
        n("MatMul", ["ln0", "wq"], ["q0"], name="mm_q"), n("Add", ["q0", "bq"], ["q1"], name="add_q"),
        n("MatMul", ["ln0", "wv"], ["v0"], name="mm_v"), n("Add", ["v0", "bv"], ["v1"], name="add_v"),
        n("Reshape", ["q1", "heads"], ["q2"], name="split_q"),
        n("Transpose", ["q2"], ["q3"], name="tq", perm=[0, 2, 1, 3]),
        n("Reshape", ["v1", "heads"], ["v2"], name="split_v"),
        n("Transpose", ["v2"], ["v3"], name="tv", perm=[0, 2, 1, 3]),
        n("Transpose", ["q3"], ["k3"], name="tk", perm=[0, 1, 3, 2]),
        n("MatMul", ["q3", "k3"], ["s0"], name="scores"), n("Softmax", ["s0"], ["p"], name="softmax", axis=-1),
        n("MatMul", ["p", "v3"], ["c0"], name="context"), n("Transpose", ["c0"], ["c1"], name="tc", perm=[0, 2, 1, 3]),
        n("Reshape", ["c1", "flat"], ["ctx"], name="merge"),
        n("MatMul", ["ctx", "wo"], ["o0"], name="mm_o"), n("Add", ["o0", "bo"], ["o1"], name="add_o"),
        n("Add", ["o1", "ln0"], ["h"], name="residual"),
        n("LayerNormalization", ["h", "g1", "b1"], ["ln1"], name="ln1", axis=-1),
        n("MatMul", ["ln1", "wf"], ["f0"], name="mm_f"), n("Add", ["f0", "bf"], ["f1"], name="add_f"),
        n("Div", ["f1", "sqrt2"], ["e0"], name="gelu_div"), n("Erf", ["e0"], ["e1"], name="gelu_erf"),
        n("Add", ["e1", "one"], ["e2"], name="gelu_add"), n("Mul", ["half", "e2"], ["e3"], name="gelu_half"),
        n("Mul", ["f1", "e3"], ["gelu"], name="gelu"),
        n("MatMul", ["gelu", "w2"], ["y0"], name="mm_2"), n("Add", ["y0", "b2"], ["y"], name="add_2"),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", D])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"block-{outlier:g}.onnx"
    onnx.save(model, str(path))
    return open_model(str(path))


def feeds(n: int, seed: int, t: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, t, D)).astype(np.float32)} for _ in range(n)]


def run(proto, inputs) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0].reshape(-1, D) for f in inputs])


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


MATMULS = ["mm_q", "mm_v", "mm_o", "mm_f", "mm_2"]


# --- the emulation matches onnxruntime --------------------------------------------------------------
def one_matmul(w: np.ndarray):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("per_channel, reduce_range", [(True, False), (False, False), (True, True)])
def test_emulation_is_onnxruntimes_result(tmp_path, per_channel, reduce_range):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(3)
    # weights near full range, one sign per column: neighbouring products overflow int16 without VNNI
    w = ((3.0 + 0.3 * rng.standard_normal((64, 24))) * rng.choice([-1.0, 1.0], 24)).astype(np.float32)
    x = rng.standard_normal((40, 64)).astype(np.float32) + 1.5  # mostly positive: uint8 values well above 128
    with U.quiet():
        quantize_dynamic(one_matmul(w), tmp_path / "q.onnx", weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=reduce_range)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    saturating = not U.cpu_has_vnni()
    want = E.int8_matmul(x, w, per_channel=per_channel, reduce_range=reduce_range, saturate=saturating)
    other = E.int8_matmul(x, w, per_channel=per_channel, reduce_range=reduce_range, saturate=not saturating)
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= 1e-5 * scale  # float rounding only
    if not reduce_range:  # this data overflows int16 pairs: the kernel's saturation is visible, and modelled
        assert np.abs(other - want).max() > 1e-2 * scale
    else:  # ±64 weights never overflow
        assert np.array_equal(other, want)


# --- smoothing -----------------------------------------------------------------------------------------
def test_smoothing_folds_and_is_exact_in_float(tmp_path):
    parent = block(tmp_path)
    proto = U.prepare_proto(parent)
    opts = S.Options(alphas=(0.5,), formats=[(True, False)], allow_mul=True, tolerance=0.0, saturate=True,
                     only_smoothed=True)
    smoothed, choices = S.layerwise(proto, MATMULS, feeds(8, 1), opts, (True, False))
    how = {c.group.tensor: (c.how, c.folded) for c in choices}
    # LayerNorm 0 also feeds the residual: a Mul; the others fold into a constant for free
    assert how == {"ln0": ("Mul inserted", []),
                   "ctx": ("folded into mm_v", ["mm_v", "add_v"]),  # V's columns, through the attention
                   "ln1": ("folded into ln1", ["ln1"]),  # its only readers are the FFN
                   "gelu": ("folded into gelu_half", ["gelu_half"])}  # the GELU's 0.5 becomes a vector
    assert [n.op_type for n in smoothed.graph.node].count("Mul") == 3  # two of the GELU, one inserted
    x = feeds(5, 2)
    before, after = run(proto, x), run(smoothed, x)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    s = next(c.scale for c in choices if c.group.tensor == "ln1")
    assert s is not None and s.std() > 0.1  # a real per-channel scale, not ones


def test_a_fold_that_is_not_exact_becomes_a_mul(tmp_path):
    """The V path's Reshape splits channels across heads; one that does not keep channel order (here a
    Transpose that swaps heads and head dims) is caught by the numerical check and smoothed by a Mul."""
    parent = block(tmp_path)
    proto = U.prepare_proto(parent)
    node = next(n for n in proto.graph.node if n.name == "tc")
    node.attribute[0].ints[:] = [0, 2, 3, 1]  # [b, h, t, d] -> [b, t, d, h]: channel h*8+d becomes d*2+h
    opts = S.Options(alphas=(0.5,), formats=[(True, False)], allow_mul=True, tolerance=0.0, saturate=True,
                     only_smoothed=True)
    smoothed, choices = S.layerwise(proto, MATMULS, feeds(8, 1), opts, (True, False))
    assert next(c.how for c in choices if c.group.tensor == "ctx") == "Mul inserted"
    x = feeds(5, 2)
    before, after = run(proto, x), run(smoothed, x)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()


def npz(tmp_path, n: int, seed: int):
    path = tmp_path / f"calibration-{seed}.npz"
    np.savez(path, x=np.concatenate([f["x"] for f in feeds(n, seed)]))
    return str(path)


def test_smoothing_improves_the_outlier_block(tmp_path):
    parent = block(tmp_path)
    x = feeds(16, 7)  # other inputs than the calibration ones
    ref = run(parent.onnx_model, x)
    cal = npz(tmp_path, 16, 1)
    # 7-bit weights on both sides: no int16 saturation on CPUs without VNNI, the difference is the smoothing
    plain = DYNAMIC.apply(parent, DYNAMIC.config_cls(reduce_range=True), MATMULS, Progress())
    cfg = DYNAMIC.config_cls(reduce_range=True, smooth="auto", calibration=cal)
    smooth = DYNAMIC.apply(parent, cfg, MATMULS, Progress())
    c_plain = worst_cosine(ref, run(plain.model.onnx_model, x))
    c_smooth = worst_cosine(ref, run(smooth.model.onnx_model, x))
    assert 1 - c_smooth < 0.5 * (1 - c_plain), (c_plain, c_smooth)
    # and with the weight format chosen per input too
    best = DYNAMIC.apply(parent, DYNAMIC.config_cls(per_channel="auto", reduce_range="auto", smooth="auto",
                                                    calibration=cal), MATMULS, Progress())
    assert worst_cosine(ref, run(best.model.onnx_model, x)) > 0.995 > c_plain
    assert sorted(smooth.changed) == sorted(MATMULS)
    assert {"ln1", "gelu_half"} <= set(smooth.coupled) and "ln0" not in smooth.coupled  # ln0 got a Mul
    rows = smooth.extra["layerwise"]
    assert {tuple(r["layers"]) for r in rows} == {("mm_q", "mm_v"), ("mm_o",), ("mm_f",), ("mm_2",)}
    assert all(r["error"] <= r["error_unsmoothed"] + 1e-12 for r in rows)  # "none" is one of the options
    assert any("SmoothQuant smoothing on" in n for n in smooth.notes)
    assert smooth.extra["calibration"] == {"source": cal, "samples": 16, "poor": False}

    # deterministic: the same step gives the same weights (a recipe replays bit for bit)
    again = DYNAMIC.apply(parent, cfg, MATMULS, Progress())
    a = {t.name: numpy_helper.to_array(t) for t in smooth.model.onnx_model.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in again.model.onnx_model.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_no_mul_leaves_unfoldable_inputs_unsmoothed(tmp_path):
    parent = block(tmp_path)
    cfg = DYNAMIC.config_cls(smooth=0.5, smooth_mul=False, calibration=npz(tmp_path, 8, 1))
    step = DYNAMIC.apply(parent, cfg, MATMULS, Progress())
    by_input = {r["input"]: r for r in step.extra["layerwise"]}
    assert by_input["ln0"]["alpha"] is None and by_input["ln0"]["how"] == ""
    assert all(by_input[t]["alpha"] == 0.5 for t in ("ctx", "ln1", "gelu"))
    assert not [n.name for n in step.model.onnx_model.graph.node if n.name.endswith("_smooth")]  # no Mul inserted


def test_auto_formats_and_tolerance(tmp_path):
    parent = block(tmp_path)
    cal = npz(tmp_path, 8, 1)
    formats = DYNAMIC.apply(parent, DYNAMIC.config_cls(per_channel="auto", reduce_range="auto", calibration=cal),
                            MATMULS, Progress())
    rows = formats.extra["layerwise"]
    assert all(r["alpha"] is None for r in rows)  # smooth stays off unless asked
    assert all(r["error"] <= r["error_per_channel_8bit"] for r in rows)  # per-channel 8-bit is one of the options
    assert any(r["error"] < 0.5 * r["error_per_channel_8bit"] for r in rows)  # and not always the best here

    exact = DYNAMIC.apply(parent, DYNAMIC.config_cls(smooth="auto", calibration=cal), MATMULS, Progress())
    loose = DYNAMIC.apply(parent, DYNAMIC.config_cls(smooth="auto", tolerance=100.0, calibration=cal), MATMULS,
                          Progress())
    how = {r["input"]: r["how"] for r in exact.extra["layerwise"]}
    assert how["ln0"] == "Mul inserted"  # the most accurate option for LayerNorm 0 needs a Mul ...
    loose_rows = {r["input"]: r for r in loose.extra["layerwise"]}
    assert loose_rows["ln0"]["how"] == "" and loose_rows["ln0"]["alpha"] is None  # ... avoided when 101× is fine
    exact_rows = {r["input"]: r for r in exact.extra["layerwise"]}
    for t in ("ctx", "ln1", "gelu"):  # a fold costs nothing: the tolerance does not change what they get
        assert (loose_rows[t]["alpha"], loose_rows[t]["how"]) == (exact_rows[t]["alpha"], exact_rows[t]["how"])


def test_pick_prefers_no_mul_then_per_tensor_within_tolerance():
    # (alpha, per_channel, reduce_range) -> emulated error; smoothing this input needs an inserted Mul
    options = {(None, True, False): 1.0, (None, False, False): 1.5, (0.5, False, False): 0.9, (0.5, True, False): 0.8}
    assert S._pick(options, True, 0.0) == (0.5, True, False)  # no tolerance: the least error, whatever it costs
    assert S._pick(options, True, 0.3) == (None, True, False)  # 1.0 <= 1.04: no Mul, per-channel (1.5 is too far)
    assert S._pick(options, True, 1.0) == (None, False, False)  # 1.5 <= 1.6: no Mul and per-tensor
    assert S._pick(options, False, 0.2) == (0.5, False, False)  # a fold costs nothing: per-tensor within 0.96


def test_tolerance_buys_per_tensor_weights(tmp_path):
    parent = block(tmp_path)
    cal = npz(tmp_path, 8, 1)
    exact = DYNAMIC.apply(parent, DYNAMIC.config_cls(per_channel="auto", calibration=cal), MATMULS, Progress())
    loose = DYNAMIC.apply(parent, DYNAMIC.config_cls(per_channel="auto", tolerance=100.0, calibration=cal), MATMULS,
                          Progress())
    exact_rows = {r["input"]: r for r in exact.extra["layerwise"]}
    loose_rows = {r["input"]: r for r in loose.extra["layerwise"]}
    assert any(r["per_channel"] for r in exact_rows.values())  # the least error is per-channel somewhere ...
    assert not any(r["per_channel"] for r in loose_rows.values())  # ... the cheaper per-tensor kernel within 101×
    for t, r in loose_rows.items():
        assert r["error"] <= 101.0 * exact_rows[t]["error"]
    scales = {t.name: numpy_helper.to_array(t) for t in loose.model.onnx_model.graph.initializer
              if t.name.endswith("_scale")}
    assert scales and all(v.size == 1 for v in scales.values())  # one weight scale per MatMul, as stored


def test_find_groups_skips_shared_weights(tmp_path):
    parent = block(tmp_path)
    proto = U.prepare_proto(parent)
    node = next(n for n in proto.graph.node if n.name == "mm_o")
    node.input[1] = "wq"  # mm_o now reads mm_q's weight: scaling its rows would change mm_q too
    groups = {g.tensor: g.nodes for g in S.find_groups(proto, MATMULS)}
    assert groups == {"ln0": ["mm_v"], "ln1": ["mm_f"], "gelu": ["mm_2"]}


# --- config ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, words", [
    ({"per_channel": 1}, "per_channel"),
    ({"per_channel": "yes"}, "per_channel"),
    ({"reduce_range": "sometimes"}, "reduce_range"),
    ({"reduce_range": 0}, "reduce_range"),
    ({"smooth": 0}, "smooth"),
    ({"smooth": 1.0}, "smooth"),
    ({"smooth": True}, "smooth"),
    ({"smooth": "strong"}, "smooth"),
    ({"smooth_mul": "no"}, "smooth_mul"),
    ({"tolerance": -0.5}, "tolerance"),
    ({"tolerance": True}, "tolerance"),
    ({"samples": 0}, "samples"),
    ({"calibration": "sentences.txt"}, "calibration"),
])
def test_bad_settings_are_refused(data, words):
    with pytest.raises(CompressError, match=words):
        config_from_dict({"technique": "quant.int8_dynamic", **data})


def test_good_settings_round_trip():
    for data in ({"smooth": 0.5}, {"smooth": "auto", "smooth_mul": False, "tolerance": 1.5},
                 {"per_channel": "auto", "reduce_range": "auto", "samples": 8, "calibration": "cal.npz"}):
        cfg = config_from_dict({"technique": "quant.int8_dynamic", **data})
        assert config_from_dict(cfg.to_dict()) == cfg and cfg.layerwise()
    assert not config_from_dict({"technique": "quant.int8_dynamic"}).layerwise()


def test_torch_models_refuse_the_onnx_only_settings():
    from compress_models import tiny_torch

    loaded = tiny_torch()
    with pytest.raises(CompressError, match="work on ONNX models"):
        DYNAMIC.apply(loaded, DYNAMIC.config_cls(smooth=0.5), ["fc"], Progress())

"""quant.int8_dynamic, quant.int8_static, quant.fp16 and quant.weight_only on the demo zoo (torch and
ONNX forms): the changed layers are exactly the selection and checked in the result graph, layers
outside it stay float, shapes stay, weight bytes drop by the expected factor, fidelity and accuracy
on the digits test split, and the refusals (Conv + dynamic, bfloat16 on ONNX, bad settings)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from compress_models import cached_demo as demo
from onnx import numpy_helper

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.evaluate import accuracy
from effstudio.core.compress.fidelity import fidelity
from effstudio.core.compress.registry import config_from_dict, get_technique
from effstudio.core.compress.techniques import _onnx_quant_util as U
from effstudio.core.compress.techniques.quant_dynamic import CONV_REASON
from effstudio.core.progress import Progress
from effstudio.core.zoo import digits

DYNAMIC = get_technique("quant.int8_dynamic")
STATIC = get_technique("quant.int8_static")
HALF = get_technique("quant.fp16")
WEIGHT_ONLY = get_technique("quant.weight_only")


def top1(loaded) -> float:
    x, y = digits("test")
    return accuracy(loaded, x, y)["top1"]


def op_names(loaded, *ops: str) -> list[str]:
    return [lay.name for lay in loaded.graph.layers if lay.op_type in ops]


def inits(proto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in proto.graph.initializer}


def nodes(proto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in proto.graph.node}


def check_io_unchanged(parent, new) -> None:
    assert [(t.name, t.shape, t.dtype) for t in new.graph.inputs] == \
        [(t.name, t.shape, t.dtype) for t in parent.graph.inputs]
    assert [(t.shape, t.dtype) for t in new.graph.outputs] == [(t.shape, t.dtype) for t in parent.graph.outputs]


def check_quality(parent, new, *, cosine: float, drop: float) -> dict:
    fid = fidelity(parent, new)
    assert fid["n_samples"] == len(digits("test")[1])  # the demo's own test split, not random draws
    assert fid["cosine"] >= cosine, fid
    assert top1(new) >= top1(parent) - drop
    return fid


# --- registry and configs ------------------------------------------------------------------------
def test_registered_with_round_trip_configs():
    for tech in (DYNAMIC, STATIC, HALF, WEIGHT_ONLY):
        cfg = tech.config_cls()
        again = config_from_dict(cfg.to_dict())
        assert again == cfg and again.to_dict()["technique"] == tech.name


@pytest.mark.parametrize("data, words", [
    ({"technique": "quant.int8_static", "method": "median"}, "method"),
    ({"technique": "quant.int8_static", "calibration": "images.txt"}, "calibration"),
    ({"technique": "quant.int8_static", "samples": 0}, "samples"),
    ({"technique": "quant.weight_only", "bits": 3}, "bits"),
    ({"technique": "quant.weight_only", "block_size": 48}, "block_size"),
    ({"technique": "quant.fp16", "dtype": "int8"}, "dtype"),
    ({"technique": "quant.int8_dynamic", "per_channel": "yes"}, "per_channel"),
    ({"technique": "quant.int8_dynamic", "bits": 8}, "unknown setting"),
])
def test_bad_settings_are_refused(data, words):
    with pytest.raises(CompressError, match=words):
        config_from_dict(data)


# --- dynamic int8 --------------------------------------------------------------------------------
@pytest.mark.slow
def test_dynamic_refuses_conv_with_the_reason():
    for name in ("cnn", "cnn.onnx"):
        loaded = demo(name)
        conv = op_names(loaded, "Conv", "conv2d")[0]
        cfg = DYNAMIC.config_cls()
        assert DYNAMIC.applies_to(loaded.graph.layer(conv), loaded, cfg) == CONV_REASON
        with pytest.raises(CompressError, match="ConvInteger, measured 5–6× slower"):
            DYNAMIC.apply(loaded, cfg, [conv], Progress())


def test_dynamic_onnx_mlp_quantizes_exactly_the_selected_gemms():
    parent = demo("mlp.onnx")
    gemms = op_names(parent, "Gemm")
    assert len(gemms) == 3
    selection = [gemms[0], gemms[2]]  # the middle Gemm is left out
    res = DYNAMIC.apply(parent, DYNAMIC.config_cls(), selection, Progress())
    assert res.changed == selection
    proto = res.model.onnx_model
    owners = {U.owner_of(n.name, parent.graph.names()) for n in proto.graph.node if n.op_type == "MatMulInteger"}
    assert owners == set(selection)
    # the excluded Gemm is the parent's node, with its float32 weight, untouched
    kept = nodes(proto)[gemms[1]]
    assert kept == nodes(parent.onnx_model)[gemms[1]]
    w = kept.input[1]
    assert inits(proto)[w].data_type == onnx.TensorProto.FLOAT
    assert np.array_equal(numpy_helper.to_array(inits(proto)[w]), numpy_helper.to_array(inits(parent.onnx_model)[w]))
    # int8 storage for the selected weights (+ per-channel scales; the all-zero zero points are dropped)
    stored = U.storage_by_layer(proto, parent.graph.names())
    for n in selection:
        assert {s.dtype for s in stored[n]} == {"int8"}
    assert all(len(n.input) == 3 for n in proto.graph.node if n.op_type == "MatMulInteger")
    check_io_unchanged(parent, res.model)
    before = parent.graph.totals()["weight_bytes"]
    sel_bytes = sum(parent.graph.layer(n).weight_bytes for n in selection)
    after = res.model.graph.totals()["weight_bytes"]
    assert before - after == pytest.approx(sel_bytes * 0.75, rel=0.02)  # int8: a quarter of float32
    check_quality(parent, res.model, cosine=0.99, drop=0.01)


@pytest.mark.parametrize("name, selection, left", [
    ("mlp", ["layers.0", "classifier"], "layers.2"),
    pytest.param("lstm", ["lstm"], "classifier", marks=pytest.mark.slow),
])
def test_dynamic_torch_mlp_and_lstm(name, selection, left):
    if True:
        parent = demo(name)
        res = DYNAMIC.apply(parent, DYNAMIC.config_cls(), selection, Progress())
        assert res.changed == selection
        mod = res.model.torch_module
        assert type(mod.get_submodule(left)) is torch.nn.Linear  # outside the selection: still float
        g = res.model.graph
        for n in selection:
            assert "int8" in {w.dtype for w in g.layer(n).weights}
        assert {w.dtype for w in g.layer(left).weights} == {"float32"}
        assert res.model.torch_module is not parent.torch_module
        scope = parent.graph.layer(selection[0]).scope
        assert type(parent.torch_module.get_submodule(scope)).__module__.startswith("torch.nn.modules")  # parent intact
        assert type(mod.get_submodule(scope)).__module__.startswith("torch.ao.nn.quantized.dynamic")
        sel_bytes = sum(parent.graph.layer(n).weight_bytes for n in selection)
        saved = parent.graph.totals()["weight_bytes"] - g.totals()["weight_bytes"]
        assert saved == pytest.approx(sel_bytes * 0.75, rel=0.02)  # int8 weights, float32 biases
        check_io_unchanged(parent, res.model)
        check_quality(parent, res.model, cosine=0.99, drop=0.02)


def embedding_onnx(tmp_path):
    """ids -> Gather(table 50×16) -> MatMul(16×8): an embedding lookup and a projection."""
    from onnx import TensorProto, helper

    from effstudio.core.loaders import open_model

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])],
        [numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) * 0.2, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "emb.onnx"
    onnx.save(model, str(path))
    return open_model(str(path))


def test_dynamic_onnx_embedding_table(tmp_path):
    parent = embedding_onnx(tmp_path)
    cfg = DYNAMIC.config_cls()
    assert DYNAMIC.applies_to(parent.graph.layer("embed"), parent, cfg) is None
    res = DYNAMIC.apply(parent, cfg, ["embed"], Progress())
    assert res.changed == ["embed"] and res.extra["quantized"] == {"embed": "uint8"}
    stored = U.weight_storage(res.model.onnx_model)
    assert stored["embed"].dtype == "uint8" and stored["proj"].dtype == "float32"
    ratio = res.model.graph.layer("embed").weight_bytes / parent.graph.layer("embed").weight_bytes
    assert ratio < 0.26  # one byte per element (+ one scale and zero point)
    ids = {"ids": np.array([[3, 7, 7, 0, 49, 12]], dtype=np.int64)}
    fid = fidelity(parent, res.model, ids)
    assert fid["cosine"] > 0.999


def test_dynamic_torch_embedding():
    from effstudio.core.loaders.torch_graph import loaded_from_module

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids)).mean(1)

    torch.manual_seed(0)
    parent = loaded_from_module(Net().eval(), {"ids": torch.randint(0, 50, (1, 6))}, path="tests:emb",
                                format="torch-module")
    res = DYNAMIC.apply(parent, DYNAMIC.config_cls(), ["emb"], Progress())
    assert res.changed == ["emb"] and res.extra["quantized"] == {"emb": "uint8"}
    weights = {w.name: w.dtype for w in res.model.graph.layer("emb").weights}
    assert weights == {"emb.weight": "uint8", "emb.weight_scale": "float32", "emb.weight_zero_point": "float32"}
    assert {w.dtype for w in res.model.graph.layer("fc").weights} == {"float32"}
    ids = {"ids": np.array([[1, 2, 3, 4, 5, 49]], dtype=np.int64)}
    assert fidelity(parent, res.model, ids)["cosine"] > 0.999


def test_dynamic_torch_refuses_linear_inside_multihead_attention():
    parent = demo("transformer")
    cfg = DYNAMIC.config_cls()
    inner = next(lay for lay in parent.graph.layers if lay.scope.endswith("self_attn") and lay.op_type == "linear")
    assert "MultiheadAttention" in DYNAMIC.applies_to(inner, parent, cfg)
    assert DYNAMIC.applies_to(parent.graph.layer("encoder.layers.0.linear1"), parent, cfg) is None


# --- static int8 (QDQ) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_static_onnx_cnn_qdq_around_exactly_the_selection():
    parent = demo("cnn.onnx")
    convs = op_names(parent, "Conv")
    gemm = op_names(parent, "Gemm")
    selection = convs[1::2] + gemm  # every other conv and the classifier
    res = STATIC.apply(parent, STATIC.config_cls(samples=64), selection, Progress())
    assert res.changed == selection
    proto = res.model.onnx_model
    by_name = nodes(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    storage = U.weight_storage(proto)
    for n in convs + gemm:
        node = by_name[n]  # static quantization keeps node names
        act_from_dq = producer.get(node.input[0]) is not None and producer[node.input[0]].op_type == "DequantizeLinear"
        st = storage[n]
        if n in selection:
            assert act_from_dq and st.dequantized and st.dtype == "int8", n
        else:
            assert not act_from_dq and not st.dequantized and st.dtype == "float32", n
            assert node == nodes(parent.onnx_model)[n]
    # one QuantizeLinear per quantized activation: the input and the output of each selected node
    # (a graph output keeps its name: onnxruntime renames the tensor it quantizes "<name>_QuantizeLinear_Input")
    q_inputs = {n.input[0].removesuffix("_QuantizeLinear_Input") for n in proto.graph.node
                if n.op_type == "QuantizeLinear"}
    expected = {nodes(parent.onnx_model)[n].input[0] for n in selection} | \
        {nodes(parent.onnx_model)[n].output[0] for n in selection}
    assert q_inputs == expected
    assert "digits" in " ".join(res.notes) and res.extra["calibration"]["poor"] is False
    check_io_unchanged(parent, res.model)
    check_quality(parent, res.model, cosine=0.99, drop=0.02)


@pytest.mark.slow
def test_static_torch_cnn_goes_through_onnx():
    parent = demo("cnn")
    selection = op_names(parent, "conv2d", "linear")
    res = STATIC.apply(parent, STATIC.config_cls(samples=64), selection, Progress())
    assert res.changed == selection
    assert res.model.backend == "onnx"
    assert any("ONNX model" in n for n in res.notes)
    storage = U.weight_storage(res.model.onnx_model)
    assert {storage[n].dtype for n in res.extra["onnx_nodes"].values()} == {"int8"}
    ratio = res.model.graph.totals()["weight_bytes"] / parent.graph.totals()["weight_bytes"]
    assert ratio < 0.30  # int8 weights; the folded BatchNorms' parameters are gone too
    assert [t.shape for t in res.model.graph.outputs] == [t.shape for t in parent.graph.outputs]
    check_quality(parent, res.model, cosine=0.99, drop=0.02)


def test_reduce_range_defaults_to_the_cpu():
    on, why = U.resolve_reduce_range(None)
    assert on == (not U.cpu_has_vnni()) and why
    assert U.resolve_reduce_range(False)[0] is False and U.resolve_reduce_range(True)[0] is True


@pytest.mark.slow
def test_static_entropy_calibration_takes_effect():
    """onnxruntime's quantize_static alone gives MinMax ranges for Entropy (128-bin default); ours differ."""
    parent = demo("mlp.onnx")
    gemms = op_names(parent, "Gemm")

    def scales(method: str) -> dict[str, float]:
        res = STATIC.apply(parent, STATIC.config_cls(method=method, samples=32), gemms, Progress())
        return {t.name: float(numpy_helper.to_array(t)) for t in res.model.onnx_model.graph.initializer
                if t.name.endswith("_scale") and not t.dims}

    minmax, entropy = scales("minmax"), scales("entropy")
    assert minmax.keys() == entropy.keys()
    assert any(entropy[k] < 0.9 * minmax[k] for k in minmax)  # clipped ranges somewhere


def test_static_random_calibration_is_flagged():
    parent = demo("mlp.onnx")
    gemms = op_names(parent, "Gemm")
    res = STATIC.apply(parent, STATIC.config_cls(calibration="random", samples=8), gemms[:1], Progress())
    assert res.changed == gemms[:1]
    assert res.extra["calibration"] == {"source": "random", "samples": 8, "poor": True}
    assert any("random input" in n and "give an .npz" in n for n in res.notes)


def test_static_npz_calibration_and_a_bad_file(tmp_path):
    parent = demo("mlp.onnx")
    gemms = op_names(parent, "Gemm")
    x, _ = digits("val")
    good = tmp_path / "calib.npz"
    np.savez(good, x=x[:16])
    res = STATIC.apply(parent, STATIC.config_cls(calibration=str(good), method="percentile"), gemms, Progress())
    assert res.changed == gemms and res.extra["calibration"]["samples"] == 16
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=x[:16])
    with pytest.raises(CompressError, match=r"bad\.npz: no array named 'x'"):
        STATIC.apply(parent, STATIC.config_cls(calibration=str(bad)), gemms, Progress())


# --- half precision ------------------------------------------------------------------------------
def test_fp16_onnx_converts_only_the_selection():
    parent = demo("cnn.onnx")
    convs = op_names(parent, "Conv")
    selection = convs[2:4] + op_names(parent, "Gemm")
    res = HALF.apply(parent, HALF.config_cls(), selection, Progress())
    assert res.changed == selection
    proto = res.model.onnx_model
    pinits, rinits = inits(parent.onnx_model), inits(proto)
    pnodes = nodes(parent.onnx_model)
    for n in parent.graph.names():
        node = nodes(proto)[n]
        weights = [t for t in node.input if t in rinits]
        if n in selection:
            assert weights and all(rinits[t].data_type == onnx.TensorProto.FLOAT16 for t in weights)
        else:
            # unselected nodes read exactly what they read before: same tensors, float32 weights
            assert list(node.input) == list(pnodes[n].input)
            assert all(rinits[t].data_type == pinits[t].data_type for t in weights)
    check_io_unchanged(parent, res.model)
    sel_bytes = sum(parent.graph.layer(n).weight_bytes for n in selection)
    assert parent.graph.totals()["weight_bytes"] - res.model.graph.totals()["weight_bytes"] == sel_bytes // 2
    assert res.expectation.kind == "smaller-only" and "float32" in res.expectation.text
    check_quality(parent, res.model, cosine=0.999, drop=0.0)


def test_fp16_onnx_float16_io_when_asked():
    parent = demo("mlp.onnx")
    selection = [lay.name for lay in parent.graph.layers if HALF.applies_to(lay, parent, HALF.config_cls()) is None]
    res = HALF.apply(parent, HALF.config_cls(keep_io_fp32=False), selection, Progress())
    assert [t.dtype for t in res.model.graph.inputs] == ["float16"]
    assert [t.dtype for t in res.model.graph.outputs] == ["float16"]
    assert not [n for n in res.model.onnx_model.graph.node if n.op_type == "Cast"]
    x, _ = digits("test")
    sess = ort.InferenceSession(res.model.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(parent.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = ref.run(None, {"x": x[:1]})[0]
    b = sess.run(None, {"x": x[:1].astype(np.float16)})[0]
    assert b.dtype == np.float16 and np.argmax(a) == np.argmax(b)
    assert float(np.dot(a.ravel(), b.ravel().astype(np.float32)) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_bfloat16_refused_on_onnx():
    parent = demo("mlp.onnx")
    gemm = parent.graph.layer(op_names(parent, "Gemm")[0])
    reason = HALF.applies_to(gemm, parent, HALF.config_cls(dtype="bfloat16"))
    assert reason is not None and "bfloat16" in reason


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_torch_mlp_subset(dtype):
    parent = demo("mlp")
    selection = ["layers.0", "layers.2"]
    res = HALF.apply(parent, HALF.config_cls(dtype=dtype), selection, Progress())
    assert res.changed == selection
    sd = res.model.torch_module.state_dict()
    assert sd["layers.0.weight"].dtype == getattr(torch, dtype)
    assert sd["classifier.weight"].dtype == torch.float32
    # the casts added around each converted module do not rename it: the op reading its weights keeps
    # the module path, so later steps can select it by the same name
    assert res.extra["renamed"] == {}
    for n in selection:
        assert res.model.graph.layer(n).op_type == "linear"
    check_io_unchanged(parent, res.model)
    sel_bytes = sum(parent.graph.layer(n).weight_bytes for n in selection)
    assert parent.graph.totals()["weight_bytes"] - res.model.graph.totals()["weight_bytes"] == sel_bytes // 2
    check_quality(parent, res.model, cosine=0.999, drop=0.01)


# --- weight-only ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_onnx_mlp(bits):
    parent = demo("mlp.onnx")
    gemms = op_names(parent, "Gemm")
    selection = gemms[:2]
    res = WEIGHT_ONLY.apply(parent, WEIGHT_ONLY.config_cls(bits=bits), selection, Progress())
    assert res.changed == selection
    proto = res.model.onnx_model
    owners = [U.owner_of(n.name, parent.graph.names()) for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert owners == selection
    assert nodes(proto)[gemms[2]] == nodes(parent.onnx_model)[gemms[2]]
    sel_bytes = sum(parent.graph.layer(n).weight_bytes for n in selection)
    saved = parent.graph.totals()["weight_bytes"] - res.model.graph.totals()["weight_bytes"]
    # bits/32 of the weights stay, plus a float32 scale per block of 32 (biases stay float32)
    expect = 1 - (bits + 1) / 32
    assert saved == pytest.approx(sel_bytes * expect, rel=0.02)
    check_io_unchanged(parent, res.model)
    check_quality(parent, res.model, cosine=0.99, drop=0.01 if bits == 8 else 0.02)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_torch_mlp(bits):
    parent = demo("mlp")
    selection = ["layers.0", "layers.2"]
    res = WEIGHT_ONLY.apply(parent, WEIGHT_ONLY.config_cls(bits=bits), selection, Progress())
    assert res.changed == selection
    sd = res.model.torch_module.state_dict()
    assert sd["layers.0.weight_q"].dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert sd["layers.0.weight_q"].shape == (768, 1024 if bits == 8 else 512)
    assert "classifier.weight" in sd and sd["classifier.weight"].dtype == torch.float32
    assert res.model.exported is not None  # a plain module: it re-exports (and saves as .pt2)
    sel_bytes = sum(parent.graph.layer(n).weight_bytes for n in selection)
    saved = parent.graph.totals()["weight_bytes"] - res.model.graph.totals()["weight_bytes"]
    assert saved == pytest.approx(sel_bytes * (1 - (bits + 1) / 32), rel=0.02)
    assert res.expectation.kind == "smaller-only"
    check_io_unchanged(parent, res.model)
    check_quality(parent, res.model, cosine=0.99, drop=0.01 if bits == 8 else 0.02)


def test_dynamic_onnx_steps_chain():
    """A second dynamic-int8 step on a model an earlier step quantized in part: the layers the first
    step quantized are not 'outside the selection' of the second."""
    from effstudio.core.compress.session import Session

    parent = demo("mlp.onnx")
    session = Session(parent, measure=False)
    first = op_names(parent, "Gemm")[0]
    v1 = session.apply("quant.int8_dynamic", {"per_channel": True}, [first], measure=False)
    second = op_names(v1.model, "Gemm")[0]
    v2 = session.apply("quant.int8_dynamic", {"per_channel": False}, [second], measure=False)
    assert v2.parent_id == v1.id
    ops = [lay.op_type for lay in v2.model.graph.layers]
    assert ops.count("MatMulInteger") == 2

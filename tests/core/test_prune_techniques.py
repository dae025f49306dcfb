"""prune.unstructured and prune.channels on the demo zoo, torch and ONNX forms: what changes,
shapes and parameter counts, exact sparsity, compressed size, accuracy on the digits test split,
coupled layers (preview), and the refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from compress_models import cached_demo as demo
from onnx import numpy_helper
from test_onnx_channel_groups import cut_inputs  # tests/core is on sys.path (pytest rootdir mode)

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.registry import config_from_dict, get_technique
from effstudio.core.compress.techniques.prune_channels import preview
from effstudio.core.compress.techniques.prune_channels_onnx import prune_onnx_channels
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.progress import Progress
from effstudio.core.zoo import digits

UNSTRUCTURED = get_technique("prune.unstructured")
CHANNELS = get_technique("prune.channels")


def top1(loaded) -> float:
    """Top-1 accuracy on the digits test split, run here with onnxruntime or torch."""
    x, y = digits("test")
    if loaded.backend == "onnx":
        sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        logits = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    else:
        with torch.no_grad():
            logits = loaded.torch_module(x=torch.from_numpy(x.copy())).numpy()
    return float((logits.argmax(1) == y).mean())


def onnx_weights(loaded) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in loaded.onnx_model.graph.initializer}


def torch_weights(loaded) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in loaded.torch_module.state_dict().items()}


def conv_names(loaded) -> list[str]:
    return [lay.name for lay in loaded.graph.layers if lay.op_type in ("Conv", "conv2d")]


def run_onnx(proto, x):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


# --- prune.unstructured --------------------------------------------------------------------------
def _check_unstructured(loaded, selection, weights_of, scope):
    before = weights_of(loaded)
    res = UNSTRUCTURED.apply(loaded, config_from_dict({"technique": "prune.unstructured", "amount": 0.5,
                                                       "scope": scope}), selection, Progress())
    after = weights_of(res.model)
    names = [loaded.graph.layer(s).weights[0].name for s in selection]
    if scope == "layer":
        for n in names:
            assert int((after[n] == 0).sum()) == round(0.5 * after[n].size), n  # exact per-layer sparsity
    else:
        assert sum(int((after[n] == 0).sum()) for n in names) == round(0.5 * sum(after[n].size for n in names))
        # one threshold: every kept weight is at least as large as every zeroed one
        kept = np.concatenate([np.abs(after[n][after[n] != 0]) for n in names])
        zeroed = np.concatenate([np.abs(before[n][after[n] == 0]) for n in names])
        assert kept.min() >= zeroed.max()
    for n in names:  # the kept weights are untouched
        mask = after[n] != 0
        np.testing.assert_array_equal(after[n][mask], before[n][mask])
    assert res.changed == selection and res.coupled == []
    cb = res.extra["compressed_bytes"]
    assert cb["after"] < 0.8 * cb["before"]
    assert res.model.graph.totals()["weight_bytes"] == loaded.graph.totals()["weight_bytes"]  # dense: same raw size
    assert res.expectation.kind == "smaller-only" and "will not run faster" in res.expectation.text
    return res


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_onnx_cnn(scope):
    cnn = demo("cnn.onnx")
    res = _check_unstructured(cnn, conv_names(cnn), onnx_weights, scope)
    # 50 % of the conv weights gone, no fine-tuning: one global threshold spares the small first conv
    assert top1(res.model) > (0.95 if scope == "global" else 0.7)


@pytest.mark.slow
def test_unstructured_torch_cnn_and_accuracy_at_30_percent():
    cnn = demo("cnn")
    _check_unstructured(cnn, conv_names(cnn), torch_weights, "layer")
    sel = [*conv_names(cnn), "classifier"]
    res = UNSTRUCTURED.apply(cnn, UNSTRUCTURED.config_cls(amount=0.3, scope="global"), sel, Progress())
    assert res.changed == sel
    assert top1(res.model) >= 0.95


@pytest.mark.slow
def test_unstructured_onnx_mlp_gemm():
    mlp = demo("mlp.onnx")
    gemms = [lay.name for lay in mlp.graph.layers if lay.op_type in ("Gemm", "MatMul")]
    res = _check_unstructured(mlp, gemms, onnx_weights, "layer")
    assert top1(res.model) > 0.9


def test_unstructured_refuses_layers_without_a_weight_matrix():
    cnn_like = _tiny_torch()
    with pytest.raises(CompressError) as e:
        UNSTRUCTURED.check_selection(cnn_like, UNSTRUCTURED.config_cls(), ["norm", "fc"])
    assert "norm" in str(e.value) and "fc (" not in str(e.value)
    with pytest.raises(CompressError, match="amount must be in"):
        config_from_dict({"technique": "prune.unstructured", "amount": 1.5})


# --- prune.channels: ONNX -------------------------------------------------------------------------
@pytest.mark.slow
def test_channels_onnx_cnn_last_stage():
    cnn = demo("cnn.onnx")
    convs = conv_names(cnn)
    sel = convs[-2:]  # the two 128-channel convs
    w0 = onnx_weights(cnn)
    res = CHANNELS.apply(cnn, CHANNELS.config_cls(amount=0.3), sel, Progress())
    w1 = onnx_weights(res.model)
    keep = 128 - round(0.3 * 128)  # 90
    conv_a, conv_b = (cnn.graph.layer(s).weights[0].name for s in sel)
    gemm = cnn.graph.layer("node_linear").weights[0].name
    assert w1[conv_a].shape == (keep, 64, 3, 3) and w1[conv_b].shape == (keep, keep, 3, 3)
    assert w1[gemm].shape == (10, keep)
    removed = sum(w0[k].size - w1[k].size for k in w0)
    assert res.extra["params"]["before"] - res.extra["params"]["after"] == removed
    expected = (128 - keep) * (64 * 9 + 1) + (128 * 128 - keep * keep) * 9 + (128 - keep) + 10 * (128 - keep)
    assert removed == expected
    assert res.changed == [*sel, "node_view", "node_linear"]  # the Reshape's target shape follows
    assert res.coupled == ["node_view", "node_linear"]
    assert res.expectation.kind == "faster-and-smaller"
    out = run_onnx(res.model.onnx_model, digits("test")[0][:1])
    assert out.shape == (1, 10)
    assert top1(res.model) >= 0.9


@pytest.mark.slow
def test_channels_onnx_resnet_residual_group_is_exact():
    """Pruning a residual group changes every conv tied to it by the adds; the pruned model computes
    what the original does with those channels cut at their consumers."""
    resnet = demo("resnet.onnx")
    convs = conv_names(resnet)
    stem = convs[0]
    pv = preview(resnet, CHANNELS.config_cls(), [stem])
    stage0 = [c for c in convs if resnet.graph.layer(c).weights[0].name.startswith(("conv1", "layers.0."))]
    tied = [c for c in stage0 if resnet.graph.layer(c).weights[0].name.endswith("conv2.weight")]
    assert len(tied) == 2 and set(tied) <= set(pv[stem])  # both blocks' second convs share the stem's channels
    assert len(pv[stem]) >= 5
    pruned, report, cg, removals = prune_onnx_channels(resnet.onnx_model, [stem], amount=0.3, importance="l1",
                                                       round_to=None, progress=Progress())
    assert report["groups"][0]["kept"] == 24 - round(0.3 * 24)
    x = digits("test")[0][:1]
    np.testing.assert_allclose(run_onnx(pruned, x), run_onnx(cut_inputs(resnet.onnx_model, cg, removals), x),
                               rtol=1e-3, atol=1e-4)
    res = CHANNELS.apply(resnet, CHANNELS.config_cls(amount=0.3), [stem], Progress())
    assert set(tied) <= set(res.coupled) and stem in res.changed
    assert res.model.graph.outputs[0].shape == resnet.graph.outputs[0].shape


@pytest.mark.slow
def test_channels_onnx_mobilenet_depthwise_lockstep():
    mb = demo("mobilenetv2.onnx")
    nodes = {n.name: n for n in mb.onnx_model.graph.node}
    # features.2 is the first block with a 1×1 expand conv (features.1 has expand ratio 1)
    expand = next(c for c in conv_names(mb) if mb.graph.layer(c).weights[0].name == "features.2.conv.0.0.weight")
    pv = preview(mb, CHANNELS.config_cls(), [expand])[expand]
    dw = [c for c in pv if nodes[c].op_type == "Conv" and onnx.helper.get_attribute_value(
        next(a for a in nodes[c].attribute if a.name == "group")) > 1]
    assert len(dw) == 1
    res = CHANNELS.apply(mb, CHANNELS.config_cls(amount=0.5, round_to=8), [expand], Progress())
    new_nodes = {n.name: n for n in res.model.onnx_model.graph.node}
    w1 = onnx_weights(res.model)
    w_name = mb.graph.layer(expand).weights[0].name
    w_exp = w1[w_name]
    assert w_exp.shape[0] % 8 == 0 and w_exp.shape[0] < onnx_weights(mb)[w_name].shape[0]
    g = onnx.helper.get_attribute_value(next(a for a in new_nodes[dw[0]].attribute if a.name == "group"))
    assert g == w_exp.shape[0] == w1[mb.graph.layer(dw[0]).weights[0].name].shape[0]
    assert run_onnx(res.model.onnx_model, digits("test")[0][:1]).shape == (1, 10)
    # accuracy at 30 % of a block inside a stage (the stride-2 first blocks are far more sensitive)
    block3 = next(c for c in conv_names(mb) if mb.graph.layer(c).weights[0].name == "features.3.conv.0.0.weight")
    res = CHANNELS.apply(mb, CHANNELS.config_cls(amount=0.3), [block3], Progress())
    assert onnx_weights(res.model)["features.3.conv.0.0.weight"].shape[0] == 144 - 43
    assert top1(res.model) >= 0.85


@pytest.mark.slow
def test_channels_onnx_refusals():
    cnn = demo("cnn.onnx")
    with pytest.raises(CompressError) as e:
        CHANNELS.check_selection(cnn, CHANNELS.config_cls(), ["node_linear", "node_relu", "node_mean"])
    msg = str(e.value)
    assert "node_linear (its channels reach the model output" in msg
    assert "node_relu (a Relu has no output channels" in msg and "node_mean" in msg
    with pytest.raises(CompressError, match="Taylor importance needs gradients"):
        CHANNELS.check_selection(cnn, CHANNELS.config_cls(importance="taylor"), conv_names(cnn)[:1])
    with pytest.raises(CompressError, match="no BatchNormalization in its channel group"):
        CHANNELS.apply(cnn, CHANNELS.config_cls(importance="bn_scale"), conv_names(cnn)[:1], Progress())


# --- prune.channels: torch -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("importance", ["l1", "bn_scale", "taylor"])
def test_channels_torch_cnn(importance):
    cnn = demo("cnn")
    sel = ["features.14", "features.17"]
    res = CHANNELS.apply(cnn, CHANNELS.config_cls(amount=0.3, importance=importance), sel, Progress())
    w = torch_weights(res.model)
    assert w["features.14.weight"].shape == (90, 64, 3, 3) and w["features.17.weight"].shape == (90, 90, 3, 3)
    assert w["features.18.running_var"].shape == (90,) and w["classifier.weight"].shape == (10, 90)
    assert res.changed == ["features.14", "features.15", "features.17", "features.18", "classifier"]
    assert res.coupled == ["features.15", "features.18", "classifier"]
    expected = 38 * (64 * 9 + 4) + (128 * 128 - 90 * 90) * 9 + 38 * 4 + 10 * 38
    assert res.extra["params"]["before"] - res.extra["params"]["after"] == expected
    assert res.model.graph.outputs[0].shape == (1, 10)
    # no fine-tuning: one batch of Taylor scores ranks channels worse than the weight norms here
    assert top1(res.model) >= (0.6 if importance == "taylor" else 0.9)


@pytest.mark.slow
def test_channels_torch_resnet_preview_lists_the_residual_group():
    resnet = demo("resnet")
    pv = preview(resnet, CHANNELS.config_cls(), ["conv1"])["conv1"]
    for name in ("bn1", "layers.0.0.conv1", "layers.0.0.conv2", "layers.0.0.bn2", "layers.0.1.conv2",
                 "layers.1.0.conv1", "layers.1.0.downsample.0"):
        assert name in pv
    res = CHANNELS.apply(resnet, CHANNELS.config_cls(amount=0.5, round_to=8), ["layers.0.0.conv2"], Progress())
    assert "conv1" in res.coupled and "layers.0.1.conv2" in res.coupled
    assert torch_weights(res.model)["conv1.weight"].shape[0] == 8 * round(12 / 8)
    assert res.model.graph.outputs[0].shape == (1, 10)
    # the last stage's residual stream at 30 % (the first stage's costs far more without fine-tuning)
    res = CHANNELS.apply(resnet, CHANNELS.config_cls(amount=0.3), ["layers.2.0.conv2"], Progress())
    assert {"layers.2.0.downsample.0", "layers.2.1.conv2", "fc"} <= set(res.coupled)
    assert torch_weights(res.model)["fc.weight"].shape == (10, 96 - 29)
    assert top1(res.model) >= 0.85


@pytest.mark.slow
def test_channels_torch_mobilenet_and_mlp():
    mb = demo("mobilenetv2")
    res = CHANNELS.apply(mb, CHANNELS.config_cls(amount=0.3), ["features.3.conv.0.0"], Progress())
    assert "features.3.conv.1.0" in res.coupled  # the depthwise conv follows
    w = torch_weights(res.model)
    assert w["features.3.conv.0.0.weight"].shape[0] == w["features.3.conv.1.0.weight"].shape[0] == 144 - 43
    assert top1(res.model) >= 0.8
    mlp = demo("mlp")
    res = CHANNELS.apply(mlp, CHANNELS.config_cls(amount=0.3), ["layers.0", "layers.2"], Progress())
    w = torch_weights(res.model)
    assert w["layers.0.weight"].shape == (538, 1024) and w["layers.2.weight"].shape == (358, 538)
    assert w["classifier.weight"].shape == (10, 358)
    assert top1(res.model) >= 0.9


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.norm = torch.nn.LayerNorm(6)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return torch.softmax(self.fc(self.norm(self.conv(x))), dim=-1)


def _tiny_torch():
    torch.manual_seed(0)
    return loaded_from_module(_Tiny().eval(), {"x": torch.randn(1, 1, 8, 8)}, path="tiny", format="torch-module",
                              progress=Progress())


def test_channels_refuses_layernorm_softmax_and_the_classifier():
    tiny = _tiny_torch()
    soft = next(lay.name for lay in tiny.graph.layers if "softmax" in lay.op_type)
    with pytest.raises(CompressError) as e:
        CHANNELS.check_selection(tiny, CHANNELS.config_cls(), ["norm", soft, "fc"])
    msg = str(e.value)
    assert "norm (a layer_norm has no output channels" in msg
    assert f"{soft} (a " in msg
    assert "fc (its output features are the model's output)" in msg
    with pytest.raises(CompressError, match="Taylor importance needs labelled data"):
        CHANNELS.check_selection(tiny, CHANNELS.config_cls(importance="taylor"), ["conv"])
    with pytest.raises(CompressError, match="importance must be one of"):
        config_from_dict({"technique": "prune.channels", "importance": "random"})

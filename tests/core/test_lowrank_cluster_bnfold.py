"""lowrank.svd, cluster.kmeans and fold.batchnorm on the demo zoo (torch and ONNX forms) and on small
models with closed-form answers.  Fidelity is computed here, independently, with torch/onnxruntime on
the digits test split."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.registry import config_from_dict, get_technique
from effstudio.core.compress.sizes import compressed_weight_bytes
from effstudio.core.compress.techniques.bn_fold import FoldBatchNormConfig
from effstudio.core.compress.techniques.cluster import ClusterConfig, kmeans_1d, palette_bytes
from effstudio.core.compress.techniques.lowrank import (
    LowRankConfig,
    choose_rank,
    conv_kernels,
    conv_matrix,
    svd_factors,
)
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress
from effstudio.core.zoo import build_demo, digits, load_demo


# --- helpers -------------------------------------------------------------------------------------
def outputs(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    """The first output on ``x`` (samples first), with onnxruntime or torch."""
    if loaded.backend == "onnx":
        sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        batch = sess.get_inputs()[0].shape[0]
        step = batch if isinstance(batch, int) else len(x)
        return np.concatenate([sess.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])
    with torch.no_grad():
        return loaded.torch_module(x=torch.from_numpy(np.array(x))).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def params(loaded: LoadedModel) -> int:
    return loaded.graph.totals()["params"]


def apply(technique: str, loaded: LoadedModel, config, selection: list[str]):
    return get_technique(technique).apply(loaded, config, selection, Progress())


@pytest.fixture(scope="module")
def test_split():
    return digits("test")


@pytest.fixture(scope="module")
def mlp_onnx():
    return load_demo("mlp.onnx")


@pytest.fixture(scope="module")
def cnn_torch():
    return load_demo("cnn")


@pytest.fixture(scope="module")
def cnn_onnx():
    return load_demo("cnn.onnx")


def _onnx_model(tmp_path, nodes, inits, x_shape, y_shape, name="m") -> LoadedModel:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return load_onnx(path, inputs={}, progress=Progress())


# --- config round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [LowRankConfig(rank_by="ratio", rank_ratio=0.3),
                                 ClusterConfig(clusters=16, init="density"), FoldBatchNormConfig()])
def test_configs_round_trip_through_the_registry(cfg):
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("data", [{"technique": "lowrank.svd", "energy": 0},
                                  {"technique": "lowrank.svd", "energy": 1.5},
                                  {"technique": "lowrank.svd", "rank_by": "rows"},
                                  {"technique": "cluster.kmeans", "clusters": 1},
                                  {"technique": "cluster.kmeans", "clusters": 300},
                                  {"technique": "cluster.kmeans", "init": "random"}])
def test_bad_settings_are_refused(data):
    with pytest.raises(CompressError, match=data["technique"]):
        config_from_dict(data)


# --- low-rank: the math ------------------------------------------------------------------------------
def test_rank_by_ratio_and_by_energy():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, LowRankConfig(rank_by="ratio", rank_ratio=0.5)) == 2
    assert choose_rank(s, LowRankConfig(rank_by="ratio", rank_ratio=0.01)) == 1
    assert choose_rank(s, LowRankConfig(rank_by="energy", energy=16 / 22)) == 1
    assert choose_rank(s, LowRankConfig(rank_by="energy", energy=0.8)) == 2
    assert choose_rank(s, LowRankConfig(rank_by="energy", energy=21 / 22)) == 3
    assert choose_rank(s, LowRankConfig(rank_by="energy", energy=1.0)) == 4


def test_svd_factors_recover_a_low_rank_matrix():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))
    f = svd_factors(m, LowRankConfig(rank_by="energy", energy=0.999999))
    assert f.rank == 3 and f.full_rank == 30 and f.a.shape == (40, 3) and f.b.shape == (3, 30)
    np.testing.assert_allclose(f.a @ f.b, m, atol=1e-10)


@pytest.mark.parametrize("geometry", [
    {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"kernel_size": 3, "stride": 1, "padding": "same"},
    {"kernel_size": 1, "stride": 2, "padding": 0},
    {"kernel_size": (1, 3), "stride": (1, 2), "padding": (0, 1)},
])
def test_spatial_svd_at_full_rank_is_the_same_convolution(geometry):
    from effstudio.core.compress.techniques.lowrank import Factors, _torch_conv_pair

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **geometry).eval()
    w = conv.weight.detach().numpy()
    m = conv_matrix(w)
    assert m.shape == (4 * w.shape[2], 6 * w.shape[3])
    u, s, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    f = Factors(u * np.sqrt(s), np.sqrt(s)[:, None] * vt, len(s), len(s), 1.0)
    k0, k1 = conv_kernels(f, w.shape)
    assert k0.shape == (len(s), 4, w.shape[2], 1) and k1.shape == (6, len(s), 1, w.shape[3])
    with torch.no_grad():
        first, second = _torch_conv_pair(conv, f, True, {"dtype": torch.float32, "device": "cpu"})
        second.bias.copy_(conv.bias)
        x = torch.randn(2, 4, 11, 13)
        torch.testing.assert_close(second(first(x)), conv(x), atol=1e-5, rtol=1e-5)


# --- low-rank on models ---------------------------------------------------------------------------
class _LowRankNet(nn.Module):
    """fc1 holds a rank-4 matrix (plus tiny noise); fc2 a random, full-rank one."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(64, 4, generator=g) @ torch.randn(4, 64, generator=g) / 8
                                  + 1e-4 * torch.randn(64, 64, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_lowrank_energy_finds_the_rank_and_skips_layers_that_would_grow():
    torch.manual_seed(0)
    loaded = loaded_from_module(_LowRankNet().eval(), {"x": torch.randn(8, 64)}, path="tests:lowrank",
                                format="torch-module")
    res = apply("lowrank.svd", loaded, LowRankConfig(rank_by="energy", energy=0.95), ["fc1", "fc2"])
    assert res.changed == ["fc1"]
    assert res.extra["layers"]["fc1"]["rank"] <= 4 and res.extra["skipped"] == ["fc2"]
    assert any("fc2" in n and "not fewer" in n for n in res.notes)
    r = res.extra["layers"]["fc1"]["rank"]
    assert params(res.model) == params(loaded) - 64 * 64 + r * (64 + 64)
    names = res.model.graph.names()
    assert "fc1.0" in names and "fc1.1" in names and "fc1" not in names and "fc2" in names
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    assert cosine(outputs(loaded, x), outputs(res.model, x)) > 0.9999
    with pytest.raises(CompressError, match=r"no selected layer gets smaller.*fc2"):
        apply("lowrank.svd", loaded, LowRankConfig(rank_by="energy", energy=0.95), ["fc2"])


@pytest.mark.slow
def test_lowrank_onnx_gemm_on_the_mlp(mlp_onnx, test_split):
    x, y = test_split
    sel = ["node_linear", "node_linear_1"]  # 1024→768 and 768→512 Gemms (transB=1, with bias)
    res = apply("lowrank.svd", mlp_onnx, LowRankConfig(rank_by="energy", energy=0.8), sel)
    assert res.changed == sel and res.coupled == []
    layers = res.extra["layers"]
    expect = params(mlp_onnx)
    for name, (rows, cols) in zip(sel, [(1024, 768), (768, 512)], strict=True):
        r = layers[name]["rank"]
        assert 0 < r < rows * cols / (rows + cols) and layers[name]["energy"] >= 0.8
        expect += r * (rows + cols) - rows * cols
        assert layers[name]["new_layers"] == [f"{name}.0", f"{name}.1"]
    assert params(res.model) == expect
    names = res.model.graph.names()
    assert "node_linear" not in names and {"node_linear.0", "node_linear.1"} <= set(names)
    assert res.extra["macs"]["after"] < 0.8 * res.extra["macs"]["before"]
    assert res.expectation.kind == "faster-and-smaller" and "kernels" in res.expectation.text
    a, b = outputs(mlp_onnx, x), outputs(res.model, x)
    assert b.shape == a.shape == (len(x), 10)
    assert cosine(a, b) > 0.99 and accuracy(b, y) >= accuracy(a, y) - 0.02


@pytest.mark.slow
def test_lowrank_energy_095_keeps_nothing_of_the_trained_mlp(mlp_onnx):
    # trained-from-scratch weights are close to full rank: 95 % of the energy needs more weights than W has
    with pytest.raises(CompressError, match=r"node_linear: rank .* not fewer than its 786,432"):
        apply("lowrank.svd", mlp_onnx, LowRankConfig(rank_by="energy", energy=0.95), ["node_linear"])


@pytest.mark.slow
def test_lowrank_torch_mlp_is_renamed_into_a_sequential(test_split):
    x, y = test_split
    mlp = load_demo("mlp")
    res = apply("lowrank.svd", mlp, LowRankConfig(rank_by="ratio", rank_ratio=0.25), ["layers.0", "layers.2"])
    assert res.changed == ["layers.0", "layers.2"]
    assert res.extra["renamed"] == {"layers.0": ["layers.0.0", "layers.0.1"], "layers.2": ["layers.2.0", "layers.2.1"]}
    assert [res.extra["layers"][n]["rank"] for n in res.changed] == [192, 128]
    assert params(res.model) == params(mlp) - 1024 * 768 - 768 * 512 + 192 * (1024 + 768) + 128 * (768 + 512)
    assert isinstance(res.model.torch_module.layers[0], nn.Sequential)
    assert type(mlp.torch_module.layers[0]) is nn.Linear  # the parent is untouched
    a, b = outputs(mlp, x), outputs(res.model, x)
    assert cosine(a, b) > 0.99 and accuracy(b, y) >= accuracy(a, y) - 0.02


def test_lowrank_conv_torch_cnn(cnn_torch, test_split):
    x, _ = test_split
    res = apply("lowrank.svd", cnn_torch, LowRankConfig(rank_by="ratio", rank_ratio=0.25), ["features.17"])
    r = res.extra["layers"]["features.17"]["rank"]
    assert r == 96  # 0.25 × min(128·3, 128·3)
    assert params(res.model) == params(cnn_torch) - 128 * 128 * 9 + r * (128 * 3 + 128 * 3)
    seq = res.model.torch_module.features[17]
    assert seq[0].kernel_size == (3, 1) and seq[1].kernel_size == (1, 3)
    assert seq[0].padding == (1, 0) and seq[1].padding == (0, 1)
    a, b = outputs(cnn_torch, x[:64]), outputs(res.model, x[:64])
    assert a.shape == b.shape and cosine(a, b) > 0.9


def test_lowrank_conv_onnx_cnn(cnn_onnx, test_split):
    x, y = test_split
    res = apply("lowrank.svd", cnn_onnx, LowRankConfig(rank_by="ratio", rank_ratio=0.4), ["node_Conv_105"])
    r = res.extra["layers"]["node_Conv_105"]["rank"]
    assert r == round(0.4 * 384)
    assert params(res.model) == params(cnn_onnx) - 128 * 128 * 9 + r * (128 * 3 + 128 * 3)
    convs = {n.name: n for n in res.model.onnx_model.graph.node if n.name.startswith("node_Conv_105")}
    assert set(convs) == {"node_Conv_105.0", "node_Conv_105.1"}
    a, b = outputs(cnn_onnx, x), outputs(res.model, x)
    assert a.shape == b.shape and cosine(a, b) > 0.98 and accuracy(b, y) >= accuracy(a, y) - 0.03


def test_lowrank_onnx_conv_geometry_is_exact_for_a_low_rank_kernel(tmp_path):
    """A strided, dilated, asymmetrically padded 3×5 conv whose reshaped kernel has rank 2."""
    rng = np.random.default_rng(0)
    o, i, kh, kw = 6, 4, 3, 5
    m = rng.standard_normal((i * kh, 2)) @ rng.standard_normal((2, o * kw))
    w = m.reshape(i, kh, o, kw).transpose(2, 0, 1, 3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[2, 1], dilations=[1, 2],
                              pads=[1, 2, 0, 3])]
    loaded = _onnx_model(tmp_path, nodes, {"w": w, "b": rng.standard_normal(o)}, ["N", 4, 12, 13], ["N", 6, 5, 10])
    assert np.allclose(conv_matrix(w.astype(np.float32)), m.astype(np.float32), atol=1e-5)
    res = apply("lowrank.svd", loaded, LowRankConfig(rank_by="energy", energy=0.99999), ["conv"])
    assert res.extra["layers"]["conv"]["rank"] == 2
    x = rng.standard_normal((3, 4, 12, 13)).astype(np.float32)
    np.testing.assert_allclose(outputs(res.model, x), outputs(loaded, x), atol=1e-4)


def test_lowrank_onnx_matmul_on_3d_activations(tmp_path):
    """MatMul + Add (how exporters write a Linear on (batch, tokens, features)); a rank-3 weight is exact."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 3)) @ rng.standard_normal((3, 16))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    loaded = _onnx_model(tmp_path, nodes, {"w": w, "b": rng.standard_normal(16)}, ["N", 5, 24], ["N", 5, 16])
    res = apply("lowrank.svd", loaded, LowRankConfig(rank_by="energy", energy=0.99999), ["proj"])
    assert res.extra["layers"]["proj"]["rank"] == 3 and res.changed == ["proj"]
    assert params(res.model) == params(loaded) - 24 * 16 + 3 * (24 + 16)
    assert [n.op_type for n in res.model.onnx_model.graph.node] == ["MatMul", "MatMul", "Add"]
    assert "w" not in {i.name for i in res.model.onnx_model.graph.initializer}  # the old weight is gone
    json.dumps(res.extra)
    x = rng.standard_normal((2, 5, 24)).astype(np.float32)
    np.testing.assert_allclose(outputs(res.model, x), outputs(loaded, x), atol=1e-4)


def test_lowrank_refuses_layers_it_cannot_factorize(cnn_torch, cnn_onnx):
    tech = get_technique("lowrank.svd")
    with pytest.raises(CompressError, match=r"features\.2 \(a relu_ has no Linear/Conv2d weight"):
        tech.check_selection(cnn_torch, LowRankConfig(), ["features.3", "features.2"])
    with pytest.raises(CompressError, match=r"node_relu \(a Relu has no Gemm/MatMul/Conv weight"):
        tech.check_selection(cnn_onnx, LowRankConfig(), ["node_relu"])
    with pytest.raises(CompressError, match=r"features\.1 \(a batch_norm"):
        tech.apply(cnn_torch, LowRankConfig(), ["features.1"], Progress())


@pytest.mark.slow
def test_lowrank_on_the_vit(test_split):
    x, y = test_split
    vit = load_demo("transformer")
    tech = get_technique("lowrank.svd")
    # the attention output projection is applied inside MultiheadAttention.forward, not by its module
    with pytest.raises(CompressError, match=r"linear_1 \(its weight is used inside .*self_attn's own forward"):
        tech.check_selection(vit, LowRankConfig(), ["encoder.layers.0.self_attn.linear_1"])
    sel = ["encoder.layers.0.linear1", "encoder.layers.0.linear2"]
    res = tech.apply(vit, LowRankConfig(rank_by="energy", energy=0.8), sel, Progress())
    assert res.changed == sel
    ranks = [res.extra["layers"][n]["rank"] for n in sel]
    assert params(res.model) == params(vit) - 2 * 96 * 192 + sum(r * (96 + 192) for r in ranks)
    a, b = outputs(vit, x), outputs(res.model, x)
    assert cosine(a, b) > 0.98 and accuracy(b, y) >= accuracy(a, y) - 0.03


# --- clustering ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "k", "init"), [(3000, 16, "linear"), (5000, 64, "linear"), (4000, 32, "density")])
def test_kmeans_1d_matches_scikit_learn(n, k, init):
    from sklearn.cluster import KMeans

    x = np.random.default_rng(n).standard_normal(n) * 0.05
    km = kmeans_1d(x, k, init)
    xs = np.sort(x)
    c0 = np.linspace(xs[0], xs[-1], k) if init == "linear" else np.quantile(xs, (np.arange(k) + 0.5) / k)
    ref = KMeans(k, init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0, max_iter=300).fit(x.reshape(-1, 1))
    np.testing.assert_allclose(km.centroids, np.sort(ref.cluster_centers_.ravel()), atol=1e-12)
    assert km.iterations == ref.n_iter_
    assert km.inertia == pytest.approx(ref.inertia_, rel=1e-9)
    np.testing.assert_allclose(km.centroids[km.labels], ref.cluster_centers_.ravel()[ref.labels_], atol=1e-12)


def test_kmeans_1d_with_fewer_distinct_values_than_clusters():
    x = np.array([0.5, -1.0, 0.5, 2.0, -1.0])
    km = kmeans_1d(x, 16)
    assert km.centroids.tolist() == [-1.0, 0.5, 2.0]
    np.testing.assert_array_equal(km.centroids[km.labels], x)


def test_palette_bytes():
    assert palette_bytes(1000, 16, 4) == 500 + 64  # 4-bit indices + 16 float32 entries
    assert palette_bytes(1000, 64, 4) == 750 + 256
    assert palette_bytes(10, 2, 2) == 2 + 4  # 1 bit each, rounded up to whole bytes
    assert palette_bytes(1000, 100, 4) == 875 + 400  # 7 bits: ceil(log2 100)


@pytest.mark.slow
def test_cluster_torch_mlp_k64(test_split):
    x, y = test_split
    mlp = load_demo("mlp")
    sel = ["layers.0", "layers.2", "classifier"]
    res = apply("cluster.kmeans", mlp, ClusterConfig(clusters=64), sel)
    assert res.changed == sel and res.expectation.kind == "smaller-only"
    old, new = mlp.torch_module.state_dict(), res.model.torch_module.state_dict()
    assert list(old) == list(new) and params(res.model) == params(mlp)
    for name in sel:
        w0, w1 = old[f"{name}.weight"], new[f"{name}.weight"]
        assert w1.dtype == w0.dtype and w1.shape == w0.shape and not torch.equal(w0, w1)
        assert len(torch.unique(w1)) <= 64
        assert torch.equal(old[f"{name}.bias"], new[f"{name}.bias"])  # biases are not clustered
    cb = res.extra["compressed_bytes"]
    assert cb["after"] < cb["before"] == compressed_weight_bytes(mlp)
    raw = sum(old[f"{n}.weight"].numel() * 4 for n in sel)
    pal = sum(old[f"{n}.weight"].numel() * 6 // 8 + 64 * 4 for n in sel)
    assert res.extra["palette_bytes"] == {"before": raw, "after": pal}
    a, b = outputs(mlp, x), outputs(res.model, x)
    assert cosine(a, b) > 0.999 and accuracy(b, y) >= accuracy(a, y) - 0.01


def test_cluster_onnx_cnn(cnn_onnx, test_split):
    x, y = test_split
    convs = [n.name for n in cnn_onnx.onnx_model.graph.node if n.op_type == "Conv"]
    res = apply("cluster.kmeans", cnn_onnx, ClusterConfig(clusters=64), convs)
    assert res.changed == convs
    before = {i.name: numpy_helper.to_array(i) for i in cnn_onnx.onnx_model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in res.model.onnx_model.graph.initializer}
    assert before.keys() == after.keys()
    clustered = {w.name for n in convs for w in cnn_onnx.graph.layer(n).weights if len(w.shape) == 4}
    for name, a in before.items():
        assert after[name].dtype == a.dtype and after[name].shape == a.shape
        if name in clustered:
            assert len(np.unique(after[name])) <= 64
        else:
            np.testing.assert_array_equal(after[name], a)  # biases and the classifier keep their values
    cb = res.extra["compressed_bytes"]
    assert cb["after"] < cb["before"]
    assert res.extra["palette_bytes"]["after"] < res.extra["palette_bytes"]["before"] * 6 / 32 * 1.01
    a, b = outputs(cnn_onnx, x), outputs(res.model, x)
    assert cosine(a, b) > 0.999 and accuracy(b, y) >= accuracy(a, y) - 0.01


def test_cluster_refuses_a_relu(cnn_torch, cnn_onnx):
    tech = get_technique("cluster.kmeans")
    with pytest.raises(CompressError, match=r"1 selected layer.*features\.5 \(a relu_ has no"):
        tech.check_selection(cnn_torch, ClusterConfig(), ["features.3", "features.5"])
    with pytest.raises(CompressError, match=r"node_max_pool2d \(a MaxPool has no"):
        tech.check_selection(cnn_onnx, ClusterConfig(), ["node_max_pool2d"])


# --- BatchNorm folding -----------------------------------------------------------------------------
def test_fold_every_batchnorm_of_the_torch_cnn(cnn_torch, test_split):
    x, y = test_split
    bns = [lay.name for lay in cnn_torch.graph.layers if lay.op_type == "batch_norm"]
    convs = [lay.name for lay in cnn_torch.graph.layers if lay.op_type == "conv2d"]
    assert len(bns) == len(convs) == 6
    res = apply("fold.batchnorm", cnn_torch, FoldBatchNormConfig(), bns)
    assert sorted(res.changed) == sorted(bns + convs) and sorted(res.coupled) == sorted(convs)
    assert res.extra["pairs"] == dict(zip(convs, bns, strict=True))
    assert not any(lay.op_type == "batch_norm" for lay in res.model.graph.layers)
    assert all(isinstance(res.model.torch_module.get_submodule(b), nn.Identity) for b in bns)
    channels = sum(cnn_torch.torch_module.get_submodule(b).num_features for b in bns)
    assert params(res.model) == params(cnn_torch) - 3 * channels  # −γ, β, mean, var; + a conv bias
    a, b = outputs(cnn_torch, x), outputs(res.model, x)
    assert np.abs(a - b).max() < 1e-4 and accuracy(b, y) == accuracy(a, y)
    assert res.expectation.kind == "faster"


def test_fold_selected_by_the_conv_couples_its_batchnorm(cnn_torch):
    res = apply("fold.batchnorm", cnn_torch, FoldBatchNormConfig(), ["features.0", "features.4"])
    assert res.changed == ["features.0", "features.1", "features.3", "features.4"]
    assert res.coupled == ["features.1", "features.3"]
    assert res.extra["pairs"] == {"features.0": "features.1", "features.3": "features.4"}


class _AddBN(nn.Module):
    """conv→bn (foldable); bn after an Add; a conv whose output is read by its bn and by a skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.bn3 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        c = self.conv2(h)
        return self.bn3(self.bn2(c) + c)


def test_fold_refuses_a_batchnorm_after_an_add_and_a_shared_output():
    torch.manual_seed(0)
    model = _AddBN().eval()
    for bn in (model.bn, model.bn2, model.bn3):  # non-trivial statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    loaded = loaded_from_module(model, {"x": torch.randn(2, 3, 8, 8)}, path="tests:addbn", format="torch-module")
    tech = get_technique("fold.batchnorm")
    with pytest.raises(CompressError, match=r"bn3 \(its input comes from a add \(add\)"):
        tech.check_selection(loaded, FoldBatchNormConfig(), ["bn", "bn3"])
    with pytest.raises(CompressError, match=r"bn2 \(the output of conv2 is also read by add"):
        tech.check_selection(loaded, FoldBatchNormConfig(), ["bn2"])
    res = tech.apply(loaded, FoldBatchNormConfig(), ["bn"], Progress())
    assert res.changed == ["conv", "bn"]
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(outputs(res.model, x), outputs(loaded, x), atol=1e-5)


def _cnn_with_bn_onnx(tmp_path) -> tuple[LoadedModel, nn.Module]:
    """The trained demo CNN written as ONNX with its BatchNormalization nodes kept (the demo exporter
    folds them), batch dimension symbolic."""
    module = build_demo("cnn")
    nodes, inits, prev = [], {}, "x"
    for i, m in enumerate(module.features):
        out = f"f{i}"
        if isinstance(m, nn.Conv2d):
            inits[f"features.{i}.weight"] = m.weight.detach().numpy()
            nodes.append(helper.make_node("Conv", [prev, f"features.{i}.weight"], [out], name=f"conv{i}", pads=[1] * 4))
        elif isinstance(m, nn.BatchNorm2d):
            names = [f"features.{i}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            for k, v in zip(names, (m.weight, m.bias, m.running_mean, m.running_var), strict=True):
                inits[k] = v.detach().numpy()
            nodes.append(helper.make_node("BatchNormalization", [prev, *names], [out], name=f"bn{i}", epsilon=m.eps))
        elif isinstance(m, nn.ReLU):
            nodes.append(helper.make_node("Relu", [prev], [out], name=f"relu{i}"))
        else:
            nodes.append(helper.make_node("MaxPool", [prev], [out], name=f"pool{i}", kernel_shape=[2, 2],
                                          strides=[2, 2]))
        prev = out
    inits["fc.w"], inits["fc.b"] = module.classifier.weight.detach().numpy(), module.classifier.bias.detach().numpy()
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return _onnx_model(tmp_path, nodes, inits, ["N", 1, 32, 32], ["N", 10], "cnn_bn"), module


def test_fold_onnx_cnn_with_batchnorm_nodes(tmp_path, test_split):
    x, y = test_split
    loaded, module = _cnn_with_bn_onnx(tmp_path)
    with torch.no_grad():
        ref = module(torch.from_numpy(np.array(x))).numpy()
    a = outputs(loaded, x)
    assert np.abs(a - ref).max() < 1e-4  # the hand-written ONNX is the demo CNN
    bns = [n.name for n in loaded.onnx_model.graph.node if n.op_type == "BatchNormalization"]
    res = apply("fold.batchnorm", loaded, FoldBatchNormConfig(), [*bns[:3], "conv10", "conv14", "conv17"])
    assert len(res.changed) == 12 and sorted(res.coupled) == ["bn11", "bn15", "bn18", "conv0", "conv3", "conv7"]
    ops = [n.op_type for n in res.model.onnx_model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 6
    names = {i.name for i in res.model.onnx_model.graph.initializer}
    assert not any(n.endswith(("running_mean", "running_var")) for n in names)
    channels = 32 + 32 + 64 + 64 + 128 + 128
    assert params(res.model) == params(loaded) - 3 * channels
    b = outputs(res.model, x)
    assert np.abs(a - b).max() < 1e-4 and accuracy(b, y) == accuracy(a, y)
    assert res.expectation.kind == "neither" and "onnxruntime already fuses" in res.expectation.text


def test_fold_onnx_gemm_batchnorm_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="fc", transB=1, alpha=0.5, beta=2.0),
        helper.make_node("BatchNormalization", ["g", "s1", "b1", "m1", "v1"], ["h"], name="bn_fc", epsilon=1e-3),
        helper.make_node("Gemm", ["h", "w2"], ["g2"], name="fc2"),
        helper.make_node("Add", ["g2", "g2"], ["a"], name="add"),
        helper.make_node("BatchNormalization", ["a", "s2", "b2", "m2", "v2"], ["y"], name="bn_add"),
    ]
    inits = {"w": rng.standard_normal((5, 7)), "c": rng.standard_normal(5), "w2": rng.standard_normal((5, 5))}
    for i in (1, 2):
        inits |= {f"s{i}": rng.uniform(0.5, 2, 5), f"b{i}": rng.standard_normal(5), f"m{i}": rng.standard_normal(5),
                  f"v{i}": rng.uniform(0.5, 2, 5)}
    loaded = _onnx_model(tmp_path, nodes, inits, ["N", 7], ["N", 5], "gemm_bn")
    tech = get_technique("fold.batchnorm")
    with pytest.raises(CompressError, match=r"bn_add \(its input comes from a Add \(add\), not from a conv/linear"):
        tech.check_selection(loaded, FoldBatchNormConfig(), ["bn_fc", "bn_add"])
    with pytest.raises(CompressError, match=r"fc2 \(its output does not feed a BatchNorm alone"):
        tech.check_selection(loaded, FoldBatchNormConfig(), ["fc2"])
    res = tech.apply(loaded, FoldBatchNormConfig(), ["bn_fc"], Progress())
    assert res.changed == ["fc", "bn_fc"] and res.coupled == ["fc"]
    x = rng.standard_normal((9, 7)).astype(np.float32)
    np.testing.assert_allclose(outputs(res.model, x), outputs(loaded, x), atol=1e-4)
    assert [n.op_type for n in res.model.onnx_model.graph.node] == ["Gemm", "Gemm", "Add", "BatchNormalization"]


@pytest.mark.slow
def test_fold_resnet_and_mobilenet_in_torch(test_split):
    x, y = test_split
    for name, count in (("resnet", 15), ("mobilenetv2", 28)):
        loaded = load_demo(name)
        bns = [lay.name for lay in loaded.graph.layers if lay.op_type == "batch_norm"]
        assert len(bns) == count
        res = apply("fold.batchnorm", loaded, FoldBatchNormConfig(), bns)
        assert len(res.changed) == 2 * count
        a, b = outputs(loaded, x), outputs(res.model, x)
        assert np.abs(a - b).max() < 1e-4 and accuracy(b, y) == accuracy(a, y)
        assert not any(lay.op_type == "batch_norm" for lay in res.model.graph.layers)
        json.dumps(res.extra)


@pytest.mark.slow
def test_lowrank_on_resnet_and_mobilenet_in_torch(test_split):
    x, _ = test_split
    mnv2 = load_demo("mobilenetv2")
    with pytest.raises(CompressError, match=r"features\.1\.conv\.0\.0 \(a grouped/depthwise conv \(groups=32\)"):
        get_technique("lowrank.svd").check_selection(mnv2, LowRankConfig(), ["features.1.conv.0.0"])
    resnet = load_demo("resnet")
    sel = ["layers.2.0.downsample.0", "layers.2.1.conv2"]  # a strided 1×1 projection and a 3×3 conv
    res = apply("lowrank.svd", resnet, LowRankConfig(rank_by="ratio", rank_ratio=0.25), sel)
    ranks = [res.extra["layers"][n]["rank"] for n in sel]
    assert ranks == [12, 72]  # 0.25 × min(48, 96), 0.25 × min(96·3, 96·3)
    assert params(res.model) == (params(resnet) - 96 * 48 - 96 * 96 * 9 + 12 * (48 + 96) + 72 * (96 * 3 + 96 * 3))
    down = res.model.torch_module.get_submodule("layers.2.0.downsample.0")
    assert down[0].stride == (2, 2) and down[1].stride == (1, 1)  # the 1×1 pair strides once, first
    a, b = outputs(resnet, x[:64]), outputs(res.model, x[:64])
    assert a.shape == b.shape and cosine(a, b) > 0.9

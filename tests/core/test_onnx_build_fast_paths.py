"""The ONNX load path's shortcuts give what the long way gives: the light copy skips the
-1 -> unknown substitution only when the serialized copy holds no negative dim, and the node
count for the progress messages is taken only when a message needs it."""

from __future__ import annotations

import numpy as np
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
    monkeypatch.setattr(onnx_shapes, "_stored_infos", lambda m, i: None)
    monkeypatch.setattr(onnx_shapes, "_stored_shapes_complete", lambda g: False)
    slow, problem = onnx_shapes.infer_tensor_infos(model, inputs, {})
    assert problem is None and calls and fast == slow


def _with_weights(first_dim: int = 2) -> onnx.ModelProto:
    """Stored shapes for every value, a large initializer (also declared as an input, as IR < 4
    requires), a large and a small Constant, and an input whose leading dim is -1."""
    big = onnx.numpy_helper.from_array(np.ones((40, 40), np.float32), "w")
    c_big = helper.make_node("Constant", [], ["c_big"], value=onnx.numpy_helper.from_array(
        np.ones((2, 30, 30), np.float32), "c_big"), name="cb")
    c_small = helper.make_node("Constant", [], ["c_small"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [2.0]))
    nodes = [c_big, c_small,
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Mul", ["y", "c_small"], ["z"], name="mul"),
             helper.make_node("Add", ["z", "c_big"], ["out"], name="add")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [first_dim, 30, 40])
    shape = [1 if first_dim < 0 else first_dim, 30, 40]
    g = helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("w", TensorProto.FLOAT, [40, 40])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 30, 40])],
                          initializer=[big],
                          value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                                      (("y", shape), ("z", shape), ("c_small", []))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case", ["plain", "-1 input dim", "one value not stored", "a symbolic dim",
                                  "a sequence output", "a subgraph", "an untyped weight output"])
def test_stored_infos_are_what_the_light_copy_gives(case: str) -> None:
    """``_stored_infos`` reads the model itself: for every value the layer graph looks up (inputs,
    outputs, what nodes make) it must give what collecting the light copy gives, exactly when
    the light copy's stored shapes are complete (else None)."""
    model = _with_weights(-1 if case == "-1 input dim" else 2)
    g = model.graph
    if case == "one value not stored":
        g.value_info.pop(0)
    elif case == "a symbolic dim":
        g.value_info[1].type.tensor_type.shape.dim[0].dim_param = "n"
    elif case == "a sequence output":
        g.node.append(helper.make_node("SequenceConstruct", ["out"], ["seq"], name="sc"))
        g.output.append(helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2, 30, 40]))
    elif case == "an untyped weight output":
        g.initializer.append(onnx.numpy_helper.from_array(np.ones((50, 50), np.float32), "w2"))
        g.output.append(onnx.ValueInfoProto(name="w2"))
    elif case == "a subgraph":
        body = helper.make_graph([helper.make_node("Identity", ["out"], ["r"])], "b", [],
                                 [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 30, 40])])
        g.node.append(helper.make_node("If", ["cond"], ["res"], then_branch=body, else_branch=body, name="if"))
        g.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        g.value_info.append(helper.make_tensor_value_info("res", TensorProto.FLOAT, [2, 30, 40]))
    declared = onnx_shapes.graph_inputs(g)
    inputs = onnx_shapes.resolve_inputs("m.onnx", declared, {})
    assert onnx_shapes.symbol_values(declared, inputs) == {}
    light = onnx_shapes._light_copy(model, inputs, None)
    complete = onnx_shapes._stored_shapes_complete(light.graph)
    assert complete == (case in ("plain", "-1 input dim", "an untyped weight output"))
    got = onnx_shapes._stored_infos(model, inputs)
    if not complete:
        assert got is None
        return
    looked_up = {vi.name for vi in g.input} | {vi.name for vi in g.output}
    looked_up |= {o for n in light.graph.node for o in n.output}
    want = {k: v for k, v in onnx_shapes.collect_infos(light).items() if k in looked_up}
    assert got == want and set(want) == looked_up - {""}
    assert got["w"].shape == (40, 40)  # a large weight declared as an input (as IR < 4 requires)
    if case == "an untyped weight output":
        assert got["w2"] == TensorInfo("w2", (50, 50), "float32")  # typed from its tensor
    assert got["x"].shape == ((1, 30, 40) if case == "-1 input dim" else (2, 30, 40))  # the resolved input


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

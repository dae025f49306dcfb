"""The ONNX loader hands out the layer graph before it reads the large weights (``on_graph``),
counts it right at that point, and finishes with every weight read; symbolic dims written as
expressions of input dims (``Min(512, seq)``) are evaluated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, helper, numpy_helper

from effstudio.core.inputs import parse_input_specs
from effstudio.core.loaders import open_model
from effstudio.core.loaders.onnx_shapes import eval_dim
from effstudio.core.metrics.static import compute_static


def _save(tmp_path) -> str:
    """x (1×seq×64) → MatMul (64×512 weight: 128 KiB, external) → Add (bias, external but small)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(512).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "seq", 64])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, "Min(512, seq)", 512])],
                          initializer=[w, b])
    path = str(tmp_path / "m.onnx")
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path,
                    save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    return path


def test_graph_comes_before_the_large_weights_and_counts_the_same(tmp_path) -> None:
    path = _save(tmp_path)
    seen = {}

    def on_graph(partial) -> None:
        inits = {t.name: t for t in partial.onnx_model.graph.initializer}
        seen["w_external"] = external_data_helper.uses_external_data(inits["w"])
        seen["b_external"] = external_data_helper.uses_external_data(inits["b"])
        seen["table"] = compute_static(partial)
        seen["graph"] = partial.graph

    loaded = open_model(path, inputs=parse_input_specs(["x=1x8x64"]), on_graph=on_graph)
    assert seen["w_external"] and not seen["b_external"]  # big: later; vectors: before
    assert seen["graph"] is loaded.graph
    inits = {t.name: t for t in loaded.onnx_model.graph.initializer}
    assert not any(external_data_helper.uses_external_data(t) for t in inits.values())
    assert numpy_helper.to_array(inits["w"]).shape == (64, 512)
    full = compute_static(loaded)
    assert seen["table"].values == full.values
    assert full.values["macs"]["mm"] == 8 * 64 * 512
    assert loaded.graph.tensors["y"].shape == (1, 8, 512)  # Min(512, seq) with seq = 8


def test_without_on_graph_the_model_loads_whole(tmp_path) -> None:
    loaded = open_model(_save(tmp_path))
    assert not any(external_data_helper.uses_external_data(t) for t in loaded.onnx_model.graph.initializer)


@pytest.mark.parametrize(("expr", "want"), [("Min(512, seq)", 128), ("seq - 1", 127), ("2*seq", 256),
                                            ("Max(seq, 1000)", 1000), ("(seq//2)", 64)])
def test_dim_expressions_of_known_symbols(expr, want) -> None:
    assert eval_dim(expr, {"seq": 128}) == want


@pytest.mark.parametrize("expr", ["seq", "other + 1", "__import__('os')", "seq.real", "1 - 2*seq", "f(seq)"])
def test_other_dims_stay_symbolic(expr) -> None:
    assert eval_dim(expr, {"seq": 128}) is None


def test_a_shape_run_reads_the_weights_that_are_not_loaded_yet(tmp_path) -> None:
    """NonZero's output size is data-dependent: found by running the model, whose large weight
    is still in its external file at that point (onnxruntime reads it there)."""
    path = _save(tmp_path)
    model = onnx.load(path, load_external_data=False)
    model.graph.node.append(helper.make_node("NonZero", ["y"], ["nz"], name="nz"))
    model.graph.output.append(helper.make_tensor_value_info("nz", onnx.TensorProto.INT64, None))
    onnx.save_model(model, path)  # the data file stays as it is
    loaded = open_model(path, inputs=parse_input_specs(["x=1x8x64"]), on_graph=lambda _partial: None)
    shape = loaded.graph.tensors["nz"].shape
    assert shape is not None and shape[0] == 3 and isinstance(shape[1], int) and shape[1] > 0


def test_read_weights_false_leaves_the_large_weights_in_their_file_and_counts_the_same(tmp_path) -> None:
    path = _save(tmp_path)
    specs = parse_input_specs(["x=1x8x64"])
    light = open_model(path, inputs=specs, read_weights=False)
    full = open_model(path, inputs=specs)
    inits = {t.name: t for t in light.onnx_model.graph.initializer}
    assert external_data_helper.uses_external_data(inits["w"])  # left in m.onnx.data
    assert not external_data_helper.uses_external_data(inits["b"])  # small: read for shapes/counting
    assert compute_static(light).values == compute_static(full).values
    assert light.graph.totals() == full.graph.totals()
    assert light.graph.totals()["params"] == 64 * 512 + 512


def test_inspect_of_an_onnx_model_imports_no_torch_nor_onnxruntime(tmp_path) -> None:
    """``effstudio inspect`` on an ONNX file whose shapes static inference finds: no torch, no
    onnxruntime run, no sympy (each costs a second or more to import)."""
    import json
    import subprocess
    import sys

    path = _save(tmp_path)
    code = ("import json, sys, contextlib, io\n"
            "from effstudio.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main(['inspect', {path!r}, '--input', 'x=1x8x64'])\n"
            "heavy = sorted(m for m in ('torch', 'onnxruntime', 'sympy', 'transformers') if m in sys.modules)\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rc": 0, "heavy": []}


def test_unread_weights_still_give_values_and_latency(tmp_path) -> None:
    """The GUI opens with ``read_weights=False``: a weight's histogram is read from its file, and
    onnxruntime runs the model from the file itself."""
    from effstudio.core.latency import measure_latency
    from effstudio.core.weights import weight_values

    path = _save(tmp_path)
    loaded = open_model(path, inputs=parse_input_specs(["x=1x8x64"]), read_weights=False)
    inits = {t.name: t for t in loaded.onnx_model.graph.initializer}
    assert external_data_helper.uses_external_data(inits["w"])  # really left in the file
    expected = numpy_helper.to_array(onnx.load(path).graph.initializer[0])
    np.testing.assert_array_equal(weight_values(loaded, "w"), expected)
    result = measure_latency(loaded, runs=3, per_layer=False)
    assert result.e2e_ms["median"] > 0

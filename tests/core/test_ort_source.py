"""onnxruntime gets the held model without one long serialization: the original file when the
held proto is that file, else a copy written tensor by tensor that runs the same."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from effstudio.core.latency.ort_source import ort_source, write_for_runtime
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.progress import Progress


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")  # 2 KiB: external
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")  # small: inline
    shape = numpy_helper.from_array(np.array([1, 32], dtype=np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="add"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], name="reshape")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])],
                          initializer=[w, b, shape])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_written_copy_runs_like_the_model_and_leaves_it_unchanged(tmp_path) -> None:
    model = _model()
    before = model.SerializeToString()
    path = write_for_runtime(model, str(tmp_path))
    assert model.SerializeToString() == before
    written = onnx.load(path, load_external_data=False)
    kinds = {t.name: t.data_location for t in written.graph.initializer}
    assert kinds["w"] == onnx.TensorProto.EXTERNAL and kinds["b"] == onnx.TensorProto.DEFAULT
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    want = (x @ numpy_helper.to_array(model.graph.initializer[0]) + numpy_helper.to_array(model.graph.initializer[1]))
    np.testing.assert_allclose(_run(path, x), want, rtol=1e-5, atol=1e-5)


def test_the_loaded_file_is_used_while_unchanged(tmp_path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(src), save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    loaded = load_onnx(src, inputs={}, progress=Progress())
    assert loaded.onnx_file_stamp is not None
    work = tmp_path / "work"
    work.mkdir()
    assert ort_source(loaded, str(work)) == str(src)
    # the data file changed on disk: the held proto is no longer the file, a copy is written
    data = tmp_path / "m.onnx.data"
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    copy = ort_source(loaded, str(work))
    assert copy != str(src) and os.path.dirname(copy) == str(work)


def test_a_renamed_node_means_no_stamp(tmp_path) -> None:
    model = _model()
    model.graph.node[1].name = ""  # the loader names it, so the held proto differs from the file
    src = tmp_path / "m.onnx"
    onnx.save_model(model, str(src))
    loaded = load_onnx(src, inputs={}, progress=Progress())
    assert loaded.onnx_file_stamp is None
    assert ort_source(loaded, str(tmp_path)) != str(src)


def test_profile_events_read_line_by_line_or_whole(tmp_path) -> None:
    from effstudio.core.latency.ort_latency import read_profile

    events = [{"cat": "Session", "name": "model_run", "ts": 1, "dur": 5},
              {"cat": "Node", "name": "mm_kernel_time", "ts": 2, "dur": 3, "args": {"op_name": "MatMul"}}]
    per_line = tmp_path / "a.json"
    per_line.write_text("[\n" + ",\n".join(json.dumps(e) for e in events) + "\n]\n")
    whole = tmp_path / "b.json"
    whole.write_text(json.dumps(events, indent=2))  # an event spread over many lines
    assert read_profile(str(per_line)) == events
    assert read_profile(str(whole)) == events

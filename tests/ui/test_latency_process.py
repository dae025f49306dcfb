"""The window measures latency in a child process (``core.latency.isolated``): the numbers reach
the layer table and the status bar; Cancel ends the child and the window goes on working."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from processes import measuring_children, pid_exists
from PySide6.QtWidgets import QMessageBox

from effstudio.ui.main_window import MainWindow
from effstudio.ui.session import ModelSession


def _mlp(path, rows: int, width: int) -> str:
    """x (rows×width) → MatMul → Relu → MatMul → y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((width, 8)).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory) -> str:
    return _mlp(tmp_path_factory.mktemp("lat") / "mlp.onnx", 1, 32)


@pytest.fixture(scope="module")
def slow_mlp_path(tmp_path_factory) -> str:
    """Runs of a few ms: its measurement lasts seconds (the default budget), time enough to cancel."""
    return _mlp(tmp_path_factory.mktemp("lat") / "slow_mlp.onnx", 256, 512)


@pytest.fixture
def window(qtbot, monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "critical", lambda _p, _t, text, *a, **k: shown.append(text))
    w = MainWindow(ModelSession())  # the real pipeline: loaders, static counts, latency in a child
    qtbot.addWidget(w)
    w.show()
    w.errors = shown
    yield w
    w.session.cancel()
    w.close()




def _latency_cells(w: MainWindow) -> dict[str, str]:
    from effstudio.ui.panels.layer_table import COLUMN_INDEX

    model = w.table.model
    return {model.name_at(r): model.index(r, COLUMN_INDEX["latency_ms"]).data() for r in range(model.rowCount())}


def test_latency_from_the_child_reaches_the_table_and_status_bar(qtbot, window, mlp_path) -> None:
    states: list[str] = []
    window.session.sig_latency_state.connect(lambda s, _d: states.append(s))
    window.open_spec(mlp_path)
    qtbot.waitUntil(lambda: window.session.latency_state in ("done", "failed", "cancelled"), timeout=90_000)
    assert states[-1] == "done", (states, window.errors, window.status.latency_label.toolTip())
    assert measuring_children() == []  # the measuring process is gone once its numbers are in
    measured = window.session.metrics.column("latency_ms")
    assert set(measured) <= {"fc1", "relu", "fc2"} and measured  # keyed by the model's layers
    cells = _latency_cells(window)
    for name in measured:
        assert cells[name].endswith("s") and cells[name] != "—", cells  # "0.012 ms", "4.5 µs"
    e2e = window.session.metrics.totals["latency_ms"]
    assert e2e["runs"] >= 10 and e2e["median"] > 0
    assert "(median, measured)" in window.status.latency_label.text()


def test_cancel_ends_the_measuring_process_and_the_window_goes_on(qtbot, window, mlp_path, slow_mlp_path) -> None:
    messages: list[str] = []
    window.session.sig_progress.connect(lambda _f, m: messages.append(m))
    with qtbot.waitSignal(window.session.sig_opened, timeout=60_000):
        window.open_spec(slow_mlp_path)
    # wait until the child runs the model (its own progress messages come through)
    qtbot.waitUntil(lambda: any(m.startswith(("warming up", "timing end to end")) for m in messages),
                    timeout=60_000)
    kids = measuring_children()
    assert len(kids) == 1
    pid = kids[0].pid
    window.cancel_tasks()
    qtbot.waitUntil(lambda: window.session.latency_state == "cancelled" and not window.session.is_busy(),
                    timeout=30_000)
    assert not pid_exists(pid) and measuring_children() == []
    assert "cancelled" in window.status.latency_label.text()
    assert window.session.metrics.column("macs")  # the static numbers stay
    # the window still works: another model opens and is measured, its numbers in the table
    window.open_spec(mlp_path)
    qtbot.waitUntil(lambda: window.session.spec == mlp_path
                    and window.session.latency_state in ("done", "failed", "cancelled"), timeout=90_000)
    assert window.session.latency_state == "done" and window.errors == []
    assert any(v != "—" for v in _latency_cells(window).values())

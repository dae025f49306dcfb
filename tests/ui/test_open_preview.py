"""Opening shows the layer graph before the weights are read (``pipeline.GraphShown``): the load
waits until the window has drawn it colored, then finishes (``Opened``); a load that fails after
showing its graph brings the previous model back."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtWidgets import QMessageBox

from effstudio.core.errors import ModelLoadError
from effstudio.core.progress import Progress
from effstudio.ui import pipeline
from effstudio.ui.main_window import MainWindow
from effstudio.ui.session import ModelSession


class PreviewCore:
    """Publishes GraphShown, waits like the real pipeline for the drawing, then Opened (or fails)."""

    def __init__(self, make_loaded, make_metrics) -> None:
        self.make_loaded, self.make_metrics = make_loaded, make_metrics
        self.drawn_before_weights: list[bool] = []
        self.go_on = threading.Event()

    def open(self, spec: str, *, trust: bool = False, latency: bool = True, progress: Progress, publish):
        loaded = self.make_loaded(spec)
        table = self.make_metrics(loaded.graph)
        if spec.startswith("plain"):
            publish(pipeline.Opened(spec, loaded, table))
            return None
        shown = pipeline.GraphShown(spec, loaded.graph, table)
        publish(shown)
        self.drawn_before_weights.append(shown.drawn.wait(10.0))
        while not self.go_on.wait(0.01):  # "reading the weights"
            progress.check()
        if spec.startswith("broken"):
            raise ModelLoadError(spec, "cannot read external data of tensor 'w'")
        publish(pipeline.Opened(spec, loaded, table))
        return None


@pytest.fixture
def core(make_loaded, make_metrics):
    c = PreviewCore(make_loaded, make_metrics)
    yield c
    c.go_on.set()


@pytest.fixture
def window(qtbot, core, monkeypatch):
    monkeypatch.setattr(QMessageBox, "critical", lambda *a, **k: None)
    w = MainWindow(ModelSession(open_fn=core.open))
    qtbot.addWidget(w)
    w.show()
    yield w
    core.go_on.set()
    w.close()


def test_graph_is_drawn_colored_before_the_load_finishes(qtbot, window, core) -> None:
    window.session.open("small.onnx", latency=False)
    qtbot.waitUntil(lambda: core.drawn_before_weights == [True], timeout=10_000)
    view = window.graph_view
    assert window.session.loaded is None and window.session.graph is not None
    assert view.graph() is window.session.graph and view.layout_ready
    assert view.node_value("features.conv") is not None  # heat-colored by the static numbers
    assert window.table.model.rowCount() == len(window.session.graph.layers)
    with qtbot.waitSignal(window.session.sig_opened, timeout=10_000):
        core.go_on.set()
    assert window.session.loaded is not None and window.session.loaded.graph is view.graph()


def test_a_load_failing_after_its_preview_brings_back_the_previous_model(qtbot, window, core) -> None:
    with qtbot.waitSignal(window.session.sig_opened, timeout=10_000):
        window.session.open("plain.onnx", latency=False)
    before = window.session.loaded
    window.session.open("broken.onnx", latency=False)
    qtbot.waitUntil(lambda: core.drawn_before_weights == [True], timeout=10_000)
    assert window.session.graph is not before.graph
    with qtbot.waitSignal(window.session.sig_load_failed, timeout=10_000):
        core.go_on.set()
    assert window.session.loaded is before and window.session.graph is before.graph
    qtbot.waitUntil(lambda: window.graph_view.graph() is before.graph, timeout=10_000)
    assert window.table.model.rowCount() == len(before.graph.layers)

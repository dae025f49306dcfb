"""The main window end to end through its session: opening (and failing to), cancelling,
trust for pickles, metric switching, selection sync, recent files and layout persistence.

Most tests open the hand-built graph through a session whose ``open`` function publishes it the
way ``pipeline.open_and_profile`` does; files go through the real core loaders.
"""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QMessageBox

from effstudio.core.errors import ModelLoadError, UntrustedPickleError
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.progress import Progress
from effstudio.ui import pipeline
from effstudio.ui.main_window import TRUST_BUTTON, MainWindow
from effstudio.ui.session import ModelSession
from effstudio.ui.settings import Settings

SMALL = "small.onnx"
LATENCY = {"features.conv": 3.0, "features.relu": 0.5, "flatten": 0.5, "head.fc": 1.0}


class FakeCore:
    """Stands in for the loaders for specs named ``small*`` / ``slow*`` / ``pickle*``; real files go
    to the real pipeline.  Records what was asked."""

    def __init__(self, make_loaded, make_metrics) -> None:
        self.make_loaded = make_loaded
        self.make_metrics = make_metrics
        self.calls: list[tuple[str, bool]] = []
        self.threads: list[threading.Thread] = []
        self.release = threading.Event()

    def open(self, spec: str, *, trust: bool = False, latency: bool = True, progress: Progress, publish):
        self.calls.append((spec, trust))
        self.threads.append(threading.current_thread())
        if spec.startswith("slow"):
            while not self.release.wait(0.01):
                progress.update(0.1, "loading slowly")
        elif spec.startswith("pickle") and not trust:
            raise UntrustedPickleError(spec, "a pickled torch model (torch.save(model)); needs --trust")
        elif not spec.startswith(("small", "slow", "pickle")):
            return pipeline.open_and_profile(spec, trust=trust, latency=latency, progress=progress,
                                             publish=publish)
        loaded = self.make_loaded(spec)
        progress.update(0.5, "counting")
        publish(pipeline.Opened(spec, loaded, self.make_metrics(loaded.graph)))
        if not latency:
            return None
        totals = {"latency_ms": {"median": 5.2, "p10": 5.0, "p90": 5.6, "cv": 0.04, "runs": 40},
                  "latency_sum_ratio": 5.0 / 5.2}
        return pipeline.Measured(MetricsTable({"latency_ms": dict(LATENCY)}, totals=totals), None)


@pytest.fixture
def core(make_loaded, make_metrics):
    c = FakeCore(make_loaded, make_metrics)
    yield c
    c.release.set()


@pytest.fixture
def errors(monkeypatch):
    """QMessageBox.critical records instead of blocking."""
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(QMessageBox, "critical",
                        lambda _parent, title, text, *a, **k: shown.append((title, text)))
    return shown


@pytest.fixture
def window(qtbot, core, errors):
    session = ModelSession(open_fn=core.open)
    w = MainWindow(session)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def open_and_wait(qtbot, w: MainWindow, spec: str, latency: bool = True) -> None:
    with qtbot.waitSignal(w.session.sig_opened, timeout=60_000):
        w.open_spec(spec)
    if latency:
        qtbot.waitUntil(lambda: w.session.latency_state in ("done", "failed", "cancelled"), timeout=60_000)
    qtbot.waitUntil(lambda: not w.session.is_busy(), timeout=60_000)


def test_opens_a_model_with_one_row_per_layer_and_latency_filling_in(qtbot, window, core) -> None:
    main = threading.current_thread()
    open_and_wait(qtbot, window, SMALL)
    graph = window.session.graph
    assert window.table.model.rowCount() == len(graph.layers) == 5
    assert all(t is not main for t in core.threads)  # loading ran off the GUI thread
    assert "small.onnx" in window.windowTitle()
    status = window.status
    assert "1.51 k</b> params" in status.totals_label.text()
    assert "uncounted: 1 ops" in status.uncounted_label.text()
    assert "5.20 ms ± 300 µs" in status.latency_label.text()
    assert window.table.model.index(window.table.model.row_of("features.conv"), 9).data() == "3.00 ms"
    assert status.progress.isHidden() and status.cancel_button.isHidden()


def test_the_opened_message_sits_beside_the_totals_not_on_them(qtbot, window) -> None:
    status = window.status
    shown: list[str] = []  # what the panel shows after each message (it is connected first)
    window.statusBar().messageChanged.connect(lambda _t: shown.append(status.message_label.text()))
    open_and_wait(qtbot, window, SMALL)
    assert "Opened small.onnx" in shown
    window.statusBar().showMessage("a temporary message", 100)
    assert status.message_label.text() == "a temporary message"
    qtbot.waitUntil(lambda: status.message_label.geometry().width() > 0)
    totals, latency, message = (w.geometry() for w in (status.totals_label, status.latency_label,
                                                        status.message_label))
    assert status.totals_label.isVisible() and message.left() > max(totals.right(), latency.right())
    assert not message.intersects(status.progress.geometry())
    # the bar draws its own copy left of its first permanent widget: the panel starts there, so no room
    assert status.x() <= window.statusBar().contentsRect().left() + 12
    qtbot.waitUntil(lambda: status.message_label.text() == "", timeout=2000)  # cleared with the bar's timeout


def test_static_numbers_show_before_latency(qtbot, window, core) -> None:
    states: list[str] = []
    window.session.sig_latency_state.connect(lambda s, _d: states.append(s))
    shown_latency: list[bool] = []
    window.session.sig_opened.connect(
        lambda _s: shown_latency.append(bool(window.session.metrics.column("latency_ms"))))
    open_and_wait(qtbot, window, SMALL)
    assert shown_latency == [False]  # static first
    assert states == ["measuring", "done"]


def test_switching_the_metric_resorts_the_table_and_redraws_the_chart(qtbot, window) -> None:
    open_and_wait(qtbot, window, SMALL)
    window.set_metric("macs")
    assert window.table.visible_names()[:2] == ["features.conv", "head.fc"]
    assert window.chart.bars()[0][0] == "features.conv"
    window.metric_combo.setCurrentIndex(window.metric_combo.findData("params"))
    assert window.current_metric == "params"
    assert window.table.visible_names()[0] == "head.fc"
    assert window.chart.bars()[0][0] == "head.fc"
    assert Settings().metric == "params"
    window.set_metric("latency_ms")
    assert [n for n, _ in window.chart.bars()] == ["features.conv", "head.fc", "features.relu", "flatten"]


def test_selection_syncs_table_chart_tree_and_graph(qtbot, window) -> None:
    open_and_wait(qtbot, window, SMALL)
    window.set_metric("macs")
    window.table.view.selectRow(0)  # features.conv
    assert window.selection.names == {"features.conv"}
    assert window.chart._brushes()[0].color().name() != window.chart._brushes()[1].color().name()
    props = {window.properties.tree.topLevelItem(0).child(i).text(1)
             for i in range(window.properties.tree.topLevelItem(0).childCount())}
    assert "features.conv" in props
    # a bar click selects in the table
    plot = window.chart.plot
    window.chart_dock.raise_()
    qtbot.waitExposed(plot)
    pt = plot.mapFromScene(plot.getPlotItem().vb.mapViewToScene(QPointF(10.0, 1.0)))
    qtbot.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, pos=pt)
    assert window.selection.names == {"head.fc"}
    assert window.table.selected_names() == {"head.fc"}
    rows = window.module_tree.view.selectionModel().selectedRows()
    tree_sel = {i.data(Qt.ItemDataRole.UserRole + 1) for i in rows}
    assert tree_sel == {"head.fc"}
    if window.graph_view is not None:
        assert window.graph_view.selection.names == {"head.fc"}


def test_edit_menu_selections(qtbot, window) -> None:
    open_and_wait(qtbot, window, SMALL)
    window.select_op_type("Relu")
    assert window.selection.names == {"features.relu"}
    assert window.select_by_regex(r"^head\.") == 2
    window.selection.set(["features.conv"])
    window.select_current_subtree()
    assert window.selection.names == {"features.conv", "features.relu"}
    window.select_all()
    assert len(window.selection.names) == 5
    assert window.actions_by_id["clear_selection"].isEnabled()
    window.clear_selection()
    assert not window.selection.names
    assert not window.actions_by_id["clear_selection"].isEnabled()
    from PySide6.QtWidgets import QMenu

    menu = QMenu()
    window.fill_op_type_menu(menu)
    assert {a.data() for a in menu.actions()} == {"Conv", "Relu", "Flatten", "Gemm", "MyOp"}


def test_search_filters_the_table(qtbot, window) -> None:
    open_and_wait(qtbot, window, SMALL)
    window.actions_by_id["find"].trigger()
    assert window.search_edit.hasFocus() or not window.isActiveWindow()
    qtbot.keyClicks(window.search_edit, "head")
    assert set(window.table.visible_names()) == {"head.fc", "head.custom"}
    qtbot.keyClick(window.search_edit, Qt.Key.Key_Return)  # selects the matches (in the graph view too)
    assert window.selection.names == {"head.fc", "head.custom"}
    assert window.table.selected_names() == {"head.fc", "head.custom"}


def test_a_bad_file_shows_the_core_message_and_keeps_the_previous_model(qtbot, window, errors,
                                                                       tmp_path) -> None:
    open_and_wait(qtbot, window, SMALL)
    before = window.session.graph
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a model at all")
    with qtbot.waitSignal(window.session.sig_load_failed, timeout=30_000):
        window.open_spec(str(bad))
    assert len(errors) == 1
    _title, text = errors[0]
    assert str(bad) in text and "\n" not in text
    with pytest.raises(ModelLoadError) as exc:  # the dialog says exactly what the core says
        from effstudio.core.loaders import open_model

        open_model(str(bad))
    assert text == str(exc.value)
    assert window.session.graph is before
    assert window.table.model.rowCount() == 5


def test_cancelling_a_load_keeps_the_previous_model(qtbot, window, core) -> None:
    open_and_wait(qtbot, window, SMALL)
    before = window.session.graph
    window.open_spec("slow.onnx")
    qtbot.waitUntil(lambda: not window.status.cancel_button.isHidden(), timeout=5000)
    qtbot.waitUntil(lambda: "loading slowly" in window.status.task_label.text(), timeout=5000)
    with qtbot.waitSignal(window.session.sig_load_cancelled, timeout=5000):
        window.status.cancel_button.click()
    assert window.session.graph is before
    assert window.session.spec == SMALL
    qtbot.waitUntil(lambda: window.status.cancel_button.isHidden(), timeout=5000)


def test_a_pickle_asks_for_trust_and_only_then_reopens_trusted(qtbot, window, core, monkeypatch) -> None:
    asked: list[str] = []
    answer = {"trust": False}

    def ask(spec, message):
        asked.append(message)
        return answer["trust"]

    monkeypatch.setattr(window, "ask_trust", ask)
    with qtbot.waitSignal(window.session.sig_load_failed, timeout=5000):
        window.open_spec("pickle.pt")
    assert len(asked) == 1 and "pickled" in asked[0]
    assert core.calls == [("pickle.pt", False)] and window.session.graph is None
    answer["trust"] = True
    with qtbot.waitSignal(window.session.sig_opened, timeout=5000):
        window.open_spec("pickle.pt")
    assert core.calls[-2:] == [("pickle.pt", False), ("pickle.pt", True)]
    assert window.session.spec == "pickle.pt"
    qtbot.waitUntil(lambda: not window.session.is_busy(), timeout=5000)


def test_trust_dialog_explains_the_risk_and_has_an_explicit_button(qtbot, window, monkeypatch) -> None:
    seen = {}

    def fake_exec(box):
        seen["text"] = box.text() + " " + box.informativeText()
        seen["default"] = box.defaultButton().text()
        next(b for b in box.buttons() if b.text() == TRUST_BUTTON).click()
        return 0

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    assert window.ask_trust("/tmp/model.pt", "model.pt: a pickle") is True
    assert "runs Python code" in seen["text"]
    assert seen["default"] != TRUST_BUTTON  # the safe choice is the default

    def fake_exec_cancel(box):
        box.button(QMessageBox.StandardButton.Cancel).click()
        return 0

    monkeypatch.setattr(QMessageBox, "exec", fake_exec_cancel)
    assert window.ask_trust("/tmp/model.pt", "model.pt: a pickle") is False


def test_recent_files_and_layout_persist(qtbot, window, core) -> None:
    open_and_wait(qtbot, window, SMALL)
    open_and_wait(qtbot, window, "small2.onnx")
    assert Settings().recent_files()[:2] == ["small2.onnx", SMALL]
    window.table_dock.hide()
    window.close()
    session = ModelSession(open_fn=core.open)
    w2 = MainWindow(session)
    qtbot.addWidget(w2)
    from PySide6.QtWidgets import QMenu

    menu = QMenu()
    w2.fill_recent_menu(menu)
    assert [a.data() for a in menu.actions() if a.data()] == ["small2.onnx", SMALL]
    assert w2.table_dock.isHidden()  # dock state restored
    menu.actions()[1].trigger()  # reopen small.onnx from the menu
    qtbot.waitUntil(lambda: w2.session.spec == SMALL and not w2.session.is_busy(), timeout=5000)
    w2.close()


def test_dropping_a_file_opens_it(qtbot, window, core, tmp_path) -> None:
    path = tmp_path / "small_dropped.onnx"
    path.write_bytes(b"x")
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(path))])
    ev = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    window.dropEvent(ev)
    qtbot.waitUntil(lambda: any(c[0] == str(path) for c in core.calls), timeout=5000)
    qtbot.waitUntil(lambda: not window.session.is_busy(), timeout=5000)


def test_actions_have_the_desktop_shortcuts(window) -> None:
    keys = {k: window.actions_by_id[k].shortcut().toString() for k in ("open", "find", "quit", "fit")}
    assert keys == {"open": "Ctrl+O", "find": "Ctrl+F", "quit": "Ctrl+Q", "fit": "F"}
    assert not window.actions_by_id["measure_latency"].isEnabled()  # no model yet


def test_theme_switch_changes_the_palette_and_is_remembered(qtbot, window) -> None:
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    light = QApplication.palette().color(QPalette.ColorRole.Window).lightness()
    window.set_theme("dark")
    dark = QApplication.palette().color(QPalette.ColorRole.Window).lightness()
    assert dark < light and Settings().theme == "dark"
    window.set_theme("light")


# --- through the real core --------------------------------------------------------------------

@pytest.fixture
def real_window(qtbot, errors):
    w = MainWindow(ModelSession())
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


@pytest.mark.slow
def test_a_real_pickle_asks_for_trust_then_for_input_shapes_then_opens(qtbot, real_window, tmp_path,
                                                                         monkeypatch) -> None:
    import torch
    from torch import nn

    path = tmp_path / "whole_model.pt"
    torch.save(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), path)
    asked: list[str] = []
    monkeypatch.setattr(real_window, "ask_trust", lambda spec, msg: asked.append(msg) or True)
    from effstudio.ui import main_window as mw

    prompts: list[str] = []

    def get_text(_parent, _title, label, *_a, **_k):
        prompts.append(label)
        return "input=1x8", True

    monkeypatch.setattr(mw.QInputDialog, "getText", get_text)
    with qtbot.waitSignal(real_window.session.sig_opened, timeout=60_000):
        real_window.open_spec(str(path))
    assert len(asked) == 1 and "pickled model" in asked[0]
    assert len(prompts) == 1 and "input shapes" in prompts[0]
    graph = real_window.session.graph
    assert real_window.table.model.rowCount() == len(graph.layers) >= 2
    assert real_window.session.metrics.get("macs", graph.layers[0].name) == 8 * 4
    real_window.session.cancel()
    qtbot.waitUntil(lambda: not real_window.session.is_busy(), timeout=60_000)


@pytest.mark.slow
def test_opens_the_demo_cnn_with_its_static_numbers(qtbot, real_window, errors) -> None:
    from effstudio.core.zoo import DEMOS

    real_window.open_spec("demo:cnn")
    qtbot.waitUntil(lambda: real_window.session.graph is not None or bool(errors), timeout=120_000)
    assert errors == []
    graph = real_window.session.graph
    metrics = real_window.session.metrics
    assert real_window.table.model.rowCount() == len(graph.layers)
    assert metrics.totals["macs"] == DEMOS["cnn"].macs
    assert f"{metrics.totals['params'] / 1e3:.0f} k</b> params" in real_window.status.totals_label.text()
    real_window.set_metric("macs")
    top = real_window.chart.bars()[0]
    assert top[1] == max(metrics.column("macs").values())
    assert real_window.table.visible_names()[0] == top[0]
    real_window.session.cancel()  # do not wait for the latency measurement
    qtbot.waitUntil(lambda: not real_window.session.is_busy(), timeout=60_000)

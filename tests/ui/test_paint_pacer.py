"""New numbers for a big graph reach the panels one per turn, and the docks paint one per turn
after the graph (``ui/paint_pacer.py``): every panel ends up with the numbers and painting again."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from effstudio.core.graph import Layer, LayerGraph, ModelInfo, TensorInfo
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.ui import pipeline
from effstudio.ui.main_window import STAGGER_MIN_LAYERS, MainWindow
from effstudio.ui.paint_pacer import PaintPacer
from effstudio.ui.session import ModelSession


class _Paints(QObject):
    """Records which watched widget got a paint event, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Paint:
            self.order.append(obj.objectName())
        return False


def test_held_widgets_paint_one_per_turn_in_order(qtbot) -> None:
    top = QWidget()
    qtbot.addWidget(top)
    lay = QVBoxLayout(top)
    widgets = []
    for name in ("a", "b", "c"):
        w = QLabel(name, top)
        w.setObjectName(name)
        w.setMinimumHeight(20)
        lay.addWidget(w)
        widgets.append(w)
    hidden = QWidget(top)
    hidden.hide()
    top.show()
    qtbot.waitExposed(top)
    qtbot.wait(20)
    paints = _Paints()
    for w in widgets:
        w.installEventFilter(paints)
    pacer = PaintPacer([widgets[2], widgets[0], widgets[1], hidden])
    pacer.hold(release_after_ms=10_000)
    assert pacer.is_holding() and not any(w.updatesEnabled() for w in widgets)
    assert hidden.updatesEnabled()  # a hidden widget is not held: it paints when shown
    top.update()
    qtbot.wait(30)
    assert paints.order == []  # held: not painted, even when the window is
    pacer.release_soon()
    qtbot.waitUntil(lambda: not pacer.is_holding())
    qtbot.waitUntil(lambda: len(paints.order) == 3)
    assert paints.order == ["c", "a", "b"]
    assert all(w.updatesEnabled() for w in widgets)
    pacer.hold()
    pacer.release_all()
    assert not pacer.is_holding() and all(w.updatesEnabled() for w in widgets)


def _big(n: int, spec: str) -> tuple[LoadedModel, MetricsTable]:
    t = {f"t{i}": TensorInfo(f"t{i}", (1, 8), "float32") for i in range(n + 1)}
    layers = [Layer(f"block{i // 10}.relu{i}", "Relu", scope=f"block{i // 10}", inputs=[f"t{i}"],
                    outputs=[f"t{i + 1}"]) for i in range(n)]
    graph = LayerGraph(layers, inputs=[t["t0"]], outputs=[t[f"t{n}"]], tensors=t, model=ModelInfo(spec, "onnx"))
    macs = {lay.name: float((i * 7919) % 1000 + 1) for i, lay in enumerate(layers)}
    return LoadedModel(graph, "onnx", spec), MetricsTable({"macs": macs, "params": {lay.name: 0.0 for lay in layers}})


def _window(qtbot, models: dict[str, tuple[LoadedModel, MetricsTable]]) -> MainWindow:
    """A shown main window whose session opens ``models`` (spec -> model and its numbers)."""

    def open_fn(spec, *, trust=False, latency=True, progress, publish):
        loaded, metrics = models[spec]
        publish(pipeline.Opened(spec, loaded, metrics))

    w = MainWindow(ModelSession(open_fn=open_fn))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_a_big_graphs_numbers_reach_every_panel_and_every_dock_paints_again(qtbot) -> None:
    models = {spec: _big(STAGGER_MIN_LAYERS + 50, spec) for spec in ("big.onnx", "other.onnx")}
    w = _window(qtbot, models)
    w.set_metric("macs")
    held = []
    w.session.sig_metrics_changed.connect(lambda _m: held.append(w._pacer.is_holding()))
    for spec in ("big.onnx", "other.onnx"):  # the second replaces the first (its steps are dropped)
        with qtbot.waitSignal(w.session.sig_opened, timeout=10_000):
            w.open_spec(spec)
    _loaded, metrics = models["other.onnx"]
    top = max(metrics.column("macs").items(), key=lambda kv: kv[1])[0]
    qtbot.waitUntil(lambda: not w.session.is_busy() and not w._pacer.is_holding()
                    and not w.graph_view.is_busy() and not w.module_tree.is_building(), timeout=20_000)
    assert held and all(held)  # the docks waited while the numbers were handed out
    assert w.table.visible_names()[0] == top  # sorted by the new numbers
    assert w.chart.bars()[0][0] == top
    assert w.graph_view.node_value(w.graph_view.visible_nodes()[0].id) is not None
    for panel in (w.table, w.chart, w.module_tree, w.properties):
        assert panel.updatesEnabled()


def test_a_small_graphs_docks_are_never_held(qtbot) -> None:
    # held docks would show blank until released; a small graph's paints are short enough at once
    w = _window(qtbot, {"small.onnx": _big(20, "small.onnx")})
    held = []
    w.session.sig_model_changed.connect(lambda _g: held.append(w._pacer.is_holding()))
    w.session.sig_metrics_changed.connect(lambda _m: held.append(w._pacer.is_holding()))
    with qtbot.waitSignal(w.session.sig_opened, timeout=10_000):
        w.open_spec("small.onnx")
    qtbot.waitUntil(lambda: not w.session.is_busy(), timeout=10_000)
    assert held and not any(held)
    assert all(p.updatesEnabled() for p in (w.table, w.chart, w.module_tree, w.properties))

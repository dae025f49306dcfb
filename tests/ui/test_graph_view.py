"""GraphView: colors follow the metric, groups aggregate, expand/collapse, search, selection."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from effstudio.core.graph import Layer, LayerGraph, TensorInfo, Weight
from effstudio.ui.graph import GraphView
from effstudio.ui.graph.colors import UNKNOWN_FILL
from effstudio.ui.selection import SelectionModel


def make_graph(blocks: int = 3) -> LayerGraph:
    """Stem, ``blocks`` residual blocks (scopes ``blocks.N`` with sub-scope ``mlp``), head."""
    g = LayerGraph()

    def add(name: str, op: str, scope: str, ins: list[str], params: int = 0) -> None:
        ws = [Weight(f"{name}.w", (params,), "float32")] if params else []
        g.layers.append(Layer(name, op, scope, inputs=[f"{i}:0" for i in ins], outputs=[f"{name}:0"],
                              weights=ws))
        g.tensors[f"{name}:0"] = TensorInfo(f"{name}:0", (1, 16, 8, 8), "float32")

    add("stem.conv", "Conv", "stem", [], 432)
    add("stem.relu", "Relu", "stem", ["stem.conv"])
    prev = "stem.relu"
    for b in range(blocks):
        s = f"blocks.{b}"
        add(f"{s}.conv", "Conv", s, [prev], 2304 * (b + 1))
        add(f"{s}.mlp.fc1", "Gemm", f"{s}.mlp", [f"{s}.conv"], 1000 * (b + 1))
        add(f"{s}.mlp.act", "Relu", f"{s}.mlp", [f"{s}.mlp.fc1"])
        add(f"{s}.mlp.fc2", "Gemm", f"{s}.mlp", [f"{s}.mlp.act"], 1000 * (b + 1))
        add(f"{s}.add", "Add", s, [f"{s}.mlp.fc2", prev])
        prev = f"{s}.add"
    add("head.fc", "Gemm", "head", [prev], 170)
    add("head.softmax", "Softmax", "head", ["head.fc"])
    return g


@pytest.fixture
def selection():
    return SelectionModel()


@pytest.fixture
def view(qtbot, selection):
    v = GraphView(selection)
    v.resize(1000, 700)
    qtbot.addWidget(v)
    v.show()
    yield v
    assert v.wait_idle(20)
    assert not v.is_busy()


def load(qtbot, view: GraphView, graph: LayerGraph) -> None:
    with qtbot.waitSignal(view.sig_layout_ready, timeout=30_000):
        view.set_graph(graph)


def relayout(qtbot, view: GraphView, fn, *args) -> None:
    with qtbot.waitSignal(view.sig_layout_ready, timeout=30_000):
        fn(*args)


def params(g: LayerGraph) -> dict[str, float]:
    return {lay.name: float(lay.params) for lay in g.layers}


def ids(view: GraphView) -> set[str]:
    return {n.id for n in view.visible_nodes()}


def test_layout_shows_every_layer_once_and_draws(qtbot, view):
    g = make_graph()
    load(qtbot, view, g)
    shown = [name for n in view.visible_nodes() for name in n.layers]
    assert sorted(shown) == sorted(g.names())
    assert view.grab().width() == view.width()  # paints without error


def test_switching_metric_recolors_and_colorbar_follows(qtbot, view):
    g = make_graph()
    load(qtbot, view, g)
    view.expand_all_to_depth(9)
    qtbot.waitUntil(lambda: not view.is_busy())
    p = params(g)
    view.set_metric(p, "Parameters", "")
    fills_p = {i: view.node_fill(i).name() for i in ids(view)}
    assert view.colorbar.isVisible()
    # the legend has its own strip under the graph: it covers no node
    assert not view.colorbar.geometry().intersects(view.view.geometry())
    lo, _, hi = view.colorbar.labels()
    assert lo == "0" and hi == "6.91 k"  # 3 × 2304 params of blocks.2.conv
    assert view.node_fill("blocks.2.conv") == view.scale.lut[-1]  # the biggest: top of the map
    inverse = {k: float(len(k)) for k in p}  # a different metric: name lengths
    view.set_metric(inverse, "Name length", "")
    fills_n = {i: view.node_fill(i).name() for i in ids(view)}
    assert fills_p != fills_n
    assert view.colorbar.labels()[0] == "7"  # "head.fc" is the shortest name


def test_log_scale_changes_fills(qtbot, view):
    g = make_graph(blocks=1)
    load(qtbot, view, g)
    view.expand_all_to_depth(9)
    qtbot.waitUntil(lambda: not view.is_busy())
    names = g.names()
    values = {n: 10.0 ** (i % 5) for i, n in enumerate(names)}  # 1 … 10 000
    view.set_metric(values, "x", "", log=False)
    linear = {n: view.node_fill(n).name() for n in names}
    view.set_metric(values, "x", "", log=True)
    log = {n: view.node_fill(n).name() for n in names}
    assert linear != log
    ten = names[1]  # value 10: near the bottom in linear, a quarter up in log
    assert view.scale.norm(values[ten]) == pytest.approx(0.25)
    assert view.colorbar.labels()[1] == "100"  # log midpoint of 1 … 10 000


def test_unknown_is_grey_never_the_colormap_minimum(qtbot, view):
    g = make_graph(blocks=1)
    load(qtbot, view, g)
    view.expand_all_to_depth(9)
    qtbot.waitUntil(lambda: not view.is_busy())
    values = params(g)
    del values["blocks.0.conv"]  # unknown
    values["stem.relu"] = 0.0  # known zero
    view.set_metric(values, "Parameters", "")
    assert view.node_fill("blocks.0.conv") == UNKNOWN_FILL
    assert view.node_fill("blocks.0.conv") not in view.scale.lut
    assert view.node_fill("stem.relu") == view.scale.lut[0]
    assert "n/a" in view.node_tooltip("blocks.0.conv")
    assert view.node_value("blocks.0.conv") is None
    view.set_metric(values, "Parameters", "", log=True)  # a known zero has no place on a log scale
    assert view.node_fill("stem.relu") == view.scale.lut[0]
    assert view.colorbar.labels()[0].startswith("≤ ")


def test_collapse_expand_and_group_aggregate(qtbot, view):
    g = make_graph()
    load(qtbot, view, g)
    view.set_metric(params(g), "Parameters", "")
    relayout(qtbot, view, view.expand_all_to_depth, 9)
    n_open = len(view.visible_nodes())
    relayout(qtbot, view, view.collapse, "blocks.1")
    assert len(view.visible_nodes()) == n_open - 5 + 1  # five layers -> one group
    assert "blocks.1" in ids(view)
    inside = [lay for lay in g.layers_in_scope("blocks.1")]
    assert view.node_value("blocks.1") == pytest.approx(sum(lay.params for lay in inside))
    assert "5 layers" in view.node_tooltip("blocks.1")
    relayout(qtbot, view, view.expand, "blocks.1.mlp")  # opens its parent too
    assert len(view.visible_nodes()) == n_open
    assert {"blocks.1", "blocks.1.mlp"} <= view.expanded()


def test_partly_unknown_group_sums_the_known_and_says_so(qtbot, view):
    g = make_graph()
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 1)
    values = params(g)
    del values["blocks.0.mlp.fc1"]
    view.set_metric(values, "Parameters", "")
    known = sum(v for k, v in values.items() if k.startswith("blocks.0."))
    assert view.node_value("blocks.0") == pytest.approx(known)
    assert "1 of 5 layers n/a" in view.node_tooltip("blocks.0")


def test_double_click_on_a_group_expands_it(qtbot, view):
    g = make_graph()
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 1)
    assert "blocks.2" in ids(view)
    node = next(n for n in view.visible_nodes() if n.id == "blocks.2")
    view.center_on("blocks.2")
    pos = view.view.mapFromScene(QPointF(node.x + node.w * 0.6, node.y + node.h / 2))
    with qtbot.waitSignal(view.sig_layout_ready, timeout=30_000):
        qtbot.mouseDClick(view.view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    assert "blocks.2" in view.expanded()
    assert "blocks.2.conv" in ids(view)


def test_search_selects_matches_and_expands_their_scopes(qtbot, view, selection):
    g = make_graph()
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 0)
    assert "blocks.1.mlp.fc2" not in ids(view)
    with qtbot.waitSignal(view.sig_layout_ready, timeout=30_000):
        found = view.search(r"MLP\.fc2")  # case-insensitive, on names
    assert found == [f"blocks.{b}.mlp.fc2" for b in range(3)]
    assert selection.names == set(found)
    assert selection.current == found[0]
    assert set(found) <= ids(view)
    assert view.search("softmax") == ["head.softmax"]  # op type
    assert view.search("no-such-layer") == []
    assert view.search("[") == []  # not a regex: matched literally, no crash


def _click(qtbot, view: GraphView, node_id: str, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    view.center_on(node_id)
    node = next(n for n in view.visible_nodes() if n.id == node_id)
    pos = view.view.mapFromScene(QPointF(node.x + node.w * 0.6, node.y + node.h / 2))
    qtbot.mouseClick(view.view.viewport(), Qt.MouseButton.LeftButton, modifier, pos)


def test_click_and_ctrl_click_select(qtbot, view, selection):
    g = make_graph()
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 9)
    _click(qtbot, view, "blocks.0.conv")
    assert selection.names == {"blocks.0.conv"} and selection.current == "blocks.0.conv"
    _click(qtbot, view, "head.fc", Qt.KeyboardModifier.ControlModifier)
    assert selection.names == {"blocks.0.conv", "head.fc"}
    _click(qtbot, view, "blocks.0.conv", Qt.KeyboardModifier.ControlModifier)
    assert selection.names == {"head.fc"}
    i = view.canvas.geo.index["head.fc"]
    assert view.canvas.style.selected[i]


def test_clicking_a_group_selects_all_its_layers(qtbot, view, selection):
    g = make_graph()
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 1)
    _click(qtbot, view, "blocks.1")
    assert selection.names == {lay.name for lay in g.layers_in_scope("blocks.1")}


def test_rubber_band_selects_many(qtbot, view, selection):
    g = make_graph()
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 9)
    view.fit()
    vp = view.view.viewport()
    a, b = QPoint(3, 3), QPoint(vp.width() - 3, vp.height() // 2)
    start = view.view.mapToScene(a)
    assert view.canvas.node_at(start.x(), start.y()) < 0  # starts on empty space

    def send(kind, pos: QPoint, button, buttons):
        ev = QMouseEvent(kind, QPointF(pos), QPointF(vp.mapToGlobal(pos)), button, buttons,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(vp, ev)

    send(QEvent.Type.MouseButtonPress, a, Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton)
    for k in range(1, 6):
        send(QEvent.Type.MouseMove, a + (b - a) * (k / 5), Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton)
    send(QEvent.Type.MouseButtonRelease, b, Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton)
    band = view.view.mapToScene(a.x(), a.y(), b.x() - a.x(), b.y() - a.y()).boundingRect()
    geo = view.canvas.geo
    expected = {name for i in view.canvas.nodes_in(band) for name in geo.vg.nodes[i].layers}
    assert len(expected) > 2 and len(expected) < len(g.layers)
    assert selection.names == expected
    assert "stem.conv" in selection.names


def test_selection_from_another_view_highlights_and_centers(qtbot, view, selection):
    g = make_graph(blocks=6)
    load(qtbot, view, g)
    relayout(qtbot, view, view.expand_all_to_depth, 9)
    view.view.resetTransform()
    view.view.scale(1.5, 1.5)
    view.center_on("stem.conv")
    selection.set(["head.softmax"], source="table")
    qtbot.waitUntil(lambda: view.view.mapToScene(view.view.viewport().rect()).boundingRect().contains(
        view.canvas.geo.rects[view.canvas.geo.index["head.softmax"]]))
    assert view.canvas.style.selected[view.canvas.geo.index["head.softmax"]]
    # a layer inside a collapsed group marks the group as partly selected
    relayout(qtbot, view, view.collapse, "blocks.3")
    selection.set(["blocks.3.conv"], source="table")
    gi = view.canvas.geo.index["blocks.3"]
    assert view.canvas.style.partial[gi] and not view.canvas.style.selected[gi]


def test_colormap_and_clearing(qtbot, view):
    g = make_graph()
    load(qtbot, view, g)
    view.set_metric(params(g), "Parameters", "")
    before = view.node_fill("stem.conv")
    view.set_colormap("inferno")
    assert view.node_fill("stem.conv") != before
    view.set_graph(None)
    assert view.visible_nodes() == [] and not view.colorbar.isVisible()


def test_screenshots_of_cnn_and_transformer_like_graphs(qtbot, view, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from synthetic_graphs import cnn_graph, transformer_graph
    finally:
        sys.path.pop(0)
    view.resize(1300, 850)
    for name, g in (("cnn", cnn_graph()), ("transformer", transformer_graph(2000, blocks=6))):
        load(qtbot, view, g)
        view.set_metric(params(g), "Parameters", "", log=name == "transformer")
        img = view.grab()
        assert not img.isNull()
        img.save(f"/tmp/graph_{name}.png")

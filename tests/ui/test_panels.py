"""Panels over a hand-built graph with closed-form numbers: the table, the chart, the module tree,
the properties panel, and the status bar."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from effstudio.core.metrics.table import MetricsTable
from effstudio.ui.panels.layer_chart import LayerChartPanel, short_name
from effstudio.ui.panels.layer_table import COLUMN_INDEX, LayerTablePanel
from effstudio.ui.panels.module_tree import ModuleTreePanel
from effstudio.ui.panels.properties import PropertiesPanel
from effstudio.ui.panels.status import StatusPanel
from effstudio.ui.selection import SelectionModel
from effstudio.ui.workers import TaskRunner


@pytest.fixture
def selection(qtbot):
    return SelectionModel()


@pytest.fixture
def table(qtbot, selection, graph, metrics):
    panel = LayerTablePanel(selection)
    qtbot.addWidget(panel)
    panel.set_graph(graph)
    panel.set_metrics(metrics)
    return panel


def cell(panel: LayerTablePanel, name: str, key: str) -> str:
    row = panel.model.row_of(name)
    return panel.model.index(row, COLUMN_INDEX[key]).data()


def test_table_has_one_row_per_layer_with_readable_numbers(table, graph) -> None:
    assert table.model.rowCount() == len(graph.layers)
    assert cell(table, "features.conv", "params") == f"{8 * 27 + 8:,}"
    assert cell(table, "features.conv", "macs") == "3.46 k"  # 8·4·4·27 = 3456
    assert cell(table, "features.conv", "weight_bytes") == f"{(8 * 27 + 8) * 4} B"
    assert cell(table, "features.conv", "shape") == "1×8×4×4"
    # an uncountable op is unknown, never 0
    assert cell(table, "head.custom", "macs") == "—"
    assert cell(table, "head.custom", "latency_ms") == "—"


def test_sort_by_metric_descending_puts_unknown_last(table) -> None:
    table.sort_by("macs", descending=True)
    assert table.visible_names() == ["features.conv", "head.fc", "features.relu", "flatten", "head.custom"]
    table.sort_by("macs", descending=False)
    names = table.visible_names()
    assert names[-1] == "head.custom" and names[:2] == ["features.relu", "flatten"]
    table.sort_by("name", descending=False)
    assert table.visible_names()[0] == "features.conv"


def test_filter_is_a_regex_on_name_or_op(table) -> None:
    table.set_filter("^head")
    assert table.visible_names() == ["head.fc", "head.custom"]
    table.set_filter("relu|gemm")  # case-insensitive, op types too
    assert set(table.visible_names()) == {"features.relu", "head.fc"}
    table.set_filter("(")  # not a regex: the last good filter stays, the box turns red
    assert set(table.visible_names()) == {"features.relu", "head.fc"}
    assert "color" in table.filter_edit.styleSheet()
    table.set_filter("")
    assert len(table.visible_names()) == 5


def test_sorting_keeps_graph_order_among_ties_both_ways_and_works_under_a_filter(table, graph) -> None:
    in_graph = [lay.name for lay in graph.layers]
    scope = {lay.name: lay.scope.lower() for lay in graph.layers}
    table.sort_by("scope", descending=True)  # text column: two "features", two "head", one ""
    assert table.visible_names() == sorted(in_graph, key=scope.get, reverse=True)  # stable: ties in graph order
    assert table.visible_names()[:2] == ["head.fc", "head.custom"]
    table.sort_by("activation_bytes", descending=True)  # three layers tie at 512 B, head.custom unknown
    assert table.visible_names() == ["features.conv", "features.relu", "flatten", "head.fc", "head.custom"]
    table.set_filter("head|relu")
    assert table.visible_names() == ["features.relu", "head.fc", "head.custom"]
    assert table.model.row_of("features.conv") is None  # hidden rows have no row
    table.sort_by("activation_bytes", descending=False)
    assert table.visible_names() == ["head.fc", "features.relu", "head.custom"]
    table.set_filter("")
    assert table.visible_names() == ["head.fc", "features.conv", "features.relu", "flatten", "head.custom"]


def test_filtering_keeps_the_shared_selection_and_the_current_row(table, selection) -> None:
    table.sort_by("macs")
    selection.set(["features.conv", "head.fc", "flatten"], current="head.fc")
    table.set_filter("head")  # features.conv and flatten are hidden; nothing is deselected for it
    assert table.selected_names() == {"head.fc"}
    assert selection.names == {"features.conv", "head.fc", "flatten"}
    assert table.view.currentIndex().row() == table.model.row_of("head.fc")  # moved with its layer
    table.set_filter("")
    assert table.selected_names() == {"features.conv", "head.fc", "flatten"}
    table.sort_by("name", descending=False)  # the current row and the selection follow a new order
    assert table.view.currentIndex().row() == table.model.row_of("head.fc")
    assert table.selected_names() == {"features.conv", "head.fc", "flatten"}


def test_latency_share_is_of_the_per_layer_sum(table, metrics) -> None:
    lat = {"features.conv": 3.0, "features.relu": 0.5, "flatten": 0.5, "head.fc": 1.0}
    table.set_metrics(metrics.merge(MetricsTable({"latency_ms": lat})))
    assert cell(table, "features.conv", "latency_share") == "60.0 %"
    assert cell(table, "features.conv", "latency_ms") == "3.00 ms"
    assert cell(table, "head.custom", "latency_share") == "—"


def test_table_selection_drives_the_selection_model_and_back(qtbot, table, selection) -> None:
    table.sort_by("macs")
    view = table.view
    view.selectRow(1)  # head.fc after sorting by MACs
    assert selection.names == {"head.fc"}
    assert selection.current == "head.fc"
    selection.set(["features.relu", "flatten"], current="flatten")
    assert table.selected_names() == {"features.relu", "flatten"}
    assert view.currentIndex().row() == table.model.row_of("flatten")


@pytest.fixture
def chart(qtbot, selection, graph, metrics):
    panel = LayerChartPanel(selection)
    qtbot.addWidget(panel)
    panel.resize(500, 400)
    panel.show()
    panel.set_graph(graph)
    panel.set_metrics(metrics)
    panel.set_metric("macs")
    return panel


def test_chart_shows_top_n_sorted_descending(chart) -> None:
    bars = chart.bars()
    assert [n for n, _ in bars] == ["features.conv", "head.fc"]  # zero-cost layers get no bar
    assert "(2 with none)" in chart.title.text()
    assert bars[0][1] == 3456 and bars[1][1] == 1280
    chart.set_top_n(5)
    chart.set_metric("params")
    assert chart.bars()[0] == ("head.fc", 1290.0)
    assert "by Parameters" in chart.title.text()


def test_chart_log_scale_keeps_order(chart) -> None:
    chart.set_log(True)
    assert [n for n, _ in chart.bars()][:2] == ["features.conv", "head.fc"]


def test_chart_without_the_metric_says_so(chart) -> None:
    chart.set_metric("latency_ms")
    assert chart.bars() == []
    assert "not available yet" in chart.title.text()


def test_clicking_a_bar_selects_its_layer_and_highlights_it(qtbot, chart, selection) -> None:
    plot = chart.plot
    vb = plot.getPlotItem().vb
    scene_pt = vb.mapViewToScene(QPointF(100.0, 1.0))  # middle of bar 1 (head.fc)
    view_pt = plot.mapFromScene(scene_pt)
    qtbot.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, pos=view_pt)
    assert selection.names == {"head.fc"}
    brushes = chart._bars.opts["brushes"]
    assert brushes[1].color() != brushes[0].color()
    # Ctrl-click adds
    scene_pt = vb.mapViewToScene(QPointF(100.0, 0.0))
    qtbot.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier,
                     pos=plot.mapFromScene(scene_pt))
    assert selection.names == {"head.fc", "features.conv"}


def test_short_name_keeps_the_tail() -> None:
    assert short_name("conv") == "conv"
    long = "encoder.layer.11.attention.self.query.weight"
    s = short_name(long, 28)
    assert s.startswith("…") and s.endswith("query.weight") and len(s) <= 28


def test_module_tree_groups_by_scope_and_selects_subtree(qtbot, selection, graph, metrics) -> None:
    tree = ModuleTreePanel(selection)
    qtbot.addWidget(tree)
    tree.resize(500, 400)
    tree.show()
    tree.set_graph(graph)
    tree.set_metrics(metrics)
    top = [tree.model.item(r, 0).text() for r in range(tree.model.rowCount())]
    assert top == ["features", "flatten", "head"]
    head = tree._scope_items["head"]
    assert head.rowCount() == 2
    assert tree.model.item(2, 2).text() == "1.29 k"  # head's params: 10·128 + 10
    tree.select_subtree("head")
    assert selection.names == {"head.fc", "head.custom"}
    # clicking a scope row selects its subtree, a layer row the layer
    tree.view.expandAll()
    feat_idx = tree._scope_items["features"].index()
    qtbot.mouseClick(tree.view.viewport(), Qt.MouseButton.LeftButton,
                     pos=tree.view.visualRect(feat_idx).center())
    assert selection.names == {"features.conv", "features.relu"}
    conv_idx = tree._layer_items["features.conv"].index()
    qtbot.mouseClick(tree.view.viewport(), Qt.MouseButton.LeftButton,
                     pos=tree.view.visualRect(conv_idx).center())
    assert selection.names == {"features.conv"}


def test_properties_show_the_current_layer_and_a_weight_histogram(qtbot, selection, graph, metrics,
                                                                  make_loaded, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)

    # the ONNX model behind the hand-built graph: one initializer holding the conv weight
    import onnx
    from onnx import helper, numpy_helper

    loaded = make_loaded()
    init = numpy_helper.from_array(values, "features.conv.weight")
    loaded.onnx_model = helper.make_model(helper.make_graph([], "g", [], [], [init]))
    assert isinstance(loaded.onnx_model, onnx.ModelProto)
    runner = TaskRunner()
    panel = PropertiesPanel(selection, runner, lambda: loaded)
    qtbot.addWidget(panel)
    panel.set_graph(graph)
    panel.set_metrics(metrics)
    selection.set(["features.conv"])
    texts = _tree_texts(panel)
    assert ("op", "Conv") in texts and ("scope", "features") in texts
    assert any(k == "features.conv.weight" and v.startswith("8×3×3×3  float32") for k, v in texts)
    assert ("kernel_shape", "[3, 3]") in texts
    assert ("MACs", "3.46 k") in texts
    qtbot.waitUntil(lambda: panel.histogram_result is not None, timeout=5000)
    counts, _edges, stats = panel.histogram_result
    assert counts.sum() == values.size
    assert stats["mean"] == pytest.approx(float(values.mean()), rel=1e-5)
    assert "216 values" in panel.hist_info.text()
    # a layer without weights: no histogram
    selection.set(["features.relu"])
    assert panel.weight_combo.count() == 0 and panel.histogram_result is None
    runner.shutdown(5)


def _tree_texts(panel) -> list[tuple[str, str]]:
    out = []
    tree = panel.tree
    for i in range(tree.topLevelItemCount()):
        top = tree.topLevelItem(i)
        for j in range(top.childCount()):
            out.append((top.child(j).text(0), top.child(j).text(1)))
    return out


def test_status_panel_totals_and_uncounted_ops(qtbot, graph, metrics) -> None:
    panel = StatusPanel()
    qtbot.addWidget(panel)
    panel.set_model(graph, metrics)
    text = panel.totals_label.text()
    assert "5</b> layers" in text and "1.51 k</b> params" in text  # 224 + 1290 = 1514
    assert "4.74 k</b> MACs" in text  # 3456 + 1280
    assert "uncounted: 1 ops" in panel.uncounted_label.text()
    assert "MyOp × 1" in panel.uncounted_label.toolTip()
    panel.set_latency("measuring")
    assert "measuring latency" in panel.latency_label.text()
    panel.set_busy(True)
    assert not panel.cancel_button.isHidden()
    with qtbot.waitSignal(panel.sig_cancel, timeout=1000):
        panel.cancel_button.click()


def test_status_panel_flags_noisy_latency(qtbot) -> None:
    from effstudio.core.metrics.table import MetricsTable

    panel = StatusPanel()
    qtbot.addWidget(panel)
    quiet = {"median": 2.0, "p10": 1.9, "p90": 2.3, "cv": 0.1, "runs": 40}
    panel.set_latency("done", "", MetricsTable({}, totals={"latency_ms": quiet}))
    assert "noisy" not in panel.latency_label.text()
    busy = {"median": 43.7, "p10": 2.1, "p90": 213.5, "cv": 2.4, "runs": 40}  # a busy machine's runs
    panel.set_latency("done", "", MetricsTable({}, totals={"latency_ms": busy}))
    assert "⚠ noisy" in panel.latency_label.text()
    assert panel.latency_label.toolTip().startswith("Noisy: the runs spread widely (p10–p90 is 4.8× the median)")

"""The layer table answers a cell's roles in one call (``multiData``, what the view paints with):
the same values as role-by-role ``data``, nothing left over from the previous cell, and one
paint per change of rows."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QEvent, QModelRoleData, QModelRoleDataSpan, QObject, Qt

from effstudio.core.graph import Layer, LayerGraph, ModelInfo, TensorInfo
from effstudio.core.metrics.table import METRICS, MetricsTable
from effstudio.ui import numbers
from effstudio.ui.panels.layer_table import COLUMN_INDEX, COLUMNS, NAME_ROLE, LayerTablePanel
from effstudio.ui.selection import SelectionModel

PAINTED_ROLES = [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.DecorationRole, Qt.ItemDataRole.FontRole,
                 Qt.ItemDataRole.TextAlignmentRole, Qt.ItemDataRole.BackgroundRole,
                 Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.CheckStateRole, Qt.ItemDataRole.ToolTipRole]


@pytest.fixture
def table(qtbot, graph, metrics):
    panel = LayerTablePanel(SelectionModel())
    qtbot.addWidget(panel)
    panel.resize(900, 300)
    panel.show()
    panel.set_graph(graph)
    panel.set_metrics(metrics)
    return panel


def test_one_call_per_cell_gives_what_data_gives_and_clears_the_rest(table) -> None:
    model = table.model
    for role in PAINTED_ROLES:
        rd = QModelRoleData(int(role))
        span = QModelRoleDataSpan(rd)  # one span reused for every cell, as the view's delegate does
        for row in range(model.rowCount()):
            for col in range(len(COLUMNS)):
                index = model.index(row, col)
                model.multiData(index, span)
                assert span[0].data() == index.data(role), (row, COLUMNS[col].key, role)
    # text columns are not aligned like the numbers next to them
    name = model.index(0, COLUMN_INDEX["name"])
    params = model.index(0, COLUMN_INDEX["params"])
    rd = QModelRoleData(int(Qt.ItemDataRole.TextAlignmentRole))
    span = QModelRoleDataSpan(rd)
    model.multiData(params, span)
    assert span[0].data() is not None
    model.multiData(name, span)
    assert span[0].data() is None


class _PaintCounter(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.paints = 0

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Paint:
            self.paints += 1
        return False


def _chain(n: int) -> tuple[LayerGraph, MetricsTable]:
    """``n`` Relu layers in a chain (more rows than the table shows) and made-up MACs."""
    t = {f"t{i}": TensorInfo(f"t{i}", (1, 8), "float32") for i in range(n + 1)}
    layers = [Layer(f"block{i // 10}.relu{i}", "Relu", scope=f"block{i // 10}", inputs=[f"t{i}"],
                    outputs=[f"t{i + 1}"]) for i in range(n)]
    graph = LayerGraph(layers, inputs=[t["t0"]], outputs=[t[f"t{n}"]], tensors=t, model=ModelInfo("chain", "onnx"))
    macs = {lay.name: float((i * 7919) % 1000) for i, lay in enumerate(layers)}
    return graph, MetricsTable({"macs": macs, "params": {lay.name: 0.0 for lay in layers}})


def test_new_rows_and_a_new_order_paint_the_table_once(qtbot) -> None:
    table = LayerTablePanel(SelectionModel())
    qtbot.addWidget(table)
    table.resize(900, 300)
    table.show()
    qtbot.wait(50)
    graph, metrics = _chain(300)
    counter = _PaintCounter()
    table.view.viewport().installEventFilter(counter)
    for i, change in enumerate((lambda: table.set_graph(graph), lambda: table.set_metrics(metrics),
                   lambda: table.sort_by("params"), lambda: table.sort_by("macs"))):
        counter.paints = 0
        change()
        qtbot.wait(80)  # every queued layout and repaint has run
        assert counter.paints == 1, (i, counter.paints)


def _shown(table: LayerTablePanel, key: str) -> dict[str, str]:
    """Layer name -> the text the view paints in column ``key`` (through multiData, as the delegate asks)."""
    model = table.model
    rd = QModelRoleData(int(Qt.ItemDataRole.DisplayRole))
    span = QModelRoleDataSpan(rd)
    out = {}
    for row in range(model.rowCount()):
        model.multiData(model.index(row, COLUMN_INDEX[key]), span)
        out[model.index(row, 0).data(NAME_ROLE)] = span[0].data()
    return out


def test_cached_cells_show_new_numbers_after_a_metric_update_and_a_resort(qtbot) -> None:
    table = LayerTablePanel(SelectionModel())
    qtbot.addWidget(table)
    table.resize(900, 300)
    table.show()
    graph, metrics = _chain(30)
    table.set_graph(graph)
    table.set_metrics(metrics)
    table.view.viewport().repaint()  # the visible rows are cached now
    before = _shown(table, "macs")
    assert before["block0.relu1"] == numbers.by_unit(7919 % 1000, METRICS["macs"].unit)
    new = {name: v * 3 + 1 for name, v in metrics.column("macs").items()}
    table.set_metrics(MetricsTable({"macs": new, "params": metrics.column("params")}))
    after = _shown(table, "macs")
    assert after == {name: numbers.by_unit(v, METRICS["macs"].unit) for name, v in new.items()}
    assert after != before
    # a new order moves each row's cached texts with it
    table.sort_by("macs", descending=True)
    assert _shown(table, "macs") == after
    assert [table.model.index(r, COLUMN_INDEX["macs"]).data() for r in range(3)] == [
        numbers.by_unit(v, METRICS["macs"].unit) for v in sorted(new.values(), reverse=True)[:3]]

"""The per-layer chart writes each bar's value next to it (one item draws them all)."""

from __future__ import annotations

from PySide6.QtCore import QPointF
from PySide6.QtGui import QColor

from effstudio.ui import numbers
from effstudio.ui.panels.layer_chart import LayerChartPanel
from effstudio.ui.selection import SelectionModel


def test_each_bar_gets_its_value_drawn_right_of_it(qtbot, graph, metrics) -> None:
    chart = LayerChartPanel(SelectionModel())
    qtbot.addWidget(chart)
    chart.resize(500, 400)
    chart.show()
    chart.set_graph(graph)
    chart.set_view("macs", False, metrics)
    assert chart._labels.texts() == [numbers.by_unit(v, "") for _, v in chart.bars()] == ["3.46 k", "1.28 k"]
    vb = chart.plot.getPlotItem().vb
    top_end = chart.bars()[0][1]

    def ink_right_of_top_bar() -> int:
        """Pixels unlike the background in a strip just right of the top bar's end."""
        qtbot.wait(20)
        img = chart.plot.grab().toImage()
        p = chart.plot.mapFromScene(vb.mapViewToScene(QPointF(top_end, 0.0)))
        bg = QColor(img.pixel(p.x() + 80, p.y() - 40))
        return sum(1 for x in range(p.x() + 3, min(img.width(), p.x() + 50)) for y in range(p.y() - 6, p.y() + 7)
                   if QColor(img.pixel(x, y)) != bg)

    with_labels = ink_right_of_top_bar()
    chart._labels.set_labels([], QColor("black"), vb.viewRect())  # the same bars and grid, no labels
    assert with_labels > ink_right_of_top_bar() + 10  # the top bar's label is drawn right of it
    chart.set_metric("params")
    assert chart._labels.texts() == [numbers.by_unit(v, "") for _, v in chart.bars()]
    chart.set_metric("latency_ms")  # without numbers there are no bars and no labels
    assert chart._labels.texts() == []

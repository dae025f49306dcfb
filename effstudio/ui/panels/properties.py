"""Properties of the current layer: identity, attributes, tensors, weights, numbers, and a
histogram of one weight's values (computed in a worker by ``effstudio.core.weights``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QHeaderView,
    QLabel,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from effstudio.core.graph import Layer, LayerGraph
from effstudio.core.metrics.table import METRICS, MetricsTable
from effstudio.core.weights import weight_histogram
from effstudio.ui import numbers
from effstudio.ui.selection import SelectionModel
from effstudio.ui.theme import plot_colors
from effstudio.ui.workers import TaskRunner

HISTOGRAM = "histogram"  # task kind
BINS = 64


def _fmt_attr(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PropertiesPanel(QWidget):
    """Shows :attr:`SelectionModel.current`; the histogram is of the chosen weight of that layer."""

    def __init__(self, selection: SelectionModel, runner: TaskRunner, loaded_getter,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self.runner = runner
        self._loaded = loaded_getter  # () -> LoadedModel | None (weights live in the model)
        self._graph: LayerGraph | None = None
        self._metrics = MetricsTable()
        self._layer: Layer | None = None
        self.tree = QTreeWidget(self)
        self.tree.setObjectName("properties_tree")
        self.tree.setColumnCount(2)
        self.tree.setHeaderLabels(["Property", "Value"])
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.weight_combo = QComboBox(self)
        self.weight_combo.setToolTip("The weight tensor whose values the histogram shows")
        self.weight_combo.currentIndexChanged.connect(lambda _i: self._request_histogram())
        self.hist_info = QLabel(self)
        self.hist_info.setWordWrap(True)
        colors = plot_colors()
        self.hist = pg.PlotWidget(background=colors.background)
        self.hist.setMenuEnabled(False)
        self.hist.hideButtons()
        self.hist.setMinimumHeight(120)
        self.hist.getPlotItem().setLabel("bottom", "weight value")
        self.hist.getPlotItem().setLabel("left", "count")
        self.hist_box = hist_box = QWidget(self)
        hl = QVBoxLayout(hist_box)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.setSpacing(2)
        hl.addWidget(self.weight_combo)
        hl.addWidget(self.hist, 1)
        hl.addWidget(self.hist_info)
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(self.tree)
        splitter.addWidget(hist_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(splitter)
        self.histogram_result: tuple[np.ndarray, np.ndarray, dict[str, float]] | None = None
        selection.sig_current_changed.connect(self._on_current_changed)
        self._show(None)

    # --- inputs -----------------------------------------------------------------------------
    def set_graph(self, graph: LayerGraph | None) -> None:
        self._graph = graph
        self._metrics = MetricsTable()
        cur = self.selection.current
        self._show(graph.layer(cur) if graph is not None and cur in graph else None)

    def set_metrics(self, metrics: MetricsTable) -> None:
        self._metrics = metrics
        self._fill_tree()

    def _on_current_changed(self, name: str | None) -> None:
        g = self._graph
        self._show(g.layer(name) if g is not None and name is not None and name in g else None)

    def apply_theme(self) -> None:
        self.hist.setBackground(plot_colors().background)

    # --- display ----------------------------------------------------------------------------
    def _show(self, layer: Layer | None) -> None:
        self._layer = layer
        self._fill_tree()
        self.weight_combo.blockSignals(True)
        self.weight_combo.clear()
        if layer is not None:
            for w in layer.weights:
                if w.numel > 0:
                    self.weight_combo.addItem(f"{w.name}  {numbers.shape(w.shape)} {w.dtype}", w.name)
        self.weight_combo.blockSignals(False)
        self.weight_combo.setVisible(self.weight_combo.count() > 0)
        self.hist_box.setVisible(self.weight_combo.count() > 0)
        self._request_histogram()

    def _fill_tree(self) -> None:
        self.tree.clear()
        lay, g = self._layer, self._graph
        if lay is None or g is None:
            QTreeWidgetItem(self.tree, ["", "Select a layer to see its properties"])
            return

        def section(title: str) -> QTreeWidgetItem:
            item = QTreeWidgetItem(self.tree, [title, ""])
            f = item.font(0)
            f.setBold(True)
            item.setFont(0, f)
            item.setExpanded(True)
            return item

        def row(parent: QTreeWidgetItem, key: str, value: str, tip: str = "") -> None:
            item = QTreeWidgetItem(parent, [key, value])
            item.setToolTip(1, tip or value)

        top = section("Layer")
        row(top, "name", lay.name)
        row(top, "op", lay.op_type)
        is_onnx = g.model is not None and g.model.format == "onnx"
        row(top, "domain", lay.domain or ("ai.onnx" if is_onnx else "—"))
        row(top, "scope", lay.scope or "(top level)")
        if lay.flags:
            row(top, "flags", ", ".join(lay.flags))
        if lay.subgraphs:
            subs = ", ".join(f"{k} ({len(v.layers)} layers)" for k, v in lay.subgraphs.items())
            row(top, "subgraphs", subs)
        nums = section("Numbers")
        for key, info in METRICS.items():
            v = self._metrics.get(key, lay.name)
            if v is None and key not in self._metrics.values:
                continue
            text = f"{int(v):,}" if (key == "params" and v is not None) else numbers.by_unit(v, info.unit)
            row(nums, info.label, text, info.help)
        if nums.childCount() == 0:
            row(nums, "params", f"{lay.params:,}")
            row(nums, "weight bytes", numbers.nbytes(lay.weight_bytes))
        if lay.attributes:
            attrs = section("Attributes")
            for k, v in lay.attributes.items():
                row(attrs, k, _fmt_attr(v), str(v))
        ins = section("Inputs")
        for t in lay.inputs:
            info = g.tensors.get(t)
            row(ins, t, _tensor_text(info))
        outs = section("Outputs")
        for t in lay.outputs:
            row(outs, t, _tensor_text(g.tensors.get(t)))
        if lay.weights:
            ws = section("Weights")
            for w in lay.weights:
                text = f"{numbers.shape(w.shape)}  {w.dtype}  {numbers.nbytes(w.nbytes)}"
                shared = ", shared with other layers (counted once)" if w.shared else ""
                row(ws, w.name, text + ("  (shared)" if w.shared else ""), f"{w.numel:,} elements{shared}")
        self.tree.expandAll()

    # --- histogram --------------------------------------------------------------------------
    def _request_histogram(self) -> None:
        self.histogram_result = None
        self.hist.getPlotItem().clear()
        name = self.weight_combo.currentData()
        loaded = self._loaded()
        if not name or loaded is None:
            self.runner.cancel(HISTOGRAM)
            self.hist_info.setText("No weights" if self._layer is not None else "")
            return
        self.hist_info.setText("computing histogram…")
        task = self.runner.start(HISTOGRAM, weight_histogram, loaded, name, BINS)
        task.sig_done.connect(lambda result, n=name: self._on_histogram(n, result))
        task.sig_failed.connect(lambda msg, _tb: self.hist_info.setText(f"histogram: {msg}"))

    def _on_histogram(self, name: str, result) -> None:
        if name != self.weight_combo.currentData():
            return
        counts, edges, stats = result
        self.histogram_result = result
        plot = self.hist.getPlotItem()
        plot.clear()
        if len(counts):
            color = plot_colors().bar
            plot.addItem(pg.PlotDataItem(edges, counts, stepMode="center", fillLevel=0,
                                         brush=pg.mkBrush(color), pen=pg.mkPen(color)))
        parts = [f"{int(stats['numel']):,} values"]
        if "mean" in stats:
            parts.append(f"mean {stats['mean']:.3g} ± {stats['std']:.3g}")
            parts.append(f"range [{stats['min']:.3g}, {stats['max']:.3g}]")
            parts.append(f"zeros {stats['zeros'] * 100:.1f} %")
        if stats.get("nonfinite"):
            parts.append(f"{int(stats['nonfinite'])} non-finite")
        self.hist_info.setText(" · ".join(parts))


def _tensor_text(info) -> str:
    if info is None:
        return "?"
    return numbers.shape(info.shape) + (f"  {info.dtype}" if info.dtype else "")

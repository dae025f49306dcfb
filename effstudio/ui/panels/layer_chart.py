"""Per-layer bar chart: the chosen metric's top-N layers as horizontal bars, largest on top.

Click a bar to select its layer (Ctrl-click to add/remove); selected layers are highlighted.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QSpinBox, QVBoxLayout, QWidget

from effstudio.core.graph import LayerGraph
from effstudio.core.metrics.table import METRICS, MetricsTable
from effstudio.ui import numbers
from effstudio.ui.selection import SelectionModel
from effstudio.ui.theme import plot_colors

DEFAULT_TOP_N = 20


def short_name(name: str, limit: int = 32) -> str:
    """The tail of a qualified name that fits ``limit`` characters (``…layer.3.attn.q``)."""
    if len(name) <= limit:
        return name
    parts = name.split(".")
    out = parts[-1]
    for p in reversed(parts[:-1]):
        if len(out) + len(p) + 2 > limit:
            break
        out = f"{p}.{out}"
    return "…" + out[-(limit - 1):]


class _ValueAxis(pg.AxisItem):
    """Tick labels in the metric's unit (``1.2 M``, ``3 MiB``, ``4 ms``); log mode labels 10^x."""

    def __init__(self) -> None:
        super().__init__("bottom")
        self.unit = ""
        self.log = False

    def tickStrings(self, values, scale, spacing):
        return [numbers.by_unit(10 ** v if self.log else v, self.unit) for v in values]


class _Bars(pg.BarGraphItem):
    """Horizontal bars that report the index of a clicked bar."""

    def __init__(self, on_click, **opts) -> None:
        super().__init__(**opts)
        self._on_click = on_click

    def mouseClickEvent(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton:
            return
        idx = math.floor(ev.pos().y() + 0.5)
        ev.accept()
        self._on_click(idx, bool(ev.modifiers() & Qt.KeyboardModifier.ControlModifier))


class _ValueLabels(pg.GraphicsObject):
    """Every bar's value text, drawn by one item in screen pixels just right of its bar.

    A ``pg.TextItem`` per bar cost milliseconds each to make, and pyqtgraph re-transforms each
    one on every view change: together more than 100 ms on the GUI thread for a top-20 chart.
    """

    def __init__(self) -> None:
        super().__init__()
        self._labels: list[tuple[float, float, str]] = []  # (x, y) in data coordinates, text
        self._color = QColor("black")
        self._rect = QRectF()

    def set_labels(self, labels: list[tuple[float, float, str]], color, area: QRectF) -> None:
        """``labels`` at data points; ``area`` (data coordinates) is where they may be drawn."""
        self.prepareGeometryChange()
        self._labels = labels
        self._color = pg.mkColor(color)
        self._rect = QRectF(area)
        self.update()

    def texts(self) -> list[str]:
        return [t for _, _, t in self._labels]

    def boundingRect(self) -> QRectF:
        return self._rect

    def dataBounds(self, ax, frac=1.0, orthoRange=None):  # pyqtgraph's API
        return None  # labels never widen an auto range

    def paint(self, painter: QPainter, *_args) -> None:
        if not self._labels:
            return
        to_device = painter.transform()
        painter.save()
        painter.resetTransform()  # text in pixels, unscaled by the plot's data transform
        painter.setPen(self._color)
        fm = painter.fontMetrics()
        dy = (fm.ascent() - fm.descent()) / 2
        for x, y, text in self._labels:
            p = to_device.map(QPointF(x, y))
            painter.drawText(QPointF(p.x() + 4, p.y() + dy), text)
        painter.restore()


class LayerChartPanel(QWidget):
    """Top-N layers by one metric.  ``bars()`` gives what is drawn (for tests and the status bar)."""

    sig_bars_changed = Signal()

    def __init__(self, selection: SelectionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self._graph: LayerGraph | None = None
        self._metrics = MetricsTable()
        self._metric = "macs"
        self._log = False
        self._names: list[str] = []  # bar i (from the top) -> layer name
        self._values: list[float] = []
        colors = plot_colors()
        self._axis = _ValueAxis()
        self.plot = pg.PlotWidget(background=colors.background, axisItems={"bottom": self._axis})
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=True)
        self.plot.hideButtons()
        self.plot.showGrid(x=True, y=False, alpha=colors.grid_alpha)
        self.plot.getPlotItem().invertY(True)  # largest bar at the top
        self._bars: _Bars | None = None
        self._labels = _ValueLabels()
        self.plot.addItem(self._labels)
        self._drawn: tuple | None = None  # what the plot items show (a redraw that changes nothing is skipped)
        self.top_spin = QSpinBox(self)
        self.top_spin.setRange(5, 200)
        self.top_spin.setValue(DEFAULT_TOP_N)
        self.top_spin.setPrefix("top ")
        self.top_spin.valueChanged.connect(lambda _v: self._redraw())
        self.title = QLabel(self)
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.title.setWordWrap(True)
        # a long title wraps instead of widening the dock
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        head = QHBoxLayout()
        head.setContentsMargins(4, 2, 4, 0)
        head.addWidget(self.title, 1)
        head.addWidget(self.top_spin)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addLayout(head)
        layout.addWidget(self.plot, 1)
        selection.sig_changed.connect(lambda _n, _s: self._recolor())
        self._redraw()

    # --- inputs -----------------------------------------------------------------------------
    def set_graph(self, graph: LayerGraph | None) -> None:
        self._graph = graph
        self._metrics = MetricsTable()
        self._redraw()

    def set_metrics(self, metrics: MetricsTable) -> None:
        self._metrics = metrics
        self._redraw()

    def set_metric(self, key: str) -> None:
        self._metric = key
        self._redraw()

    def set_log(self, on: bool) -> None:
        self._log = on
        self._redraw()

    def set_view(self, metric: str, log: bool, metrics: MetricsTable | None = None) -> None:
        """Metric, scale and (optionally) numbers at once: one redraw instead of three."""
        self._metric, self._log = metric, log
        if metrics is not None:
            self._metrics = metrics
        self._redraw()

    def set_top_n(self, n: int) -> None:
        self.top_spin.setValue(n)

    def bars(self) -> list[tuple[str, float]]:
        """(layer name, value) of the drawn bars, top to bottom."""
        return list(zip(self._names, self._values, strict=True))

    def apply_theme(self) -> None:
        self.plot.setBackground(plot_colors().background)
        self._drawn = None
        self._redraw()

    # --- drawing ----------------------------------------------------------------------------
    def _redraw(self) -> None:
        info = METRICS.get(self._metric)
        column = self._metrics.column(self._metric)
        graph = self._graph
        known = [(n, v) for n, v in column.items() if v is not None and (graph is None or n in graph)]
        known.sort(key=lambda nv: nv[1], reverse=True)
        nonzero = [(n, v) for n, v in known if v > 0]  # a layer that costs nothing is no bar
        top = nonzero[: self.top_spin.value()]
        self._names = [n for n, _ in top]
        self._values = [float(v) for _, v in top]
        label = info.label if info else self._metric
        if self._graph is None:
            self.title.setText("No model")
        elif not column:
            self.title.setText(f"{label}: not available yet")
        else:
            total = sum(v for _, v in known)
            shown = sum(self._values)
            share = f" — {shown / total * 100:.0f} % of the total" if total > 0 else ""
            zeros = len(known) - len(nonzero)
            rest = f" ({zeros} with none)" if zeros else ""
            self.title.setText(f"Top {len(top)} of {len(known)} layers by {label}{share}{rest}")
        unit = info.unit if info else ""
        drawn = (tuple(self._names), tuple(self._values), self._log, unit, label, plot_colors())
        if drawn == self._drawn:
            return  # e.g. latency merged in while the chart shows MACs: the same bars
        self._drawn = drawn
        plot = self.plot.getPlotItem()
        if self._bars is not None:
            plot.removeItem(self._bars)
            self._bars = None
        colors = plot_colors()
        axis_y = plot.getAxis("left")
        axis_x = plot.getAxis("bottom")
        for ax in (axis_x, axis_y):
            ax.setPen(colors.foreground)
            ax.setTextPen(colors.foreground)
        ticks = [(i, short_name(n)) for i, n in enumerate(self._names)]
        axis_y.setTicks([ticks])
        fm = self.fontMetrics()
        axis_y.setWidth(min(240, max([fm.horizontalAdvance(t) for _, t in ticks] + [40]) + 14))
        self._axis.unit = unit
        self._axis.log = self._log
        axis_x.setLabel(label + (" (log scale)" if self._log else ""))
        if not self._values:
            self._labels.set_labels([], colors.foreground, QRectF())
            plot.setYRange(0, 1)
            self.sig_bars_changed.emit()
            return
        widths = np.array(self._values, dtype=float)
        if self._log:
            widths = np.log10(np.maximum(widths, 1e-12))
            floor = min(0.0, float(widths.min()) - 0.5)
            x0 = np.full_like(widths, floor)
            widths = widths - floor
        else:
            x0 = np.zeros_like(widths)
        self._bars = _Bars(self._on_bar_clicked, x0=x0, y=np.arange(len(widths)), height=0.7,
                           width=widths, brushes=self._brushes(), pen=pg.mkPen(None))
        plot.addItem(self._bars)
        plot.setYRange(-0.6, len(widths) - 0.4, padding=0)
        ends = x0 + widths
        lo = float(x0.min())
        hi = lo + (float(ends.max()) - lo) * 1.3  # room for the value labels
        plot.setXRange(lo, hi, padding=0)
        self._labels.set_labels([(float(ends[i]), float(i), numbers.by_unit(v, unit))
                                 for i, v in enumerate(self._values)],
                                colors.foreground, QRectF(lo, -0.6, hi - lo, len(widths) + 0.2))
        self.sig_bars_changed.emit()

    def _brushes(self) -> list:
        colors = plot_colors()
        sel = self.selection.names
        return [pg.mkBrush(colors.bar_selected if n in sel else colors.bar) for n in self._names]

    def _recolor(self) -> None:
        if self._bars is not None:
            self._bars.setOpts(brushes=self._brushes())

    def _on_bar_clicked(self, index: int, ctrl: bool) -> None:
        if not 0 <= index < len(self._names):
            return
        name = self._names[index]
        if ctrl:
            self.selection.toggle(name, source=self)
        else:
            self.selection.set([name], source=self, current=name)

    def tooltip_for(self, index: int) -> str:
        info = METRICS.get(self._metric)
        unit = info.unit if info else ""
        return f"{self._names[index]}: {numbers.by_unit(self._values[index], unit)}"

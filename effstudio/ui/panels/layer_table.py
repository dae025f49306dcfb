"""The layer table: one row per layer with its shapes and numbers; sortable, filterable, synced
with the shared :class:`~effstudio.ui.selection.SelectionModel`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLineEdit,
    QStyle,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from effstudio.core.graph import Layer, LayerGraph
from effstudio.core.metrics.table import METRICS, MetricsTable
from effstudio.ui import numbers
from effstudio.ui.selection import SelectionModel

SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # raw number (or None = unknown) for sorting
NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # the layer's name
SIZE_SAMPLE = 60  # rows spread over the table (and each column's largest number) whose texts size the columns
COLUMN_LIMITS = {"name": 320, "scope": 180}  # widest these columns open with (px)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    numeric: bool
    tip: str = ""


COLUMNS: tuple[Column, ...] = (
    Column("name", "Layer", False, "qualified layer name"),
    Column("op", "Op", False, "operator type"),
    Column("scope", "Scope", False, "module scope"),
    Column("shape", "Output shape", False, "shape of the (first) output tensor"),
    *(Column(k, METRICS[k].label, True, METRICS[k].help)
      for k in ("params", "weight_bytes", "macs", "flops", "activation_bytes", "latency_ms")),
    Column("latency_share", "Latency share", True, "share of the summed per-layer latency"),
)
COLUMN_INDEX = {c.key: i for i, c in enumerate(COLUMNS)}


class LayerTableModel(QAbstractTableModel):
    """Rows = the shown layers of ``graph.layers``; numbers from the :class:`MetricsTable` (missing = unknown).

    The model sorts and filters itself: ``_order`` maps each view row to a layer's position in
    the graph, rebuilt with one numpy ``argsort`` / one regex pass (:meth:`sort`,
    :meth:`set_pattern`).  No proxy model in between: a proxy costs the paint of every cell a
    round of calls back into Python (its ``multiData``, the source's ``rowCount`` and
    ``columnCount``), and sorting or filtering through it calls Python once per row or comparison.
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._graph: LayerGraph | None = None
        self._layers: list[Layer] = []  # graph order
        self._pos: dict[str, int] = {}  # name -> position in the graph
        self._order: list[int] = []  # view row -> position in the graph (the shown rows, in order)
        self._row_of: dict[str, int] = {}  # name -> view row (shown layers only)
        self._metrics = MetricsTable()
        self._latency_total = 0.0
        self._sort: tuple[int, Qt.SortOrder] | None = None
        self._regex: re.Pattern[str] | None = None
        self._ordered_for: tuple | None = None  # (graph, metrics, sort, regex) _order was built for
        # per layer (graph position), per column, the roles a cell is painted with ({role: value}),
        # built when the row is first shown: a paint is then lookups, not number formatting
        self._cells: list[tuple[dict[int, Any], ...] | None] = []

    def set_graph(self, graph: LayerGraph | None) -> None:
        self.beginResetModel()
        self._graph = graph
        self._layers = list(graph.layers) if graph is not None else []
        self._pos = {lay.name: i for i, lay in enumerate(self._layers)}
        self._metrics = MetricsTable()
        self._latency_total = 0.0
        self._cells = [None] * len(self._layers)
        self._set_order(self._ordered())
        self._ordered_for = (graph, self._metrics, self._sort, self._regex)
        self.endResetModel()

    def set_metrics(self, metrics: MetricsTable) -> None:
        self._metrics = metrics
        self._latency_total = sum(v for v in metrics.column("latency_ms").values() if v is not None)
        self._cells = [None] * len(self._layers)  # new numbers: every cached text is stale
        if self._sort is not None:
            self._reorder()  # the sorted column's numbers may have changed
        if self._order:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._order) - 1, len(COLUMNS) - 1))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort rows by ``column``: unknown values last in either order, ties in graph order."""
        if 0 <= column < len(COLUMNS):
            self._sort = (column, order)
            self._reorder()

    def set_pattern(self, text: str) -> bool:
        """Show only rows whose name or op matches ``text`` (a case-insensitive regex; "" = all).
        False (and the rows unchanged) if ``text`` is not a regex."""
        try:
            regex = re.compile(text, re.IGNORECASE) if text else None
        except re.error:
            return False
        self._regex = regex
        self._reorder()
        return True

    def _reorder(self) -> None:
        """Bring ``_order`` up to date with the sort and the filter as one layout change: the
        view's persistent indexes (selection, current) follow their layers; hidden ones go invalid."""
        state = (self._graph, self._metrics, self._sort, self._regex)
        done = self._ordered_for
        if done is not None and done[0] is state[0] and done[1] is state[1] and done[2:] == state[2:]:
            return  # the view sorts again after sortByColumn, setSortingEnabled, ...: nothing new
        self._ordered_for = state
        order = self._ordered()
        if order == self._order:
            return
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_pos = self._order
        self._set_order(order)
        row_of_pos = {p: r for r, p in enumerate(order)}
        new = []
        for i in old:
            r = row_of_pos.get(old_pos[i.row()])
            new.append(QModelIndex() if r is None else self.createIndex(r, i.column()))
        self.changePersistentIndexList(old, new)
        self.layoutChanged.emit()

    def _set_order(self, order: list[int]) -> None:
        self._order = order
        layers = self._layers
        self._row_of = {layers[p].name: r for r, p in enumerate(order)}

    def _ordered(self) -> list[int]:
        """Graph positions of the shown layers, in the current sort order."""
        n = len(self._layers)
        if self._regex is None:
            shown = np.arange(n)
        else:
            search = self._regex.search
            shown = np.flatnonzero(np.fromiter(
                (bool(search(lay.name) or search(lay.op_type)) for lay in self._layers), bool, n))
        if self._sort is None or not len(shown):
            return shown.tolist()
        column, order = self._sort
        key = COLUMNS[column].key
        descending = order == Qt.SortOrder.DescendingOrder
        layers = self._layers
        if COLUMNS[column].numeric:
            # latency_share sorts like latency_ms (one positive divisor), unknown without a total
            if key == "latency_share":
                key = "latency_ms" if self._latency_total > 0 else ""
            col = self._metrics.column(key)
            values = np.array([col.get(layers[p].name) for p in shown.tolist()], dtype=float)  # None -> nan
            known = ~np.isnan(values)
            keys = -values[known] if descending else values[known]
        else:
            texts = [self.raw(layers[p], key).lower() for p in shown.tolist()]
            known = np.ones(len(shown), bool)
            _, ranks = np.unique(np.array(texts), return_inverse=True)
            keys = -ranks if descending else ranks
        # stable: ties keep graph order, also descending (hence the negated keys, not a reversal)
        first = shown[known][np.argsort(keys, kind="stable")]
        return np.concatenate([first, shown[~known]]).tolist()

    def row_of(self, name: str) -> int | None:
        """The view row of layer ``name`` (None if it is not shown)."""
        return self._row_of.get(name)

    def name_at(self, row: int) -> str:
        return self._layers[self._order[row]].name

    # --- Qt model API -----------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._order)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        col = COLUMNS[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.header
        if role == Qt.ItemDataRole.ToolTipRole:
            return col.tip
        return None

    def raw(self, layer: Layer, key: str) -> Any:
        """The value of one cell: a string, a number, or None (unknown)."""
        if key == "name":
            return layer.name
        if key == "op":
            return layer.op_type
        if key == "scope":
            return layer.scope
        if key == "shape":
            shapes = self._graph.output_shapes(layer) if self._graph is not None else []
            return ", ".join(numbers.shape(s) for s in shapes)
        if key == "latency_share":
            v = self._metrics.get("latency_ms", layer.name)
            return None if v is None or self._latency_total <= 0 else v / self._latency_total
        return self._metrics.get(key, layer.name)

    def display(self, layer: Layer, key: str) -> str:
        return self._text(key, self.raw(layer, key))

    @staticmethod
    def _text(key: str, v: Any) -> str:
        """The text shown for value ``v`` (from :meth:`raw`) in column ``key``."""
        if key == "latency_share":
            return numbers.percent(v)
        if key in METRICS:
            if v is None:
                return numbers.UNKNOWN
            return f"{int(v):,}" if key == "params" else numbers.by_unit(v, METRICS[key].unit)
        return str(v)

    def _row_cells(self, pos: int) -> tuple[dict[int, Any], ...]:
        """The cells of the layer at graph position ``pos``, as {role: value} per column (cached)."""
        cells = self._cells[pos]
        if cells is None:
            layer = self._layers[pos]
            notes = self._metrics.notes
            built = []
            for col in COLUMNS:
                raw = self.raw(layer, col.key)
                roles: dict[int, Any] = {_DISPLAY: self._text(col.key, raw), SORT_ROLE: raw, NAME_ROLE: layer.name}
                if col.numeric:
                    roles[_ALIGN] = _RIGHT
                    if raw is None:
                        note = notes.get(col.key, "")
                        roles[_TIP] = f"unknown for {layer.op_type}" + (f" ({note})" if note else "")
                elif col.key == "name":
                    roles[_TIP] = layer.name
                built.append(roles)
            cells = self._cells[pos] = tuple(built)
        return cells

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        return self._row_cells(self._order[index.row()])[index.column()].get(int(role))

    def multiData(self, index: QModelIndex | QPersistentModelIndex, roleDataSpan) -> None:
        """All the roles a cell is drawn with, in one call.

        The item delegate asks for seven roles per cell; answered one by one (``data``) that is
        seven calls into Python per cell, each taking the GIL back from whatever worker holds it.
        A role the cell has no value for is cleared: a span may be reused from cell to cell.
        """
        row = index.row()
        if row < 0:
            return  # an invalid index
        pos = self._order[row]
        cells = self._cells[pos]
        if cells is None:  # (the cache inline: this runs for every painted cell)
            cells = self._row_cells(pos)
        get = cells[index.column()].get
        for i in range(len(roleDataSpan)):
            rd = roleDataSpan[i]
            value = get(rd.role())
            if value is None:
                rd.clearData()
            else:
                rd.setData(value)


_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_ALIGN = int(Qt.ItemDataRole.TextAlignmentRole)
_TIP = int(Qt.ItemDataRole.ToolTipRole)
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


class LayerTablePanel(QWidget):
    """Filter box + table.  Selecting rows sets the shared selection; the selection scrolls the table."""

    def __init__(self, selection: SelectionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self.model = LayerTableModel(self)
        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText("Filter layers by name or op (regex)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.set_filter)
        self.view = QTableView(self)
        self.view.setObjectName("layer_table")
        self.view.setModel(self.model)
        self.view.setSortingEnabled(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setHighlightSections(False)
        self.view.selectionModel().selectionChanged.connect(self._on_view_selection_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.view)
        self._syncing = False
        # after a reset or a new order the view lays its rows out when it next paints, and that
        # layout asks for another paint: two paints of the table (10-25 ms each) per change.
        # Laid out at once, it paints once.
        self.model.modelReset.connect(self.view.executeDelayedItemsLayout)
        self.model.layoutChanged.connect(self.view.executeDelayedItemsLayout)
        selection.sig_changed.connect(self._on_selection_changed)
        selection.sig_current_changed.connect(self._on_current_changed)

    # --- inputs -----------------------------------------------------------------------------
    def set_graph(self, graph: LayerGraph | None) -> None:
        self.model.set_graph(graph)
        self._apply_selection(self.selection.names)
        self._size_columns()
        self.view.executeDelayedItemsLayout()  # the new widths too (see __init__)

    def set_metrics(self, metrics: MetricsTable) -> None:
        self.model.set_metrics(metrics)
        self._size_columns(numeric_only=True)
        self.view.executeDelayedItemsLayout()

    def _size_columns(self, numeric_only: bool = False) -> None:
        """Fit columns to their header and a sample of their texts.

        ``resizeColumnsToContents`` asks the model for every role of every sampled cell through
        the delegate (tens of thousands of Python calls: about a second on the GUI thread for
        BERT-base); measuring the display strings directly costs a few milliseconds.
        """
        model = self.model
        all_layers = model._layers  # graph order, shown or not: the widths do not follow the filter
        n = len(all_layers)
        rows = range(n) if n <= SIZE_SAMPLE else sorted({round(i * (n - 1) / (SIZE_SAMPLE - 1))
                                                          for i in range(SIZE_SAMPLE)})
        layers = [all_layers[r] for r in rows]
        biggest = {}  # per numeric column, the layer with the largest number: its text is about the widest
        for col in COLUMNS:
            values = model._metrics.column(col.key) if col.numeric else None
            if values:
                name = max(values, key=lambda k, v=values: abs(v[k]) if v[k] is not None else -1.0)
                if name in model._pos:
                    biggest[col.key] = all_layers[model._pos[name]]
        cell = QFontMetrics(self.view.font())
        head = QFontMetrics(self.view.horizontalHeader().font())
        pad = 2 * self.view.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, self.view) + 14
        widths = {}
        for i, col in enumerate(COLUMNS):
            if numeric_only and not col.numeric:
                continue
            sample = [*layers, biggest[col.key]] if col.key in biggest else layers
            texts = {model.display(lay, col.key) for lay in sample}
            width = max([cell.horizontalAdvance(t) for t in texts] + [head.horizontalAdvance(col.header) + 12])
            width += pad
            limit = COLUMN_LIMITS.get(col.key)
            widths[i] = min(width, limit) if limit else width
        # the view answers each resized column with a repaint of its own after the next one
        # (a second paint of the whole table); told nothing, it is brought up to date here once
        header = self.view.horizontalHeader()
        blocked = header.blockSignals(True)
        try:
            for i, width in widths.items():
                header.resizeSection(i, width)
        finally:
            header.blockSignals(blocked)
        self.view.updateGeometries()
        self.view.viewport().update()

    def sort_by(self, key: str, descending: bool = True) -> None:
        if key in COLUMN_INDEX:
            order = Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder
            self.view.sortByColumn(COLUMN_INDEX[key], order)

    def set_filter(self, text: str) -> None:
        if self.filter_edit.text() != text:
            self.filter_edit.setText(text)  # calls back here through textChanged
            return
        ok = self.model.set_pattern(text)
        self.filter_edit.setStyleSheet("" if ok else "QLineEdit { color: #c0392b; }")
        if ok:  # rows shown again are selected again if they are in the shared selection
            self._apply_selection(self.selection.names)

    # --- helpers for tests and other panels ---------------------------------------------------
    def visible_names(self) -> list[str]:
        """Layer names in the order the table shows them."""
        return [self.model.name_at(r) for r in range(self.model.rowCount())]

    def selected_names(self) -> set[str]:
        return {i.data(NAME_ROLE) for i in self.view.selectionModel().selectedRows()}

    # --- selection sync ---------------------------------------------------------------------
    def _on_view_selection_changed(self, *_args) -> None:
        if self._syncing:
            return
        names = self.selected_names()
        current = self.view.currentIndex()
        cur = current.data(NAME_ROLE) if current.isValid() else None
        self.selection.set(names, source=self, current=cur if cur in names else None)

    def _on_selection_changed(self, names: frozenset[str], source: object) -> None:
        if source is not self:
            self._apply_selection(names)

    def _apply_selection(self, names: frozenset[str]) -> None:
        sel = QItemSelection()
        model = self.model
        last = len(COLUMNS) - 1
        for name in names:
            row = model.row_of(name)
            if row is not None:  # None: filtered out
                sel.select(model.index(row, 0), model.index(row, last))
        self._syncing = True
        try:
            self.view.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        finally:
            self._syncing = False

    def _on_current_changed(self, name: str | None) -> None:
        row = self.model.row_of(name) if name else None
        if row is None:
            return
        p = self.model.index(row, 0)
        if p.isValid():
            self._syncing = True
            try:
                self.view.selectionModel().setCurrentIndex(p, QItemSelectionModel.SelectionFlag.NoUpdate)
            finally:
                self._syncing = False
            self.view.scrollTo(p, QAbstractItemView.ScrollHint.EnsureVisible)

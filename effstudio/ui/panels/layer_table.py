"""The layer table: one row per layer with its shapes and numbers; sortable, filterable, synced
with the shared :class:`~effstudio.ui.selection.SelectionModel`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
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
    """Rows = ``graph.layers``; numbers from the :class:`MetricsTable` (missing = unknown).

    The model sorts itself (:meth:`sort`): one Python key per row instead of a Python
    ``lessThan`` per comparison in a sorting proxy, which took tenths of a second on the GUI
    thread for a model of a few hundred layers.
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._graph: LayerGraph | None = None
        self._layers: list[Layer] = []  # in display (sorted) order
        self._graph_row: dict[str, int] = {}  # name -> position in the graph (ties keep it)
        self._metrics = MetricsTable()
        self._latency_total = 0.0
        self._row_of: dict[str, int] = {}
        self._sort: tuple[int, Qt.SortOrder] | None = None
        self._sorted_for: tuple | None = None  # (column, order, metrics) the rows are in order for
        # per row (display order), its cells' (display, alignment, tooltip), built when the row is
        # first asked for: a paint is then lookups, not number formatting (see multiData)
        self._cells: list[tuple[tuple[str, int | None, str | None], ...] | None] = []

    def set_graph(self, graph: LayerGraph | None) -> None:
        self.beginResetModel()
        self._graph = graph
        self._layers = list(graph.layers) if graph is not None else []
        self._graph_row = {lay.name: i for i, lay in enumerate(self._layers)}
        self._metrics = MetricsTable()
        self._sorted_for = None
        self._layers = self._sorted(self._layers)
        self._row_of = {lay.name: i for i, lay in enumerate(self._layers)}
        self._cells = [None] * len(self._layers)
        self.endResetModel()

    def set_metrics(self, metrics: MetricsTable) -> None:
        self._metrics = metrics
        self._latency_total = sum(metrics.column("latency_ms").values())
        self._cells = [None] * len(self._layers)  # new numbers: every cached text is stale
        if self._layers:
            if self._sort is not None:
                self.sort(*self._sort)  # the sorted column's numbers may have changed
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._layers) - 1, len(COLUMNS) - 1))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort rows by ``column``: unknown values last in either order, ties in graph order."""
        if not 0 <= column < len(COLUMNS):
            return
        self._sort = (column, order)
        done = self._sorted_for
        if done is not None and done[:2] == (column, order) and done[2] is self._metrics:
            return  # in this order for these numbers already (new numbers re-sort, then the view asks again)
        self._sorted_for = (column, order, self._metrics)
        new = self._sorted(self._layers)
        if new == self._layers:
            return
        self.layoutAboutToBeChanged.emit()
        old_persistent = self.persistentIndexList()
        names = [self._layers[i.row()].name for i in old_persistent]
        self._cells = [self._cells[self._row_of[lay.name]] for lay in new]  # the cached rows move with their layers
        self._layers = new
        self._row_of = {lay.name: i for i, lay in enumerate(new)}
        self.changePersistentIndexList(old_persistent, [self.index(self._row_of[n], i.column())
                                                         for n, i in zip(names, old_persistent, strict=True)])
        self.layoutChanged.emit()

    def _sorted(self, layers: list[Layer]) -> list[Layer]:
        in_graph = sorted(layers, key=lambda lay: self._graph_row[lay.name])
        if self._sort is None:
            return in_graph
        key = COLUMNS[self._sort[0]].key
        known: list[tuple[Any, Layer]] = []
        unknown: list[Layer] = []
        for lay in in_graph:
            v = self.raw(lay, key)
            if v is None:
                unknown.append(lay)
            else:
                known.append((v.lower() if isinstance(v, str) else v, lay))
        # a stable sort keeps graph order among ties, also with reverse=True
        known.sort(key=lambda kv: kv[0], reverse=self._sort[1] == Qt.SortOrder.DescendingOrder)
        return [lay for _, lay in known] + unknown

    def row_of(self, name: str) -> int | None:
        return self._row_of.get(name)

    def name_at(self, row: int) -> str:
        return self._layers[row].name

    # --- Qt model API -----------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._layers)

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
        v = self.raw(layer, key)
        if key == "latency_share":
            return numbers.percent(v)
        if key in METRICS:
            if v is None:
                return numbers.UNKNOWN
            return f"{int(v):,}" if key == "params" else numbers.by_unit(v, METRICS[key].unit)
        return str(v)

    def _row_cells(self, row: int) -> tuple[tuple[str, int | None, str | None], ...]:
        """Row ``row``'s cells as (display text, alignment or None, tooltip or None), cached."""
        cells = self._cells[row]
        if cells is None:
            layer = self._layers[row]
            notes = self._metrics.notes
            built = []
            for col in COLUMNS:
                raw = self.raw(layer, col.key)
                tip = None
                if col.numeric and raw is None:
                    note = notes.get(col.key, "")
                    tip = f"unknown for {layer.op_type}" + (f" ({note})" if note else "")
                elif col.key == "name":
                    tip = layer.name
                built.append((self.display(layer, col.key), _RIGHT if col.numeric else None, tip))
            cells = self._cells[row] = tuple(built)
        return cells

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = index.row()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._row_cells(row)[index.column()][0]
        if role == SORT_ROLE:
            return self.raw(self._layers[row], COLUMNS[index.column()].key)
        if role == NAME_ROLE:
            return self._layers[row].name
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return self._row_cells(row)[index.column()][1]
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._row_cells(row)[index.column()][2]
        return None

    def multiData(self, index: QModelIndex | QPersistentModelIndex, roleDataSpan) -> None:
        """All the roles a cell is drawn with, in one call.

        The item delegate asks for seven roles per cell; answered one by one that is ~600 calls
        into Python per paint of the table, each taking the GIL back from whatever worker holds
        it (a paint took 20-70 ms next to the layout worker).  One call per cell: ~90.
        """
        if index.isValid():
            self.fill_cell(index.row(), index.column(), roleDataSpan)

    def fill_cell(self, row: int, column: int, roleDataSpan) -> None:
        """:meth:`multiData` for source cell (row, column): cached values, no formatting."""
        display, align, tip = self._row_cells(row)[column]
        for i in range(len(roleDataSpan)):
            rd = roleDataSpan[i]
            role = rd.role()
            if role == _DISPLAY:
                rd.setData(display)
            elif role == _ALIGN and align is not None:
                rd.setData(align)
            elif role == _TIP and tip is not None:
                rd.setData(tip)
            elif role == SORT_ROLE:
                rd.setData(self.raw(self._layers[row], COLUMNS[column].key))
            elif role == NAME_ROLE:
                rd.setData(self._layers[row].name)
            else:
                rd.clearData()  # the span is reused from cell to cell: no value left from the last one


_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_ALIGN = int(Qt.ItemDataRole.TextAlignmentRole)
_TIP = int(Qt.ItemDataRole.ToolTipRole)
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


class LayerFilterProxy(QSortFilterProxyModel):
    """Filters by a regex on name/op; sorting is passed on to the source model."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self._regex: re.Pattern[str] | None = None
        self._source: LayerTableModel | None = None

    def setSourceModel(self, model) -> None:
        super().setSourceModel(model)
        self._source = model if isinstance(model, LayerTableModel) else None

    def set_pattern(self, text: str) -> bool:
        """Filter rows by a case-insensitive regex on name or op; False if ``text`` is not a regex."""
        try:
            regex = re.compile(text, re.IGNORECASE) if text else None
        except re.error:
            return False
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9; invalidateRowsFilter is deprecated there
            self.beginFilterChange()
            self._regex = regex
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self._regex = regex
            self.invalidateRowsFilter()
        return True

    def filterAcceptsRow(self, source_row: int, source_parent) -> bool:
        if self._regex is None:
            return True
        model = self.sourceModel()
        name = model.index(source_row, COLUMN_INDEX["name"], source_parent).data()
        op = model.index(source_row, COLUMN_INDEX["op"], source_parent).data()
        return bool(self._regex.search(name or "") or self._regex.search(op or ""))

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sorting is the source model's (see :meth:`LayerTableModel.sort`); this proxy only filters."""
        self.sourceModel().sort(column, order)

    def multiData(self, index: QModelIndex | QPersistentModelIndex, roleDataSpan) -> None:
        # Qt's proxy would ask the source role by role (see LayerTableModel.multiData); straight
        # to the source's Python method with the row and column: no source index wrapped for it
        source = self.mapToSource(index)
        if self._source is not None:
            if source.isValid():
                self._source.fill_cell(source.row(), source.column(), roleDataSpan)
        else:
            self.sourceModel().multiData(source, roleDataSpan)


class LayerTablePanel(QWidget):
    """Filter box + table.  Selecting rows sets the shared selection; the selection scrolls the table."""

    def __init__(self, selection: SelectionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self.model = LayerTableModel(self)
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText("Filter layers by name or op (regex)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.set_filter)
        self.view = QTableView(self)
        self.view.setObjectName("layer_table")
        self.view.setModel(self.proxy)
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
        self.proxy.modelReset.connect(self.view.executeDelayedItemsLayout)
        self.proxy.layoutChanged.connect(self.view.executeDelayedItemsLayout)
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
        n = model.rowCount()
        rows = range(n) if n <= SIZE_SAMPLE else sorted({round(i * (n - 1) / (SIZE_SAMPLE - 1))
                                                          for i in range(SIZE_SAMPLE)})
        layers = [model._layers[r] for r in rows]
        biggest = {}  # per numeric column, the layer with the largest number: its text is about the widest
        for col in COLUMNS:
            values = model._metrics.column(col.key) if col.numeric else None
            if values:
                name = max(values, key=lambda k, v=values: abs(v[k]) if v[k] is not None else -1.0)
                if name in model._row_of:
                    biggest[col.key] = model._layers[model._row_of[name]]
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
        ok = self.proxy.set_pattern(text)
        self.filter_edit.setStyleSheet("" if ok else "QLineEdit { color: #c0392b; }")

    # --- helpers for tests and other panels ---------------------------------------------------
    def visible_names(self) -> list[str]:
        """Layer names in the order the table shows them."""
        return [self.proxy.index(r, 0).data(NAME_ROLE) for r in range(self.proxy.rowCount())]

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
        last = self.proxy.columnCount() - 1
        for name in names:
            row = self.model.row_of(name)
            if row is None:
                continue
            p = self.proxy.mapFromSource(self.model.index(row, 0))
            if p.isValid():
                sel.select(p, self.proxy.index(p.row(), last))
        self._syncing = True
        try:
            self.view.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        finally:
            self._syncing = False

    def _on_current_changed(self, name: str | None) -> None:
        row = self.model.row_of(name) if name else None
        if row is None:
            return
        p = self.proxy.mapFromSource(self.model.index(row, 0))
        if p.isValid():
            self._syncing = True
            try:
                self.view.selectionModel().setCurrentIndex(p, QItemSelectionModel.SelectionFlag.NoUpdate)
            finally:
                self._syncing = False
            self.view.scrollTo(p, QAbstractItemView.ScrollHint.EnsureVisible)



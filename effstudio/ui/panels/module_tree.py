"""Module tree: scopes → layers, with each node's op, params and MACs (scopes show their subtree's sums).

Click a layer to select it, click a scope to select its whole subtree; the context menu offers
"Select module subtree" too.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QPoint, Qt, QTimer
from PySide6.QtGui import QFontMetrics, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QTreeView, QVBoxLayout, QWidget

from effstudio.core.graph import LayerGraph
from effstudio.core.metrics.table import MetricsTable
from effstudio.ui import numbers
from effstudio.ui.selection import SelectionModel

NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # layer name (leaves)
SCOPE_ROLE = Qt.ItemDataRole.UserRole + 2  # scope path (scope nodes)
HEADERS = ("Module / layer", "Op", "Params", "MACs")
BUILD_CHUNK = 25  # layers whose rows are made (or numbers written) per step
SLICE_S = 0.002  # steps run per turn of the event loop until this much time is spent (timers due
# together run in one pass: a longer slice joins the new numbers and paints of the same turns)


class ModuleTreePanel(QWidget):
    def __init__(self, selection: SelectionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self._graph: LayerGraph | None = None
        self._metrics = MetricsTable()
        self._layer_items: dict[str, QStandardItem] = {}
        self._scope_items: dict[str, QStandardItem] = {}
        self._building = False  # rows being made
        self._filling = False  # numbers being written
        self._job = 0
        self._after_fill = None  # what to do once the numbers are written (show a new tree)
        self._ancestor_memo: dict[str, list[str]] = {}
        self._shown_numbers: tuple[dict, dict] | None = None
        self.model = QStandardItemModel(self)
        self.model.setHorizontalHeaderLabels(list(HEADERS))
        self.view = QTreeView(self)
        self.view.setObjectName("module_tree")
        self.view.setModel(self.model)
        self.view.setUniformRowHeights(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._on_context_menu)
        self.view.clicked.connect(self._on_clicked)
        header = self.view.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)  # op names can be long
        header.resizeSection(1, 80)
        for col in (2, 3):  # sized to their texts by _fill_numbers (ResizeToContents re-measures
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)  # on every change)
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(40)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)
        self._syncing = False
        selection.sig_changed.connect(self._on_selection_changed)
        selection.sig_current_changed.connect(self._on_current_changed)

    # --- inputs -----------------------------------------------------------------------------
    def set_graph(self, graph: LayerGraph | None) -> None:
        self._graph = graph
        self._metrics = MetricsTable()
        self._shown_numbers = None
        self._rebuild()

    def set_metrics(self, metrics: MetricsTable) -> None:
        self._metrics = metrics
        if not self._building:
            self._fill_numbers()

    def is_building(self) -> bool:
        """True while a big graph's rows or numbers are still being made (see :meth:`_rebuild`)."""
        return self._building or self._filling

    def _in_chunks(self, steps: list, then) -> None:
        """Run ``steps`` in slices of about :data:`SLICE_S` per turn of the event loop (a single
        step at once), then ``then``; a newer job (another graph or numbers) stops this one."""
        self._job += 1
        job = self._job

        def run(i: int) -> None:
            if job != self._job:
                return
            end = time.perf_counter() + SLICE_S
            while i < len(steps):
                steps[i]()
                i += 1
                if i < len(steps) and time.perf_counter() >= end:
                    # a timer, not a posted call (singleShot 0): due timers and input get their turn first
                    QTimer.singleShot(1, lambda i=i: run(i))
                    return
            then()

        if len(steps) > 1:  # a big graph: its first rows in a turn of their own too, not in the caller's
            QTimer.singleShot(1, lambda: run(0))
        else:
            run(0)

    def _rebuild(self) -> None:
        """Fill a new item model, then show it.

        Rows appended to a model a view watches cost a view update each; to a detached one next
        to nothing.  A big graph's rows (and then their numbers) are made :data:`BUILD_CHUNK`
        layers per turn of the event loop, so the window stays responsive; the tree shows when
        all are made.
        """
        self._layer_items.clear()
        self._scope_items.clear()
        old, self.model = self.model, QStandardItemModel(self)
        self.model.setHorizontalHeaderLabels(list(HEADERS))
        g = self._graph
        self._building = g is not None
        if g is None:
            self._job += 1
            self._show_model(old)
            return
        layers = g.layers

        def built() -> None:
            self._building = False
            self._after_fill = shown
            self._fill_numbers()

        def shown() -> None:
            self._show_model(old)
            self.view.expandToDepth(0)
            self._on_selection_changed(self.selection.names, None)

        self._in_chunks([lambda a=a: self._add_rows(layers[a:a + BUILD_CHUNK])
                         for a in range(0, len(layers), BUILD_CHUNK)], built)

    def _add_rows(self, layers) -> None:
        root = self.model.invisibleRootItem()

        def scope_item(scope: str) -> QStandardItem:
            if not scope:
                return root
            if scope in self._scope_items:
                return self._scope_items[scope]
            parent_scope, _, leaf = scope.rpartition(".")
            parent = scope_item(parent_scope)
            item = QStandardItem(leaf)
            item.setData(scope, SCOPE_ROLE)
            item.setToolTip(scope)
            f = item.font()
            f.setBold(True)
            item.setFont(f)
            parent.appendRow([item, QStandardItem(""), _num_item(), _num_item()])
            self._scope_items[scope] = item
            return item

        for lay in layers:
            parent = scope_item(lay.scope)
            short = lay.name[len(lay.scope) + 1:] if lay.scope and lay.name.startswith(lay.scope + ".") \
                else lay.name
            item = QStandardItem(short or lay.name)
            item.setData(lay.name, NAME_ROLE)
            item.setToolTip(lay.name)
            parent.appendRow([item, QStandardItem(lay.op_type), _num_item(), _num_item()])
            self._layer_items[lay.name] = item

    def _show_model(self, old: QStandardItemModel) -> None:
        self.view.setModel(self.model)
        old.deleteLater()

    def _fill_numbers(self) -> None:
        """Params and MACs of every row (scopes: their subtree's sums), in chunks like the rows."""
        g = self._graph
        if g is None:
            return
        params = self._metrics.column("params") or {lay.name: lay.params for lay in g.layers}
        macs = self._metrics.column("macs")
        if self._shown_numbers == (params, macs):  # e.g. latency merged in: nothing shown changed
            self._filled()
            return
        own_p: dict[str, float] = {}  # per scope, its own layers; then added to every ancestor
        own_m: dict[str, float] = {}
        for lay in g.layers:
            own_p[lay.scope] = own_p.get(lay.scope, 0) + (params.get(lay.name) or 0)
            own_m[lay.scope] = own_m.get(lay.scope, 0) + (macs.get(lay.name) or 0)
        p_sum: dict[str, float] = {}
        m_sum: dict[str, float] = {}
        for scope in own_p:
            for sc in self._ancestors(scope):
                p_sum[sc] = p_sum.get(sc, 0) + own_p[scope]
                m_sum[sc] = m_sum.get(sc, 0) + own_m[scope]
        rows = [(item, params.get(name), macs.get(name)) for name, item in self._layer_items.items()]
        rows += [(item, p_sum.get(scope, 0), m_sum.get(scope, 0) if macs else None)
                 for scope, item in self._scope_items.items()]
        texts: dict[int, set[str]] = {2: set(), 3: set()}

        def fill(part) -> None:
            # signals blocked: one layout change at the end instead of a view update per cell
            self.model.blockSignals(True)
            try:
                for item, p, m in part:
                    texts[2].add(_set_num(item, 2, p, numbers.si))
                    texts[3].add(_set_num(item, 3, m, numbers.si))
            finally:
                self.model.blockSignals(False)

        def done() -> None:
            self._filling = False
            self._shown_numbers = (params, macs)
            self.model.layoutAboutToBeChanged.emit()
            self.model.layoutChanged.emit()
            header = self.view.header()
            cell, head = QFontMetrics(self.view.font()), QFontMetrics(header.font())
            for col, ts in texts.items():
                width = max([cell.horizontalAdvance(t) for t in ts] + [head.horizontalAdvance(HEADERS[col])])
                header.resizeSection(col, width + 18)
            self._filled()

        self._filling = True
        self._in_chunks([lambda a=a: fill(rows[a:a + BUILD_CHUNK]) for a in range(0, len(rows), BUILD_CHUNK)],
                        done)

    def _filled(self) -> None:
        then, self._after_fill = self._after_fill, None
        if then is not None:
            then()

    def _ancestors(self, scope: str) -> list[str]:
        out = self._ancestor_memo.get(scope)
        if out is None:
            parts = scope.split(".") if scope else []
            out = self._ancestor_memo[scope] = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return out

    # --- selection --------------------------------------------------------------------------
    def scope_at(self, index: QModelIndex) -> str | None:
        item = self.model.itemFromIndex(index.siblingAtColumn(0))
        if item is None:
            return None
        scope = item.data(SCOPE_ROLE)
        if scope is not None:
            return str(scope)
        name = item.data(NAME_ROLE)
        return self._graph.layer(name).scope if (name and self._graph is not None) else None

    def select_subtree(self, scope: str) -> None:
        if self._graph is None:
            return
        names = [lay.name for lay in self._graph.layers_in_scope(scope)]
        self.selection.set(names, source=None, current=names[0] if names else None)

    def _on_clicked(self, index: QModelIndex) -> None:
        item = self.model.itemFromIndex(index.siblingAtColumn(0))
        if item is None:
            return
        name = item.data(NAME_ROLE)
        ctrl = _ctrl_down()
        if name:
            if ctrl:
                self.selection.toggle(name, source=self)
            else:
                self.selection.set([name], source=self, current=name)
        elif item.data(SCOPE_ROLE) is not None:
            self.select_subtree(str(item.data(SCOPE_ROLE)))

    def _on_context_menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        scope = self.scope_at(index) if index.isValid() else None
        if scope is None:
            return
        menu = QMenu(self)
        act = menu.addAction(f"Select module subtree '{scope or '(root)'}'")
        act.triggered.connect(lambda: self.select_subtree(scope))
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def _on_selection_changed(self, names: frozenset[str], source: object) -> None:
        if source is self:
            return
        sel = QItemSelection()
        for n in names:
            item = self._layer_items.get(n)
            if item is not None:
                idx = item.index()
                sel.select(idx, idx.siblingAtColumn(len(HEADERS) - 1))
        self._syncing = True
        try:
            self.view.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        finally:
            self._syncing = False

    def _on_current_changed(self, name: str | None) -> None:
        item = self._layer_items.get(name) if name else None
        if item is not None:
            self.view.scrollTo(item.index(), QAbstractItemView.ScrollHint.EnsureVisible)


def _ctrl_down() -> bool:
    from PySide6.QtWidgets import QApplication

    return bool(QApplication.keyboardModifiers() & Qt.KeyboardModifier.ControlModifier)


def _num_item() -> QStandardItem:
    item = QStandardItem("")
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _set_num(item: QStandardItem, column: int, value, fmt) -> str:
    parent = item.parent() or item.model().invisibleRootItem()
    cell = parent.child(item.row(), column)
    text = numbers.UNKNOWN if value is None else fmt(value)
    if cell is not None:
        cell.setText(text)
    return text

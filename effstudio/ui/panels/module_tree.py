"""Module tree: scopes → layers, with each node's op, params and MACs (scopes show their subtree's sums).

Click a layer to select it, click a scope to select its whole subtree; the context menu offers
"Select module subtree" too.
"""

from __future__ import annotations

from PySide6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QPoint, Qt
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QTreeView, QVBoxLayout, QWidget

from effstudio.core.graph import LayerGraph
from effstudio.core.metrics.table import MetricsTable
from effstudio.ui import numbers
from effstudio.ui.selection import SelectionModel

NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # layer name (leaves)
SCOPE_ROLE = Qt.ItemDataRole.UserRole + 2  # scope path (scope nodes)
HEADERS = ("Module / layer", "Op", "Params", "MACs")


class ModuleTreePanel(QWidget):
    def __init__(self, selection: SelectionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self._graph: LayerGraph | None = None
        self._metrics = MetricsTable()
        self._layer_items: dict[str, QStandardItem] = {}
        self._scope_items: dict[str, QStandardItem] = {}
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
        for col in (2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
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
        self._rebuild()

    def set_metrics(self, metrics: MetricsTable) -> None:
        self._metrics = metrics
        self._fill_numbers()

    def _rebuild(self) -> None:
        self.model.removeRows(0, self.model.rowCount())
        self._layer_items.clear()
        self._scope_items.clear()
        g = self._graph
        if g is None:
            return
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

        for lay in g.layers:
            parent = scope_item(lay.scope)
            short = lay.name[len(lay.scope) + 1:] if lay.scope and lay.name.startswith(lay.scope + ".") \
                else lay.name
            item = QStandardItem(short or lay.name)
            item.setData(lay.name, NAME_ROLE)
            item.setToolTip(lay.name)
            parent.appendRow([item, QStandardItem(lay.op_type), _num_item(), _num_item()])
            self._layer_items[lay.name] = item
        self.view.expandToDepth(0)
        self._fill_numbers()

    def _fill_numbers(self) -> None:
        g = self._graph
        if g is None:
            return
        params = self._metrics.column("params") or {lay.name: lay.params for lay in g.layers}
        macs = self._metrics.column("macs")
        for name, item in self._layer_items.items():
            _set_num(item, 2, params.get(name), numbers.si)
            _set_num(item, 3, macs.get(name), numbers.si)
        p_sum: dict[str, float] = {}
        m_sum: dict[str, float] = {}
        for lay in g.layers:  # add each layer to its scope and every ancestor scope
            parts = lay.scope.split(".") if lay.scope else []
            for i in range(1, len(parts) + 1):
                sc = ".".join(parts[:i])
                p_sum[sc] = p_sum.get(sc, 0) + (params.get(lay.name) or 0)
                m_sum[sc] = m_sum.get(sc, 0) + (macs.get(lay.name) or 0)
        for scope, item in self._scope_items.items():
            _set_num(item, 2, p_sum.get(scope, 0), numbers.si)
            _set_num(item, 3, m_sum.get(scope, 0) if macs else None, numbers.si)

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


def _set_num(item: QStandardItem, column: int, value, fmt) -> None:
    parent = item.parent() or item.model().invisibleRootItem()
    cell = parent.child(item.row(), column)
    if cell is not None:
        cell.setText(numbers.UNKNOWN if value is None else fmt(value))

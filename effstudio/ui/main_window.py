"""The main window: a thin shell of menus (from ``actions.py``), a toolbar, docks and a status bar.

Each feature lives in its own panel; the model and its background work live in
:class:`~effstudio.ui.session.ModelSession`; this file only wires them together and shows dialogs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
    QShortcut,
)
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QWidget,
)

from effstudio import __version__
from effstudio.core.errors import EffstudioError
from effstudio.core.graph import LayerGraph
from effstudio.core.inputs import InputSpec, parse_input_specs
from effstudio.core.metrics.table import METRICS, MetricsTable
from effstudio.ui import theme
from effstudio.ui.actions import build_menus, update_enablement
from effstudio.ui.device_menu import DeviceMenu
from effstudio.ui.icons import icon
from effstudio.ui.metrics_fanout import STAGGER_MIN_LAYERS, StepFanout
from effstudio.ui.paint_pacer import PaintPacer
from effstudio.ui.panels.layer_chart import LayerChartPanel
from effstudio.ui.panels.layer_table import LayerTablePanel
from effstudio.ui.panels.module_tree import ModuleTreePanel
from effstudio.ui.panels.properties import PropertiesPanel
from effstudio.ui.panels.status import StatusPanel
from effstudio.ui.selection import SelectionModel
from effstudio.ui.session import ModelSession
from effstudio.ui.settings import Settings
from effstudio.ui.workers import TaskRunner

OPEN_FILTER = "Models (*.onnx *.pt2 *.pt *.ts);;ONNX (*.onnx);;PyTorch (*.pt2 *.pt *.ts);;All files (*)"
MODEL_SUFFIXES = (".onnx", ".pt2", ".pt", ".ts", ".pth")
TRUST_BUTTON = "Trust and open"
GRAPH_MIN_WIDTH = 320  # px the graph view keeps when the window is narrow
MODEL_HOLD_MS = 300  # longest a new graph's docks wait for its numbers and its drawing before they paint


def _graph_view_class():
    """The graph view if its package is there (it is written separately), else None."""
    try:
        from effstudio.ui.graph import GraphView
    except ImportError:
        return None
    return GraphView


def _warm_up_loaders() -> None:
    from effstudio.core.loaders.onnx_shapes import warm_up

    warm_up()


class MainWindow(QMainWindow):
    def __init__(self, session: ModelSession | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("effstudio_main")
        self.setWindowTitle("effstudio")
        self.setWindowIcon(icon("effstudio"))
        self.setAcceptDrops(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self.settings = Settings()
        self.selection = SelectionModel(self)
        self.session = session or ModelSession(parent=self)
        self.device_menu = DeviceMenu(self.settings.latency_device, self)  # Model ▸ Measure On
        self.session.latency_device = self.device_menu.current
        self.device_menu.sig_chosen.connect(self._on_device_chosen)
        self.session.setParent(self)
        self.current_metric = self.settings.metric if self.settings.metric in METRICS else "macs"

        # --- panels -------------------------------------------------------------------------
        self.table = LayerTablePanel(self.selection, self)
        self.chart = LayerChartPanel(self.selection, self)
        self.properties = PropertiesPanel(self.selection, self.session.runner, self._loaded, self)
        self.module_tree = ModuleTreePanel(self.selection, self)
        view_cls = _graph_view_class()
        self.graph_view = view_cls(self.selection, self) if view_cls is not None else None
        if self.graph_view is not None:
            self._use_toolbar_search_for_graph()
            # the docks give way before the graph does: at 800 px the graph was squeezed to 68 px
            self.graph_view.setMinimumWidth(GRAPH_MIN_WIDTH)
            self.setCentralWidget(self.graph_view)
            self.tree_dock = self._dock("Module tree", "dock_module_tree", self.module_tree,
                                        Qt.DockWidgetArea.LeftDockWidgetArea)
        else:  # until the graph view exists, the module tree is the centre
            self.setCentralWidget(self.module_tree)
            self.tree_dock = None
        self.table_dock = self._dock("Layer table", "dock_layer_table", self.table,
                                     Qt.DockWidgetArea.BottomDockWidgetArea)
        self.chart_dock = self._dock("Per-layer chart", "dock_layer_chart", self.chart,
                                     Qt.DockWidgetArea.RightDockWidgetArea)
        # with the graph view in the centre, properties sit under the module tree (the chart keeps
        # the whole right column); without it, under the chart
        self.properties_dock = self._dock("Properties", "dock_properties", self.properties,
                                          Qt.DockWidgetArea.LeftDockWidgetArea if self.tree_dock is not None
                                          else Qt.DockWidgetArea.RightDockWidgetArea)
        # a new model or new numbers: the docks paint one per turn after the graph (see paint_pacer)
        self._pacer = PaintPacer([self.table, self.chart, self.module_tree, self.properties], self)
        self._fanout = StepFanout(self)  # new numbers to the panels, one step per turn (see _on_metrics_changed)
        self.status = StatusPanel(self)
        self.statusBar().addPermanentWidget(self.status, 1)
        self.statusBar().messageChanged.connect(self.status.show_message)  # drawn in the panel (see StatusPanel)
        self.statusBar().setSizeGripEnabled(True)

        # --- menus and toolbar ----------------------------------------------------------------
        self.actions_by_id: dict[str, QAction] = build_menus(self, self.menuBar())
        self._build_toolbar()

        # --- wiring ---------------------------------------------------------------------------
        s = self.session
        s.sig_model_changed.connect(self._on_model_changed)
        s.sig_metrics_changed.connect(self._on_metrics_changed)
        s.sig_opened.connect(self._on_opened)
        s.sig_load_failed.connect(self._on_load_failed)
        s.sig_load_cancelled.connect(self._on_load_cancelled)
        s.sig_latency_state.connect(self._on_latency_state)
        s.sig_progress.connect(self.status.set_progress)
        s.sig_busy_changed.connect(self._on_busy_changed)
        self.status.sig_cancel.connect(self.cancel_tasks)
        if self.graph_view is not None:  # a load waits for the first drawing of its graph
            s.wait_for_draw = True
            self.graph_view.sig_layout_ready.connect(self._on_graph_drawn)
        self.selection.sig_changed.connect(lambda _n, _s: self._update_enablement())

        self.resize(1400, 880)
        self._restore_layout()
        self.status.set_model(None, MetricsTable())
        self._update_enablement()
        # one-time costs of the first open (imports, onnx's schema tables) paid now, while the
        # window idles, off the GUI thread; not the session's runner: nothing shows as busy
        self._warm_runner = TaskRunner(self)
        self._warm_runner.start("warm-up", _warm_up_loaders)

    def _use_toolbar_search_for_graph(self) -> None:
        """One search box: the toolbar's (Ctrl+F) drives the graph and the table, so the graph
        view's own overlay and its Ctrl+F (which would make Ctrl+F ambiguous) are switched off."""
        view = self.graph_view
        box = getattr(view, "search_box", None)
        if box is not None:
            box.hide()
            box.setMaximumSize(0, 0)  # the view re-positions it on resize; keep it invisible
        find = QKeySequence(QKeySequence.StandardKey.Find)
        for sc in view.findChildren(QShortcut):
            if sc.key() == find:
                sc.setEnabled(False)

    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _build_toolbar(self) -> None:
        tb = self.addToolBar("Main")
        tb.setObjectName("toolbar_main")
        tb.setIconSize(QSize(20, 20))
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        tb.addAction(self.actions_by_id["open"])
        tb.addSeparator()
        tb.addWidget(QLabel(" Metric: "))
        self.metric_combo = QComboBox(self)
        self.metric_combo.setObjectName("metric_combo")
        for key, info in METRICS.items():
            self.metric_combo.addItem(info.label, key)
            self.metric_combo.setItemData(self.metric_combo.count() - 1, info.help,
                                          Qt.ItemDataRole.ToolTipRole)
        self.metric_combo.setCurrentIndex(max(0, self.metric_combo.findData(self.current_metric)))
        self.metric_combo.currentIndexChanged.connect(self._on_metric_combo)
        tb.addWidget(self.metric_combo)
        log = self.actions_by_id["log_scale"]
        log.setChecked(self.settings.log_scale)
        tb.addAction(log)
        tb.addAction(self.actions_by_id["fit"])
        tb.addSeparator()
        tb.addAction(self.actions_by_id["measure_latency"])
        spacer = QWidget(self)
        spacer.setSizePolicy(spacer.sizePolicy().horizontalPolicy().Expanding,
                             spacer.sizePolicy().verticalPolicy().Preferred)
        tb.addWidget(spacer)
        self.search_edit = QLineEdit(self)
        self.search_edit.setObjectName("search_edit")
        find_key = QKeySequence(QKeySequence.StandardKey.Find).toString()
        self.search_edit.setPlaceholderText(f"Find layers (regex)  {find_key}")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.addAction(icon("search"), QLineEdit.ActionPosition.LeadingPosition)
        self.search_edit.setFixedWidth(260)
        self.search_edit.textChanged.connect(self._on_search_changed)
        self.search_edit.returnPressed.connect(self._on_search_return)
        tb.addWidget(self.search_edit)

    # --- state for the actions table ---------------------------------------------------------
    def action_context(self) -> dict[str, bool]:
        return {"has_model": self.session.graph is not None, "busy": self.session.is_busy(),
                "has_selection": bool(self.selection.names)}

    def _update_enablement(self) -> None:
        update_enablement(self.actions_by_id, self.action_context())

    # --- opening ----------------------------------------------------------------------------
    def open_spec(self, spec: str, trust: bool = False, inputs: dict[str, InputSpec] | None = None) -> None:
        """Open a file path, ``demo:NAME`` or ``pkg.module:factory`` in the background."""
        self.statusBar().showMessage(f"Opening {spec}…")
        self.session.open(spec, trust=trust, inputs=inputs)

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model", self.settings.last_dir, OPEN_FILTER)
        if path:
            self.settings.last_dir = str(Path(path).parent)
            self.open_spec(path)

    def fill_recent_menu(self, menu: QMenu) -> None:
        menu.clear()
        recent = self.settings.recent_files()
        for spec in recent:
            act = menu.addAction(_display_spec(spec))
            act.setToolTip(spec)
            act.setData(spec)
            act.triggered.connect(lambda _c=False, s=spec: self.open_spec(s))
        if not recent:
            menu.addAction("(none)").setEnabled(False)
            return
        menu.addSeparator()
        menu.addAction("Clear list").triggered.connect(self.settings.clear_recent)

    def fill_demo_menu(self, menu: QMenu) -> None:
        menu.clear()
        menu.setToolTipsVisible(True)
        try:
            from effstudio.core.zoo import DEMOS
        except ImportError as e:
            menu.addAction(f"demo models unavailable: {e}").setEnabled(False)
            return
        groups = (("trained", "Trained on the built-in digits"),
                  ("reference", "Reference architectures — random weights"))
        for kind, heading in groups:
            specs = [d for d in DEMOS.values() if d.kind == kind]
            if not specs:
                continue
            menu.addSection(heading)
            for d in specs:
                title = d.title if kind == "trained" or "random" in d.title else f"{d.title} (random weights)"
                act = menu.addAction(title)
                act.setToolTip(d.description)
                act.setStatusTip(d.description)
                act.setData(f"demo:{d.name}")
                act.triggered.connect(lambda _c=False, n=d.name: self.open_spec(f"demo:{n}"))

    def _loaded(self):
        return self.session.loaded

    def _on_load_cancelled(self, spec: str) -> None:
        self.statusBar().showMessage(f"Cancelled opening {spec}", 5000)

    def _on_opened(self, spec: str) -> None:
        self.settings.add_recent(spec)
        name = _display_spec(spec)
        self.setWindowTitle(f"{name} — effstudio")
        self.statusBar().showMessage(f"Opened {name}", 4000)

    def _on_load_failed(self, spec: str, message: str, kind: str) -> None:
        self.statusBar().clearMessage()
        request = self.session.requests.get(spec, {})
        if kind == "untrusted":
            if self.ask_trust(spec, message):
                self.open_spec(spec, trust=True, inputs=request.get("inputs"))
            return
        if kind == "input_shapes":
            inputs = self.ask_input_shapes(spec, message)
            if inputs:
                self.open_spec(spec, trust=request.get("trust", False), inputs=inputs)
            return
        if not os.path.exists(spec) and not spec.startswith("demo:"):
            self.settings.remove_recent(spec)
        QMessageBox.critical(self, "Cannot open model", message)

    def ask_trust(self, spec: str, message: str) -> bool:
        """Ask before unpickling: loading a pickled model runs code stored in the file."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Open an untrusted file?")
        box.setText(f"<b>{Path(spec).name}</b> is a pickled PyTorch model.")
        box.setInformativeText(
            "Opening it runs Python code stored inside the file, which can do anything your user "
            "account can do. Only continue if you made this file or trust where it came from.\n\n"
            "Safer: save the model with torch.export (.pt2), TorchScript, or as a state dict.")
        box.setDetailedText(message)
        trust = box.addButton(TRUST_BUTTON, QMessageBox.ButtonRole.AcceptRole)
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(cancel)
        box.exec()
        return box.clickedButton() is trust

    def ask_input_shapes(self, spec: str, message: str) -> dict[str, InputSpec] | None:
        """Ask for ``NAME=DIMS[:DTYPE]`` of the inputs a model does not store (None: cancelled)."""
        text = ""
        while True:
            text, ok = QInputDialog.getText(
                self, "Input shapes needed",
                f"{message}\n\nInput shapes, separated by spaces (e.g. x=1x3x224x224 or ids=1x128:int64):",
                QLineEdit.EchoMode.Normal, text)
            if not ok or not text.strip():
                return None
            try:
                return parse_input_specs(text.split())
            except EffstudioError as e:
                message = str(e)

    # --- model -> views ---------------------------------------------------------------------
    def _on_model_changed(self, graph: LayerGraph | None) -> None:
        if self._is_big(graph):  # a small graph's docks paint at once (held, they would show blank a moment)
            self._pacer.hold(MODEL_HOLD_MS)
        self._fanout.cancel()  # numbers still being handed out belong to the model before
        keep = [n for n in self.selection.names if graph is not None and n in graph]
        self.selection.set(keep, source=None)
        for panel in (self.table, self.chart, self.properties, self.module_tree):
            panel.set_graph(graph)
        if self.graph_view is not None:
            self.graph_view.set_graph(graph)
        self._update_enablement()

    def _on_metrics_changed(self, metrics: MetricsTable) -> None:
        """New numbers: the graph's colors first, then the table, the chart, the rest.  A big
        graph's panels take them one per turn of the event loop (each is 5-10 ms of Python on
        BERT-base; together one long stop), and paint once the graph has (see paint_pacer)."""
        graph = self.session.graph
        one_by_one = self._is_big(graph)
        if one_by_one:
            self._pacer.hold(MODEL_HOLD_MS)  # released in _on_graph_drawn (or after MODEL_HOLD_MS)
        log = self.actions_by_id["log_scale"].isChecked()
        steps = [lambda: (self.status.set_model(self.session.graph, metrics), self._color_graph(metrics, log),
                          self._on_graph_drawn()),  # a waiting load goes on once the graph is colored
                 lambda: self.table.set_metrics(metrics),
                 lambda: self.table.sort_by(self.current_metric, descending=True),
                 lambda: self.chart.set_view(self.current_metric, log, metrics),
                 lambda: (self.properties.set_metrics(metrics), self.module_tree.set_metrics(metrics))]
        self._fanout.run(steps, one_by_one=one_by_one, on_done=self._on_graph_drawn)

    @staticmethod
    def _is_big(graph: LayerGraph | None) -> bool:
        return graph is not None and len(graph.layers) >= STAGGER_MIN_LAYERS

    def _color_graph(self, metrics: MetricsTable, log: bool) -> None:
        if self.graph_view is not None:
            info = METRICS[self.current_metric]
            self.graph_view.set_metric(dict(metrics.column(self.current_metric)), info.label, info.unit, log=log)

    def _on_graph_drawn(self) -> None:
        """Tell a waiting load that its graph is on screen, laid out and colored; once the panels
        have their numbers too, they paint (one per turn)."""
        view = self.graph_view
        if view is not None and view.graph() is self.session.graph and view.layout_ready \
                and self.session.metrics.values:
            self.session.graph_drawn()
        if self._fanout.is_done() and (view is None or not view.is_busy()):
            self._pacer.release_soon()

    def set_metric(self, key: str) -> None:
        """Color, sort and chart by metric ``key`` (a :data:`METRICS` key)."""
        if key not in METRICS:
            return
        self.current_metric = key
        self.settings.metric = key
        idx = self.metric_combo.findData(key)
        if idx != self.metric_combo.currentIndex():
            self.metric_combo.setCurrentIndex(idx)  # calls back here
            return
        self._apply_metric()

    def _on_metric_combo(self, _index: int) -> None:
        self.set_metric(self.metric_combo.currentData())

    def _apply_metric(self) -> None:
        key = self.current_metric
        log = self.actions_by_id["log_scale"].isChecked()
        self.table.sort_by(key, descending=True)
        self.chart.set_view(key, log, self.session.metrics)
        self._color_graph(self.session.metrics, log)

    def set_log_scale(self, on: bool) -> None:
        self.settings.log_scale = bool(on)
        self._apply_metric()

    # --- latency / tasks --------------------------------------------------------------------
    def measure_latency(self) -> None:
        self.session.measure_latency()

    def fill_device_menu(self, menu: QMenu) -> None:
        self.device_menu.fill(menu)

    def _on_device_chosen(self, device: str) -> None:
        self.session.latency_device = self.settings.latency_device = device
        if self.session.loaded is not None:
            self.session.measure_latency()

    def cancel_tasks(self) -> None:
        self.session.cancel()
        self.statusBar().showMessage("Cancelling…", 3000)

    def _on_latency_state(self, state: str, detail: str) -> None:
        self.status.set_latency(state, detail, self.session.metrics)

    def _on_busy_changed(self, busy: bool) -> None:
        self.status.set_busy(busy)
        self._update_enablement()

    # --- selection actions ------------------------------------------------------------------
    def select_all(self) -> None:
        g = self.session.graph
        if g is not None:
            self.selection.set(g.names())

    def clear_selection(self) -> None:
        self.selection.clear()

    def fill_op_type_menu(self, menu: QMenu) -> None:
        menu.clear()
        g = self.session.graph
        if g is None:
            return
        counts: dict[str, int] = {}
        for lay in g.layers:
            counts[lay.op_type] = counts.get(lay.op_type, 0) + 1
        for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            act = menu.addAction(f"{op}  ({n})")
            act.setData(op)
            act.triggered.connect(lambda _c=False, o=op: self.select_op_type(o))

    def select_op_type(self, op: str) -> None:
        g = self.session.graph
        if g is not None:
            self.selection.set([lay.name for lay in g.layers if lay.op_type == op])

    def select_by_regex(self, pattern: str) -> int:
        """Select the layers whose name matches ``pattern`` (search anywhere); returns how many."""
        g = self.session.graph
        if g is None:
            return 0
        rx = re.compile(pattern)
        names = [lay.name for lay in g.layers if rx.search(lay.name)]
        self.selection.set(names)
        return len(names)

    def select_by_regex_dialog(self) -> None:
        pattern, ok = QInputDialog.getText(self, "Select by name", "Regular expression on layer names:")
        if not ok or not pattern:
            return
        try:
            n = self.select_by_regex(pattern)
        except re.error as e:
            QMessageBox.warning(self, "Select by name", f"Not a valid regular expression: {e}")
            return
        self.statusBar().showMessage(f"{n} layers match {pattern!r}", 4000)

    def select_current_subtree(self) -> None:
        g = self.session.graph
        cur = self.selection.current
        if g is not None and cur in g:
            self.module_tree.select_subtree(g.layer(cur).scope)

    # --- view actions -----------------------------------------------------------------------
    def focus_search(self) -> None:
        self.search_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search_edit.selectAll()

    def _on_search_changed(self, text: str) -> None:
        self.table.set_filter(text)  # cheap, as you type; Enter selects in the graph too

    def _on_search_return(self) -> None:
        text = self.search_edit.text()
        if not text:
            return
        try:
            names = self.graph_view.search(text) if self.graph_view is not None else None
            if names is None:
                self.select_by_regex(text)
            else:
                self.selection.set(names)
        except re.error:
            pass

    def fit_view(self) -> None:
        if self.graph_view is not None:
            self.graph_view.fit()

    def fill_theme_menu(self, menu: QMenu) -> None:
        menu.clear()
        group = QActionGroup(menu)
        for name in theme.THEMES:
            act = menu.addAction(name.capitalize())
            act.setCheckable(True)
            act.setChecked(theme.current_theme() == name)
            group.addAction(act)
            act.triggered.connect(lambda _c=False, n=name: self.set_theme(n))

    def set_theme(self, name: str) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            theme.apply_theme(app, name)
        self.settings.theme = name
        self.chart.apply_theme()
        self.properties.apply_theme()
        if self.graph_view is not None and hasattr(self.graph_view, "set_theme"):
            self.graph_view.set_theme(name)

    def fill_panels_menu(self, menu: QMenu) -> None:
        menu.clear()
        for dock in self.findChildren(QDockWidget):
            menu.addAction(dock.toggleViewAction())

    def show_about(self) -> None:
        QMessageBox.about(
            self, "About effstudio",
            f"<h3>effstudio {__version__}</h3>"
            "<p>See where a neural network's parameters, FLOPs, memory and time go, layer by layer.</p>"
            "<p>Counts are exact for what is counted (1 MAC = 2 FLOPs); ops that cannot be counted are "
            "listed, never shown as zero. Latency is measured on this machine.</p>")

    # --- window life ------------------------------------------------------------------------
    def _restore_layout(self) -> None:
        geometry = self.settings.geometry()
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.settings.window_state()
        if state is not None:
            self.restoreState(state)
        self._default_layout_pending = state is None

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._default_layout_pending:  # first run: give the docks useful sizes once shown
            self._default_layout_pending = False
            self.resizeDocks([self.table_dock], [300], Qt.Orientation.Vertical)
            if self.tree_dock is not None:
                self.resizeDocks([self.chart_dock, self.tree_dock], [440, 330], Qt.Orientation.Horizontal)
                self.resizeDocks([self.tree_dock, self.properties_dock], [260, 300], Qt.Orientation.Vertical)
            else:
                self.resizeDocks([self.chart_dock], [460], Qt.Orientation.Horizontal)
                self.resizeDocks([self.chart_dock, self.properties_dock], [480, 320], Qt.Orientation.Vertical)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.save_layout(self.saveGeometry(), self.saveState())
        self.settings.sync()
        self.session.shutdown()
        self._warm_runner.shutdown(10.0)
        self.device_menu.runner.shutdown(10.0)
        if self.graph_view is not None and hasattr(self.graph_view, "wait_idle"):
            self.graph_view.wait_idle(10.0)  # its layout worker
        super().closeEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _dropped_path(event) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _dropped_path(event)
        if path is not None:
            event.acceptProposedAction()
            QTimer.singleShot(0, lambda: self.open_spec(path))


def _dropped_path(event) -> str | None:
    md = event.mimeData()
    if not md.hasUrls():
        return None
    for url in md.urls():
        if url.isLocalFile():
            p = url.toLocalFile()
            if Path(p).is_dir() or p.lower().endswith(MODEL_SUFFIXES):
                return p
    return None


def _display_spec(spec: str) -> str:
    return spec if spec.startswith("demo:") else Path(spec).name or spec

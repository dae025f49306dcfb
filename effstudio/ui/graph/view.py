"""GraphView: the layer graph as a zoomable heatmap, collapsible by module scope.

Mouse and keys (also in the widget's tooltip):
- wheel, ``+``/``-``: zoom at the cursor; ``F``: fit; ``0``: 100 %
- middle-drag, or ``Space`` + left-drag: pan; the minimap (bottom left) also moves the view
- click: select a box (a collapsed group selects all its layers; a frame's title selects the
  scope's layers); ``Ctrl``+click: add/remove; left-drag on empty space: rubber-band select
  (``Ctrl`` adds); click on empty space: clear
- double-click a group (or click its ▸): expand; double-click a frame's title: collapse
- ``Ctrl+F``: the search box (top left); Enter searches, Esc clears
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QKeySequence, QPainter, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from effstudio.core.graph import LayerGraph
from effstudio.core.layout import HierarchicalLayout
from effstudio.core.progress import Progress
from effstudio.ui import numbers
from effstudio.ui.graph.canvas import Geometry, GraphCanvas, build_geometry
from effstudio.ui.graph.colorbar import ColorBar
from effstudio.ui.graph.colors import NEUTRAL_FILL, UNKNOWN_FILL, ColorScale, text_color
from effstudio.ui.graph.minimap import Minimap
from effstudio.ui.graph.search import SearchBox, find_layers
from effstudio.ui.selection import SelectionModel
from effstudio.ui.workers import TaskRunner

ZOOM_STEP = 1.2
MIN_SCALE, MAX_SCALE = 0.002, 4.0
# the first view of a graph too big to fit readably: box titles readable (canvas.TITLE_LOD), and
# as much of the graph as that allows (at 0.8 a BERT export showed five shape ops and nothing else)
READABLE_SCALE = 0.4
MARKER_W = 20.0  # the ▸ of a group box, from its left edge
# boxes a model opens with: about what fits a window readably (see core.layout.default_expanded)
DEFAULT_VISIBLE = 60


def layout_job(hl: HierarchicalLayout, expanded: frozenset[str] | None, progress: Progress
               ) -> tuple[Any, Geometry]:
    """Worker side: lay out (default expansion when ``expanded`` is None) and prepare drawing."""
    if expanded is None:
        progress.update(0.0, f"Grouping {len(hl.graph.layers)} layers…")
        expanded = hl.default_expanded(DEFAULT_VISIBLE)
    vg = hl.layout(expanded, progress)
    progress.update(0.95, "Preparing the drawing…")
    return vg, build_geometry(vg)


class _LazyTexts:
    """Value labels made on first use (only boxes drawn close up need one)."""

    def __init__(self, make, n: int) -> None:
        self._make, self._n = make, n
        self._done: dict[int, str] = {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> str:
        text = self._done.get(i)
        if text is None:
            text = self._done[i] = self._make(i)
        return text


class _Graphics(QGraphicsView):
    """The QGraphicsView: input handling; everything else is :class:`GraphView`'s."""

    def __init__(self, owner: GraphView) -> None:
        super().__init__(owner)
        self.owner = owner
        self.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        self.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
        self.setRubberBandSelectionMode(Qt.ItemSelectionMode.IntersectsItemShape)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState, True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setMouseTracking(True)
        self._pan_from: QPointF | None = None
        self._space = False
        self._band: QRectF | None = None
        self.rubberBandChanged.connect(self._on_band)

    # --- zoom ---------------------------------------------------------------------------------
    def current_scale(self) -> float:
        return float(self.transform().m11())

    def zoom(self, factor: float) -> None:
        s = self.current_scale()
        factor = min(MAX_SCALE / s, max(MIN_SCALE / s, factor))
        self.scale(factor, factor)
        self.owner._on_view_moved()

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom(ZOOM_STEP ** steps)
        event.accept()

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom(ZOOM_STEP)
        elif key == Qt.Key.Key_Minus:
            self.zoom(1 / ZOOM_STEP)
        elif key == Qt.Key.Key_F:
            self.owner.fit()
        elif key == Qt.Key.Key_0:
            self.zoom(1.0 / self.current_scale())
        elif key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.setDragMode(QGraphicsView.DragMode.NoDrag)
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
        elif key == Qt.Key.Key_Escape:
            self.owner.selection.clear(source=self.owner)
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
            self.viewport().unsetCursor()
        else:
            super().keyReleaseEvent(event)

    # --- mouse --------------------------------------------------------------------------------
    def mousePressEvent(self, event) -> None:
        b = event.button()
        if b == Qt.MouseButton.MiddleButton or (b == Qt.MouseButton.LeftButton and self._space):
            self._pan_from = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        if b == Qt.MouseButton.LeftButton:
            ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
            if self.owner._click(self.mapToScene(event.position().toPoint()), ctrl):
                event.accept()
                return
            self._band = None
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        if self._pan_from is not None:
            d = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(d.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(d.y()))
            event.accept()
            return
        if not event.buttons():
            self.owner._hover(self.mapToScene(event.position().toPoint()), 5.0 / self.current_scale())
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if self._pan_from is not None:
            self._pan_from = None
            cursor = Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.ArrowCursor
            self.viewport().setCursor(cursor)
            event.accept()
            return
        band = self._band
        self._band = None
        super().mouseReleaseEvent(event)
        if band is not None and event.button() == Qt.MouseButton.LeftButton and not band.isEmpty():
            self.owner._band_select(band, bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier))

    def mouseDoubleClickEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.owner._double_click(self.mapToScene(event.position().toPoint()))
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def _on_band(self, rect, _from: QPointF, _to: QPointF) -> None:
        # the rect, not the scene points: Qt reports ``_to`` one mouse move late
        if not rect.isNull():
            self._band = self.mapToScene(rect).boundingRect()

    def viewportEvent(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            text = self.owner._tooltip_at(self.mapToScene(event.pos()), 5.0 / self.current_scale())
            if text:
                QToolTip.showText(event.globalPos(), text, self.viewport())
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().viewportEvent(event)

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self.owner._on_view_moved()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.owner._on_view_moved()


class GraphView(QWidget):
    """The layer graph; see the module docstring for the controls and ``effstudio.ui.graph``
    for the API."""

    # a layout has been drawn (after set_graph, expand, collapse, search …; also when one of
    # those found nothing to lay out again)
    sig_layout_ready = Signal()

    def __init__(self, selection: SelectionModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.selection = selection
        self.setToolTip("")
        self._graph: LayerGraph | None = None
        self._hl: HierarchicalLayout | None = None
        self._geo: Geometry | None = None
        self._requested: frozenset[str] | None = None  # expansion of the last layout started
        self._gen = 0
        self._pending_center: str | None = None  # layer name or scope to center after a layout
        self._first_view = True
        self._values: dict[str, float] | None = None
        self._metric_label = ""
        self._unit = ""
        self._log = False
        self._node_values: list[float | None] = []
        self._node_unknown: list[int] = []  # per node: layers without a value
        self.scale = ColorScale("viridis")
        self._runner = TaskRunner(self)

        self.scene = QGraphicsScene(self)
        self.scene.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        self.canvas = GraphCanvas()
        self.scene.addItem(self.canvas)
        self.view = _Graphics(self)
        self.view.setScene(self.scene)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.view)
        # the legend gets a strip of its own under the graph (no height while hidden): floating
        # over the view it hid the nodes of a tall, narrow graph in a narrow window
        self.colorbar = ColorBar(self)
        self.colorbar.hide()
        legend_row = QHBoxLayout()
        legend_row.setContentsMargins(0, 0, 0, 0)
        legend_row.addStretch(1)
        legend_row.addWidget(self.colorbar)
        lay.addLayout(legend_row)

        self.search_box = SearchBox(self)
        self.search_box.sig_search.connect(self.search)
        self.search_box.sig_cleared.connect(self.view.setFocus)
        self.minimap = Minimap(self)
        self.minimap.sig_center_on.connect(self._center_on_point)
        self.minimap.hide()
        # the overview renders the whole scene: in a turn of the event loop of its own, once for
        # several changes (a new layout, its colors and selection)
        self._minimap_timer = QTimer(self)
        self._minimap_timer.setSingleShot(True)
        self._minimap_timer.setInterval(1)
        self._minimap_timer.timeout.connect(self._refresh_minimap_now)
        # a finished layout is put on screen by a timer, not in the worker's queued signal: Qt
        # handles every queued signal and repaint before it looks at timers (input included)
        # again, and the drawing joined the new model's other repaints in one long stop
        self._finished: tuple[int, Any] | None = None  # (generation, result) not yet on screen
        self._finish_timer = QTimer(self)
        self._finish_timer.setSingleShot(True)
        self._finish_timer.setInterval(1)
        self._finish_timer.timeout.connect(self._show_finished)
        self.busy = QLabel(self)
        self.busy.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.busy.setStyleSheet("QLabel { background: rgba(30,30,30,200); color: white; padding: 10px 16px;"
                                " border-radius: 8px; font-size: 13px; }")
        self.busy.hide()
        self.message = QLabel("Open a model to see its layer graph.", self)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        self.message.setStyleSheet("QLabel { color: palette(mid); font-size: 14px; }")
        QShortcut(QKeySequence.StandardKey.Find, self, self.focus_search,
                  context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        selection.sig_changed.connect(self._on_selection_changed)
        selection.sig_current_changed.connect(self._on_current_changed)
        self._apply_palette()

    # === public API ==============================================================================
    def set_graph(self, graph: LayerGraph | None) -> None:
        """Show ``graph`` (laid out in the background; ``sig_layout_ready`` when drawn).

        A new version of the same model (same ``graph.model.path``) keeps the expanded scopes
        and the view; another model opens with :func:`~effstudio.core.layout.default_expanded`.
        """
        old = self._graph
        same_model = (old is not None and graph is not None and old.model is not None
                      and graph.model is not None and old.model.path == graph.model.path)
        keep = self._requested if same_model else None
        self._graph = graph
        self._runner.cancel()
        if graph is None:
            self._gen += 1
            self._finished = None
            self._hl, self._geo, self._requested = None, None, None
            self.canvas.set_geometry(None)
            self.busy.hide()
            self.minimap.hide()
            self.colorbar.hide()
            self.message.setText("Open a model to see its layer graph.")
            self.message.show()
            return
        self.message.hide()
        self._hl = HierarchicalLayout(graph)
        self._first_view = not same_model
        self._pending_center = None
        self._start_layout(keep)  # the worker maps ``keep`` onto the new graph's scopes

    def graph(self) -> LayerGraph | None:
        return self._graph

    def set_metric(self, values: dict[str, float] | None, label: str = "", unit: str = "",
                   log: bool = False) -> None:
        """Color boxes by ``values`` (layer name -> value; a missing layer is unknown).
        Groups and frames show the sum of their layers.  ``None``: no metric (neutral fill)."""
        self._values = dict(values) if values is not None else None
        self._metric_label, self._unit, self._log = label, unit, log
        self._recolor()

    def set_colormap(self, name: str) -> None:
        self.scale.set_colormap(name)
        self._recolor()

    def fit(self) -> None:
        """Show the whole graph (never zoomed in beyond 100 %)."""
        if self._geo is None:
            return
        b = self._geo.bounds
        self.view.fitInView(b, Qt.AspectRatioMode.KeepAspectRatio)
        if self.view.current_scale() > 1.0:
            self.view.resetTransform()
            self.view.centerOn(b.center())
        self._on_view_moved()

    def search(self, pattern: str) -> list[str]:
        """Select the layers whose name or op type matches ``pattern`` (case-insensitive regex),
        expand the scopes that hide them, and center on the first.  Returns the matches."""
        if self._graph is None:
            return []
        matches = find_layers(self._graph, pattern)
        self.search_box.show_count(len(matches) if pattern.strip() else None)
        if not matches:
            return []
        self.selection.set(matches, source=self, current=matches[0])
        assert self._hl is not None
        tree = self._hl.tree
        need = {s for m in matches for s in tree.chain[m]}
        self._change_expanded(self._current_expanded() | need, center=matches[0])
        return matches

    def _shown_scope(self, scope: str) -> str | None:
        """The drawn scope that stands for ``scope`` (None: no graph, unknown or not drawn)."""
        if self._hl is None:
            return None
        try:
            return self._hl.tree.shown_scope(scope) or None
        except KeyError:
            return None

    def expand(self, scope: str) -> None:
        """Show the children of ``scope`` (a module path; its ancestors are expanded too)."""
        s = self._shown_scope(scope)
        if s:
            self._change_expanded(self._current_expanded() | set(self._hl.tree.ancestors(s)), center=s)

    def collapse(self, scope: str) -> None:
        """Show ``scope`` as one group box (its sub-scopes collapse with it)."""
        s = self._shown_scope(scope)
        if s:
            gone = {s, *self._hl.tree.descendants(s)}
            self._change_expanded(self._current_expanded() - gone, center=s)

    def expand_all_to_depth(self, depth: int) -> None:
        """Expand every scope down to ``depth`` (1: the root's children) and collapse deeper ones."""
        if self._hl is None:
            return
        tree = self._hl.tree
        self._change_expanded(frozenset(s for s in tree.scopes if tree.depth[s] <= depth), center=None)

    def expanded(self) -> frozenset[str]:
        """The expanded scopes of what is drawn (or being laid out)."""
        return self._current_expanded()

    def visible_nodes(self):
        """The drawn boxes (:class:`~effstudio.core.layout.VNode`), empty before the first layout."""
        return list(self._geo.vg.nodes) if self._geo is not None else []

    def visible_edges(self):
        return list(self._geo.vg.edges) if self._geo is not None else []

    def node_fill(self, node_id: str) -> QColor:
        """The fill of a visible box: a layer name, or a collapsed scope (its group id)."""
        i = self._node_index(node_id)
        fill = self.canvas.style.fills[i] if i < len(self.canvas.style.fills) else NEUTRAL_FILL
        return QColor(fill) if fill is not None else QColor(UNKNOWN_FILL)

    def node_value(self, node_id: str) -> float | None:
        """The value a visible box shows (a group's is the sum of its layers' known values)."""
        return self._node_values[self._node_index(node_id)] if self._node_values else None

    def node_tooltip(self, node_id: str) -> str:
        return self._node_tooltip(self._node_index(node_id))

    def is_busy(self) -> bool:
        return self._runner.is_busy() or self._finished is not None

    @property
    def layout_ready(self) -> bool:
        """The current graph is laid out and drawn (no layout running)."""
        return self._graph is not None and self._geo is not None and not self.is_busy()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until no layout runs (its result is delivered and shown); for tests and shutdown."""
        ok = self._wait(timeout_s)
        self._show_finished()
        return ok

    def focus_search(self) -> None:
        self.search_box.edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search_box.edit.selectAll()

    def center_on(self, name: str) -> None:
        """Scroll so the box showing layer or scope ``name`` is in the middle."""
        r = self._box_rect(name)
        if r is not None:
            self.view.centerOn(r.center())
            self._on_view_moved()

    # === layout =================================================================================
    def _current_expanded(self) -> frozenset[str]:
        if self._requested is not None:
            return self._requested
        if self._geo is not None:
            return self._geo.vg.expanded
        return self._hl.default_expanded(DEFAULT_VISIBLE) if self._hl is not None else frozenset()

    def _change_expanded(self, expanded, center: str | None) -> None:
        assert self._hl is not None
        new = self._hl.tree.normalize(expanded)
        if self._geo is not None and new == self._geo.vg.expanded and not self._runner.is_busy():
            if center is not None:
                self.center_on(center)
            self.sig_layout_ready.emit()  # up to date: callers waiting for a layout go on
            return
        self._pending_center = center
        self._start_layout(new)

    def _start_layout(self, expanded: frozenset[str] | None) -> None:
        assert self._hl is not None
        self._gen += 1
        self._finished = None  # an older layout not yet shown: this one replaces it
        gen = self._gen
        self._requested = expanded
        if expanded is not None and self._hl.has_tree:
            text = f"Laying out {self._hl.tree.visible_count(self._hl.tree.normalize(expanded))} nodes…"
        else:
            text = f"Laying out {len(self._hl.graph.layers)} layers…"
        self.busy.setText(text)
        self.busy.adjustSize()
        self._place_overlays()
        self.busy.show()
        self.busy.raise_()
        task = self._runner.start("graph-layout", layout_job, self._hl, expanded)
        task.sig_done.connect(lambda result, g=gen: self._on_layout_done(g, result))
        task.sig_failed.connect(lambda msg, _tb, g=gen: self._on_layout_failed(g, msg))
        task.sig_progress.connect(lambda _f, msg, g=gen: self._on_layout_progress(g, msg))

    def _on_layout_progress(self, gen: int, message: str) -> None:
        if gen == self._gen and message:
            self.busy.setText(message)
            self.busy.adjustSize()
            self._place_overlays()

    def _on_layout_failed(self, gen: int, message: str) -> None:
        if gen != self._gen:
            return
        self.busy.hide()
        self.message.setText(f"Could not lay out the graph: {message}")
        self.message.show()

    def _on_layout_done(self, gen: int, result) -> None:
        if gen != self._gen:
            return
        self._finished = (gen, result)
        self._finish_timer.start()

    def _show_finished(self) -> None:
        finished, self._finished = self._finished, None
        self._finish_timer.stop()
        if finished is None or finished[0] != self._gen:
            return
        vg, geo = finished[1]
        self._requested = vg.expanded
        self._geo = geo
        self.canvas.set_geometry(geo)
        self.scene.setSceneRect(geo.bounds)
        self._recolor(refresh_minimap=False)
        self._apply_selection()
        self.busy.hide()
        if self._first_view:
            self._first_view = False
            self._initial_view()
        elif self._pending_center is not None:
            self.center_on(self._pending_center)
        self._pending_center = None
        self._refresh_minimap()
        self._on_view_moved()
        self.sig_layout_ready.emit()

    def _initial_view(self) -> None:
        """Fit when that is readable enough; else start at the inputs (top) at a readable zoom."""
        assert self._geo is not None
        self.fit()
        if self.view.current_scale() >= 0.3:
            return
        self.view.resetTransform()
        self.view.scale(READABLE_SCALE, READABLE_SCALE)
        b = self._geo.bounds
        top = min(self._geo.vg.nodes, key=lambda n: (n.y, n.x)) if self._geo.vg.nodes else None
        vp = self.view.viewport().rect()
        cx = top.center[0] if top is not None else b.center().x()
        self.view.centerOn(QPointF(cx, b.top() + vp.height() / 2 / READABLE_SCALE))
        self._on_view_moved()

    def _wait(self, timeout_s: float) -> bool:
        from effstudio.ui.workers import wait_all

        return wait_all(timeout_s, self._runner.running())

    # === colors =================================================================================
    def _recolor(self, refresh_minimap: bool = True) -> None:
        geo = self._geo
        st = self.canvas.style
        if geo is None:
            self.colorbar.hide()
            return
        nodes = geo.vg.nodes
        vals: list[float | None] = []
        unknown: list[int] = []
        if self._values is None:
            vals = [None] * len(nodes)
            unknown = [0] * len(nodes)
        else:
            get = self._values.get
            lv = np.array([get(n, np.nan) for n in geo.layer_names], dtype=float)
            lv[~np.isfinite(lv)] = np.nan
            first = np.array([idx[0] if len(idx) else 0 for idx in geo.node_layers], dtype=int)
            single = lv[first] if len(first) else np.zeros(0)
            vals = [None if x != x else float(x) for x in single.tolist()]  # NaN -> unknown
            unknown = [int(v is None) for v in vals]
            for i in np.flatnonzero(geo.is_group):  # groups: sums over their layers
                vals[i], unknown[i] = self._sum(lv, geo.node_layers[i])
        self._node_values, self._node_unknown = vals, unknown
        if self._values is None:
            st.fills = [NEUTRAL_FILL] * len(nodes)
            st.values = [""] * len(nodes)
            st.frame_values = [""] * len(geo.vg.frames)
            st.buckets = [(NEUTRAL_FILL, list(geo.rects))]
            st.unknown_rects = []
            self.colorbar.set_scale(None, "", "", 0)
        else:
            self.scale.fit(vals, self._log)
            lut = self.scale.lut
            idx = self.scale.indices(vals)
            st.fills = [None if k is None else lut[k] for k in idx]
            st.values = _LazyTexts(lambda i: self._value_text(self._node_values[i], self._node_unknown[i]),
                                   len(vals))
            by_index: dict[int, list] = {}
            st.unknown_rects = []
            for i, k in enumerate(idx):
                if k is None:
                    st.unknown_rects.append(geo.rects[i])
                else:
                    by_index.setdefault(k, []).append(geo.rects[i])
            st.buckets = [(lut[k], rects) for k, rects in sorted(by_index.items())]
            st.frame_values = [self._value_text(*self._sum(lv, idx)) for idx in geo.frame_layers]
            self.colorbar.set_scale(self.scale, self._metric_label, self._unit,
                                    sum(1 for v in vals if v is None))
        memo: dict[int, QColor] = {}  # few distinct fills: one contrast computation each
        texts = []
        for f in st.fills:
            t = memo.get(id(f))
            if t is None:
                t = memo[id(f)] = text_color(f if f is not None else UNKNOWN_FILL)
            texts.append(t)
        st.texts = texts
        # the elided box labels stay: they depend on the layout and fonts, not on the colors
        self.canvas.update()
        self._place_overlays()
        if refresh_minimap:
            self._refresh_minimap()

    @staticmethod
    def _sum(values: np.ndarray, idx: np.ndarray) -> tuple[float | None, int]:
        """Sum of the known values at ``idx`` (None if none is known) and how many are unknown."""
        if len(idx) == 1:
            v = values[idx[0]]
            return (None, 1) if np.isnan(v) else (float(v), 0)
        sub = values[idx]
        known = ~np.isnan(sub)
        n = int(known.sum())
        return (float(sub[known].sum()) if n else None), len(idx) - n

    def _value_text(self, v: float | None, unknown: int) -> str:
        if v is None:
            return "n/a"
        text = numbers.by_unit(v, self._unit)
        return f"≥ {text}" if unknown else text

    # === selection ==============================================================================
    def _layers_of(self, i: int) -> list[str]:
        assert self._geo is not None
        return list(self._geo.vg.nodes[i].layers)

    def _select(self, names: list[str], ctrl: bool) -> None:
        if not ctrl:
            self.selection.set(names, source=self, current=names[0] if len(names) == 1 else None)
            return
        cur = set(self.selection.names)
        if set(names) <= cur:
            self.selection.set(cur - set(names), source=self)
        elif len(names) == 1:
            self.selection.toggle(names[0], source=self)
        else:
            self.selection.set(cur | set(names), source=self)

    def _click(self, pos: QPointF, ctrl: bool) -> bool:
        """A left press at scene ``pos``; True when it hit something (no rubber band then)."""
        if self._geo is None:
            return False
        h = self.canvas.header_at(pos.x(), pos.y())
        if h >= 0:
            self._select(list(self._geo.vg.frames[h].layers), ctrl)
            return True
        i = self.canvas.node_at(pos.x(), pos.y())
        if i < 0:
            if not ctrl:
                self.selection.clear(source=self)
            return False
        nd = self._geo.vg.nodes[i]
        if nd.kind == "group" and pos.x() - nd.x <= MARKER_W and not ctrl:
            self.expand(nd.scope)
            return True
        self._select(self._layers_of(i), ctrl)
        return True

    def _double_click(self, pos: QPointF) -> None:
        if self._geo is None:
            return
        h = self.canvas.header_at(pos.x(), pos.y())
        if h >= 0:
            self.collapse(self._geo.vg.frames[h].scope)
            return
        i = self.canvas.node_at(pos.x(), pos.y())
        if i >= 0 and self._geo.vg.nodes[i].kind == "group":
            self.expand(self._geo.vg.nodes[i].scope)

    def _band_select(self, rect: QRectF, ctrl: bool) -> None:
        names = [n for i in self.canvas.nodes_in(rect) for n in self._layers_of(i)]
        if ctrl:
            self.selection.add(names, source=self)
        else:
            self.selection.set(names, source=self)

    def _apply_selection(self) -> None:
        geo = self._geo
        st = self.canvas.style
        if geo is None:
            return
        names = self.selection.names
        n = len(geo.vg.nodes)
        sel = np.zeros(n, dtype=bool)
        part = np.zeros(n, dtype=bool)
        if names:
            for i, nd in enumerate(geo.vg.nodes):
                k = sum(1 for lay in nd.layers if lay in names) if nd.kind == "group" else int(nd.id in names)
                sel[i] = k == len(nd.layers)
                part[i] = 0 < k < len(nd.layers)
        st.selected, st.partial = sel, part
        st.selected_rects = [geo.rects[i] for i in np.flatnonzero(sel | part)]
        self.canvas.update()

    def _on_selection_changed(self, names, source) -> None:
        self._apply_selection()
        if source is not self and names:
            QTimer.singleShot(0, self._reveal_selection)

    def _on_current_changed(self, name) -> None:
        if name is not None:
            self._reveal(name)

    def _reveal_selection(self) -> None:
        names = self.selection.names
        if not names or self._graph is None:
            return
        cur = self.selection.current
        if cur not in names:
            cur = next((n for n in self._graph.names() if n in names), None)
        if cur is not None:
            self._reveal(cur)

    def _reveal(self, name: str) -> None:
        """Center on the box showing layer ``name`` unless it is in view already."""
        r = self._box_rect(name)
        if r is None:
            return
        seen = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
        if not seen.contains(r):
            self.view.centerOn(r.center())
            self._on_view_moved()

    def _box_rect(self, name: str) -> QRectF | None:
        """Where a layer (its box, or the group hiding it) or a scope (group or frame) is drawn."""
        geo = self._geo
        if geo is None:
            return None
        if name in geo.layer_node:
            return geo.rects[geo.layer_node[name]]
        if name in geo.index:
            return geo.rects[geo.index[name]]
        for i, f in enumerate(geo.vg.frames):
            if f.scope == name:
                return geo.frame_rects[i]
        with contextlib.suppress(KeyError):
            return geo.rects[self._node_index(name)]
        return None

    def _node_index(self, node_id: str) -> int:
        if self._geo is None:
            raise KeyError(node_id)
        i = self._geo.index.get(node_id)
        if i is None and self._hl is not None:  # a scope named by its module path
            with contextlib.suppress(KeyError):
                i = self._geo.index.get(self._hl.tree.group_ids.get(self._hl.tree.shown_scope(node_id), ""))
        if i is None:
            raise KeyError(node_id)
        return i

    # === tooltips and hover =====================================================================
    def _node_tooltip(self, i: int) -> str:
        assert self._geo is not None and self._graph is not None
        nd = self._geo.vg.nodes[i]
        v = self._node_values[i] if self._node_values else None
        unk = self._node_unknown[i] if self._node_unknown else 0
        metric = ""
        if self._values is not None:
            label = self._metric_label or "value"
            if v is None:
                which = "these layers" if nd.kind == "group" else "this layer"
                metric = f"{label}: n/a (not known for {which})"
            else:
                metric = f"{label}: {numbers.by_unit(v, self._unit)}"
                if nd.kind == "group":
                    metric = f"Σ {metric}" + (f" ({unk} of {len(nd.layers)} layers n/a)" if unk else "")
        if nd.kind == "group":
            lines = [f"<b>{nd.scope}</b>", f"collapsed scope · {len(nd.layers)} layers"]
            if metric:
                lines.append(metric)
            lines.append("<i>double-click (or click ▸) to expand</i>")
        else:
            lay = self._graph.layer(nd.id)
            shapes = ", ".join(numbers.shape(s) for s in self._graph.output_shapes(lay)) or "?"
            lines = [f"<b>{nd.id}</b>", f"{lay.op_type}" + (f" · in {lay.scope}" if lay.scope else ""),
                     f"output: {shapes}"]
            if lay.params:
                lines.append(f"params: {numbers.si(lay.params)}")
            if metric:
                lines.append(metric)
        return "<br>".join(lines)

    def _tooltip_at(self, pos: QPointF, tol: float) -> str:
        geo = self._geo
        if geo is None:
            return ""
        h = self.canvas.header_at(pos.x(), pos.y())
        if h >= 0:
            f = geo.vg.frames[h]
            st = self.canvas.style
            val = st.frame_values[h] if h < len(st.frame_values) else ""
            extra = f"<br>Σ {self._metric_label}: {val}" if val else ""
            return (f"<b>{f.scope}</b><br>{len(f.layers)} layers{extra}<br>"
                    "<i>click: select its layers · double-click: collapse</i>")
        i = self.canvas.node_at(pos.x(), pos.y())
        if i >= 0:
            return self._node_tooltip(i)
        j = self.canvas.edge_at(pos.x(), pos.y(), tol)
        if j >= 0:
            e = geo.vg.edges[j]
            head = f"<b>{e.src} → {e.dst}</b><br>" if len(e.tensors) > 1 else ""
            return head + e.shape_text.replace("\n", "<br>")
        return ""

    def _hover(self, pos: QPointF, tol: float) -> None:
        if self._geo is None:
            return
        j = -1
        if self.canvas.node_at(pos.x(), pos.y()) < 0:
            j = self.canvas.edge_at(pos.x(), pos.y(), tol)
        if j != self.canvas.style.hovered_edge:
            self.canvas.style.hovered_edge = j
            self.canvas.update()

    # === overlays ===============================================================================
    def _on_view_moved(self) -> None:
        if self._geo is not None and self.minimap.isVisible():
            self.minimap.set_viewport(self.view.mapToScene(self.view.viewport().rect()).boundingRect())

    def _center_on_point(self, p: QPointF) -> None:
        self.view.centerOn(p)
        self._on_view_moved()

    def _refresh_minimap(self) -> None:
        if self._geo is None:
            self._minimap_timer.stop()
            self.minimap.hide()
            return
        self._minimap_timer.start()

    def _refresh_minimap_now(self) -> None:
        if self._geo is None:
            self.minimap.hide()
            return
        self.minimap.refresh(self.scene, self._geo.bounds, max(120, min(320, int(self.height() * 0.4))))
        self.minimap.show()
        self._place_overlays()
        self._on_view_moved()

    def _place_overlays(self) -> None:
        m = 10
        self.search_box.adjustSize()
        self.search_box.move(m, m)
        below = self.height() - self.view.geometry().bottom() - 1  # the legend's strip, when shown
        self.minimap.move(m, self.height() - below - self.minimap.height() - m)
        self.busy.adjustSize()
        self.busy.move((self.width() - self.busy.width()) // 2, (self.height() - self.busy.height()) // 2)
        self.message.setGeometry(0, 0, self.width(), self.height())
        for w in (self.search_box, self.minimap, self.busy):
            w.raise_()

    def _apply_palette(self) -> None:
        pal = self.palette()
        bg, fg = pal.base().color(), pal.text().color()
        self.scene.setBackgroundBrush(bg)
        self.canvas.set_colors(bg, fg)

    # === Qt events ==============================================================================
    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_overlays()

    def changeEvent(self, event) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._apply_palette()
        super().changeEvent(event)

    def closeEvent(self, event) -> None:
        self._runner.cancel()
        self._wait(30.0)
        super().closeEvent(event)

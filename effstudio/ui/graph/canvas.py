"""The drawn graph: one QGraphicsItem that paints every box, frame and edge itself.

Thousands of QGraphicsItems written in Python are slow to create (seconds for 10k nodes with
their labels) and slow to repaint when all are in view, so the scene holds a single item that
draws from prepared geometry: far out, boxes are batched into one ``drawRects`` per color and
all edges are one prepared ``QPainterPath``; close in, only the boxes in the exposed rectangle
are drawn one by one with their text.  Hit tests (clicks, tooltips, the rubber band) use numpy
on the box arrays.  :func:`build_geometry` uses only reentrant value types (QPainterPath,
QRectF), so the layout worker prepares it off the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem

from effstudio.core.layout import VisibleGraph
from effstudio.ui.graph.colors import NEUTRAL_FILL, UNKNOWN_FILL

BOX_LOD = 0.28  # below this zoom boxes are batched plain rectangles
TEXT_LOD = 0.6  # from this zoom on, both label lines are drawn
TITLE_LOD = 0.3  # from this zoom on, a box shows at least its title (in a bigger font)
ARROW_LOD = 0.2
EDGE_LOD = 0.04  # further out boxes are specks; edges would only grey them over
SELECT_COLOR = QColor("#ff3b30")
HOVER_COLOR = QColor("#ff9500")
ARROW_LEN, ARROW_HALF = 9.0, 4.5
CURVE_SAMPLES = 8  # points per curve segment kept for edge hit tests
EDGE_TILE = 1500.0  # edges are drawn in tiles of this size (scene units), only tiles in view
EDGES_ONE_BY_ONE = 150  # up to this many edges in view are drawn one by one, antialiased


def _curve(path: QPainterPath, pts: list[tuple[float, float]], samples: list[tuple[float, float]]) -> None:
    """Smooth top-down curve through ``pts`` (vertical tangents), also sampled for hit tests."""
    x0, y0 = pts[0]
    path.moveTo(x0, y0)
    samples.append((x0, y0))
    for x1, y1 in pts[1:]:
        if x1 == x0:
            path.lineTo(x1, y1)
            samples.append((x1, y1))
        else:
            k = max(abs(y1 - y0) * 0.5, 20.0)
            c1, c2 = (x0, y0 + k), (x1, y1 - k)
            path.cubicTo(c1[0], c1[1], c2[0], c2[1], x1, y1)
            for i in range(1, CURVE_SAMPLES + 1):
                t = i / CURVE_SAMPLES
                u = 1 - t
                samples.append((u**3 * x0 + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t**3 * x1,
                                u**3 * y0 + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t**3 * y1))
        x0, y0 = x1, y1


@dataclass
class Geometry:
    """Everything needed to draw and hit-test one :class:`VisibleGraph`."""

    vg: VisibleGraph
    ids: list[str]
    index: dict[str, int]
    is_group: np.ndarray
    box: np.ndarray  # (n, 4) x0, y0, x1, y1
    rects: list[QRectF]
    frame_box: np.ndarray  # (m, 4)
    frame_rects: list[QRectF]
    header_rects: list[QRectF]
    edge_tiles: list[tuple[QPainterPath, QPainterPath]]  # (curves, arrow heads) per tile
    tile_box: np.ndarray  # (t, 4): what each tile's edges cover
    edge_box: np.ndarray  # (k, 4)
    edge_samples: list[np.ndarray]
    layer_node: dict[str, int]  # layer name -> index of the node that shows it
    bounds: QRectF
    layer_names: list[str]  # every layer once (node order)
    node_layers: list[np.ndarray]  # per node: indices into layer_names
    frame_layers: list[np.ndarray]  # per frame: indices into layer_names
    edge_paths: dict[int, QPainterPath] = field(default_factory=dict)  # built on demand (hover)


def build_geometry(vg: VisibleGraph) -> Geometry:
    n = len(vg.nodes)
    box = np.zeros((n, 4))
    rects = []
    for i, nd in enumerate(vg.nodes):
        box[i] = (nd.x, nd.y, nd.x + nd.w, nd.y + nd.h)
        rects.append(QRectF(nd.x, nd.y, nd.w, nd.h))
    frame_box = np.array([(f.x, f.y, f.x + f.w, f.y + f.h) for f in vg.frames]).reshape(-1, 4)
    frame_rects = [QRectF(f.x, f.y, f.w, f.h) for f in vg.frames]
    header_rects = [QRectF(f.x, f.y, f.w, f.header_h) for f in vg.frames]
    edge_box = np.zeros((len(vg.edges), 4))
    samples_all = []
    tiles: dict[tuple[int, int], tuple[QPainterPath, QPainterPath, list[float]]] = {}
    for j, e in enumerate(vg.edges):
        samples: list[tuple[float, float]] = []
        tx, ty = e.points[-1]
        sx, sy = e.points[0]
        key = (int((sx + tx) / 2 // EDGE_TILE), int((sy + ty) / 2 // EDGE_TILE))
        tile = tiles.get(key)
        if tile is None:
            tile = tiles[key] = (QPainterPath(), QPainterPath(), [np.inf, np.inf, -np.inf, -np.inf])
        _curve(tile[0], e.points, samples)
        tile[1].addPolygon(QPolygonF([QPointF(tx, ty), QPointF(tx - ARROW_HALF, ty - ARROW_LEN),
                                      QPointF(tx + ARROW_HALF, ty - ARROW_LEN), QPointF(tx, ty)]))
        arr = np.array(samples)
        samples_all.append(arr)
        edge_box[j] = (arr[:, 0].min(), arr[:, 1].min(), arr[:, 0].max(), arr[:, 1].max())
        b = tile[2]
        b[0], b[1] = min(b[0], edge_box[j, 0]), min(b[1], edge_box[j, 1])
        b[2], b[3] = max(b[2], edge_box[j, 2]), max(b[3], edge_box[j, 3] + 1)
    ids = [nd.id for nd in vg.nodes]
    layer_node = {lay: i for i, nd in enumerate(vg.nodes) for lay in nd.layers}
    layer_names = list(layer_node)
    pos = {name: k for k, name in enumerate(layer_names)}
    node_layers = [np.array([pos[n] for n in nd.layers], dtype=int) for nd in vg.nodes]
    frame_layers = [np.array([pos[n] for n in f.layers], dtype=int) for f in vg.frames]
    margin = 40.0
    bounds = QRectF(-margin, -margin, vg.width + 2 * margin, vg.height + 2 * margin)
    return Geometry(vg, ids, {k: i for i, k in enumerate(ids)},
                    np.array([nd.kind == "group" for nd in vg.nodes], dtype=bool), box, rects,
                    frame_box, frame_rects, header_rects, [(t[0], t[1]) for t in tiles.values()],
                    np.array([t[2] for t in tiles.values()]).reshape(-1, 4), edge_box, samples_all,
                    layer_node, bounds, layer_names, node_layers, frame_layers)


def _in_rect(box: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Indices of boxes that intersect the rectangle."""
    if not len(box):
        return np.zeros(0, dtype=int)
    m = (box[:, 0] <= x1) & (box[:, 2] >= x0) & (box[:, 1] <= y1) & (box[:, 3] >= y0)
    return np.flatnonzero(m)


@dataclass
class NodeStyle:
    """What the view decided about each node: fill, labels (set by the view on recolor)."""

    fills: list[QColor | None] = field(default_factory=list)  # None: unknown (hatched grey)
    texts: list[QColor] = field(default_factory=list)
    values: list[str] = field(default_factory=list)  # short value text ("2.4 M", "n/a", "")
    selected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # groups
    frame_values: list[str] = field(default_factory=list)
    buckets: list[tuple[QColor, list[QRectF]]] = field(default_factory=list)  # batched fills
    unknown_rects: list[QRectF] = field(default_factory=list)
    selected_rects: list[QRectF] = field(default_factory=list)
    hovered_edge: int = -1
    search_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


class GraphCanvas(QGraphicsItem):
    """The single scene item; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)
        self.geo: Geometry | None = None
        self.style = NodeStyle()
        self._rect = QRectF(0, 0, 1, 1)
        self._elided: dict[int, tuple[str, str]] = {}
        self.font_op = QFont()
        self.font_op.setPixelSize(12)
        self.font_op.setBold(True)
        self.font_name = QFont()
        self.font_name.setPixelSize(11)
        self.font_value = QFont()
        self.font_value.setPixelSize(10)
        self.font_title = QFont()
        self.font_title.setBold(True)
        self.background = QColor("#ffffff")
        self.foreground = QColor("#1f1f1f")

    # --- data -------------------------------------------------------------------------------
    def set_geometry(self, geo: Geometry | None) -> None:
        self.prepareGeometryChange()
        self.geo = geo
        self._rect = geo.bounds if geo is not None else QRectF(0, 0, 1, 1)
        self._elided.clear()
        self.update()

    def set_colors(self, background: QColor, foreground: QColor) -> None:
        self.background, self.foreground = QColor(background), QColor(foreground)
        self.update()

    def boundingRect(self) -> QRectF:
        return self._rect

    # --- hit tests (scene coordinates) ------------------------------------------------------
    def node_at(self, x: float, y: float) -> int:
        g = self.geo
        if g is None:
            return -1
        hit = _in_rect(g.box, x, y, x, y)
        return int(hit[0]) if len(hit) else -1

    def nodes_in(self, rect: QRectF) -> list[int]:
        g = self.geo
        if g is None:
            return []
        return [int(i) for i in _in_rect(g.box, rect.left(), rect.top(), rect.right(), rect.bottom())]

    def header_at(self, x: float, y: float) -> int:
        """The deepest frame whose header is at (x, y), or -1."""
        g = self.geo
        if g is None:
            return -1
        for i in reversed(range(len(g.header_rects))):
            if g.header_rects[i].contains(x, y):
                return i
        return -1

    def frame_at(self, x: float, y: float) -> int:
        g = self.geo
        if g is None:
            return -1
        hit = _in_rect(g.frame_box, x, y, x, y)
        return int(hit[-1]) if len(hit) else -1  # frames are sorted outer first

    def edge_at(self, x: float, y: float, tol: float) -> int:
        g = self.geo
        if g is None or not len(g.edge_box):
            return -1
        best, best_d = -1, tol
        for j in _in_rect(g.edge_box, x - tol, y - tol, x + tol, y + tol):
            s = g.edge_samples[j]
            a, b = s[:-1], s[1:]
            ab = b - a
            ap = np.array([x, y]) - a
            den = np.maximum((ab * ab).sum(1), 1e-9)
            t = np.clip((ap * ab).sum(1) / den, 0, 1)
            d = np.sqrt(((a + ab * t[:, None] - [x, y]) ** 2).sum(1)).min() if len(a) else np.inf
            if d < best_d:
                best, best_d = int(j), float(d)
        return best

    def edge_path(self, j: int) -> QPainterPath:
        g = self.geo
        assert g is not None
        p = g.edge_paths.get(j)
        if p is None:
            p = QPainterPath()
            _curve(p, g.vg.edges[j].points, [])
            g.edge_paths[j] = p
        return p

    # --- painting ---------------------------------------------------------------------------
    def _mix(self, t: float) -> QColor:
        a, b = self.background, self.foreground
        return QColor.fromRgbF(a.redF() + (b.redF() - a.redF()) * t,
                               a.greenF() + (b.greenF() - a.greenF()) * t,
                               a.blueF() + (b.blueF() - a.blueF()) * t)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        g = self.geo
        if g is None:
            return
        lod = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        er = option.exposedRect
        x0, y0, x1, y1 = er.left(), er.top(), er.right(), er.bottom()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, lod > BOX_LOD)
        frames = _in_rect(g.frame_box, x0, y0, x1, y1)
        self._paint_frames(painter, g, frames)
        self._paint_edges(painter, g, lod, x0, y0, x1, y1)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, lod > BOX_LOD)
        self._paint_headers(painter, g, lod, frames)  # over the edges that enter the frames
        if lod < BOX_LOD:
            self._paint_boxes_far(painter)
        else:
            self._paint_boxes_near(painter, g, lod, x0, y0, x1, y1)

    def _paint_frames(self, painter: QPainter, g: Geometry, frames: np.ndarray) -> None:
        border = QPen(self._mix(0.3), 1.0)
        border.setCosmetic(True)
        painter.setPen(border)
        for i in frames:
            f = g.vg.frames[i]
            painter.setBrush(self._mix(0.035 + 0.03 * min(f.depth, 5)))
            painter.drawRoundedRect(g.frame_rects[i], 8, 8)

    def _paint_headers(self, painter: QPainter, g: Geometry, lod: float, frames: np.ndarray) -> None:
        for i in frames:
            f = g.vg.frames[i]
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(self._mix(0.12 + 0.03 * min(f.depth, 5)))
            painter.drawRoundedRect(g.header_rects[i], 8, 8)
            if lod >= TEXT_LOD * 0.8:
                painter.setPen(self.foreground)
                painter.setFont(self.font_op)
                hr = g.header_rects[i].adjusted(8, 0, -8, 0)
                title = f"▾ {f.label}"
                painter.drawText(hr, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, title)
                tw = QFontMetricsF(self.font_op).horizontalAdvance(title) + 12
                info = f"{len(f.layers)} layers"
                if i < len(self.style.frame_values) and self.style.frame_values[i]:
                    info += f" · Σ {self.style.frame_values[i]}"
                painter.setFont(self.font_name)
                painter.drawText(hr.adjusted(tw, 0, 0, 0),
                                 Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                                 QFontMetricsF(self.font_name).elidedText(
                                     info, Qt.TextElideMode.ElideRight, max(0.0, hr.width() - tw)))
            elif lod >= TITLE_LOD:  # zoomed out: the scope's name alone, in a font that stays readable
                painter.setPen(self.foreground)
                hr = g.header_rects[i].adjusted(6, 0, -6, 0)
                font = QFont(self.font_op)
                font.setPixelSize(max(1, int(min(hr.height() * 0.8, 10.0 / lod))))
                painter.setFont(font)
                painter.drawText(hr, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                                 QFontMetricsF(font).elidedText(f"▾ {f.label}", Qt.TextElideMode.ElideRight,
                                                                hr.width()))

    def _paint_edges(self, painter: QPainter, g: Geometry, lod: float, x0, y0, x1, y1) -> None:
        """Few edges in view: each on its own, antialiased.  Many: the prepared tiles, without
        antialiasing (antialiased curves cost ~8x more and are sub-pixel at that zoom anyway)."""
        if lod < EDGE_LOD:
            return
        color = self._mix(0.5)
        pen = QPen(color, 1.3)
        pen.setCosmetic(True)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(pen)
        tiles = _in_rect(g.tile_box, x0, y0, x1, y1)
        shown = _in_rect(g.edge_box, x0, y0, x1, y1)
        if len(shown) <= EDGES_ONE_BY_ONE:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, lod >= TITLE_LOD)
            for j in shown:
                painter.drawPath(self.edge_path(int(j)))
        else:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
            for t in tiles:
                painter.drawPath(g.edge_tiles[t][0])
        if lod > ARROW_LOD:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(color)
            for t in tiles:
                painter.drawPath(g.edge_tiles[t][1])
        j = self.style.hovered_edge
        if 0 <= j < len(g.vg.edges):
            hp = QPen(HOVER_COLOR, 3.0)
            hp.setCosmetic(True)
            painter.setPen(hp)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(self.edge_path(j))

    def _paint_boxes_far(self, painter: QPainter) -> None:
        st = self.style
        painter.setPen(Qt.PenStyle.NoPen)
        for color, rects in st.buckets:
            painter.setBrush(color)
            painter.drawRects(rects)
        if st.unknown_rects:
            painter.setBrush(UNKNOWN_FILL)
            painter.drawRects(st.unknown_rects)
        if st.selected_rects:
            pen = QPen(SELECT_COLOR, 3.0)
            pen.setCosmetic(True)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRects(st.selected_rects)

    def _labels(self, i: int, g: Geometry) -> tuple[str, str]:
        cached = self._elided.get(i)
        if cached is None:
            nd = g.vg.nodes[i]
            w = nd.w - 16
            if nd.kind == "group":
                top, bottom = nd.label, f"{len(nd.layers)} layers"
                w -= 12
            else:
                top, bottom = nd.op_type, nd.label
            fo, fn = QFontMetricsF(self.font_op), QFontMetricsF(self.font_name)
            cached = (fo.elidedText(top, Qt.TextElideMode.ElideRight, w),
                      fn.elidedText(bottom, Qt.TextElideMode.ElideMiddle, w))
            self._elided[i] = cached
        return cached

    def _paint_boxes_near(self, painter: QPainter, g: Geometry, lod: float, x0, y0, x1, y1) -> None:
        st = self.style
        border = QPen(self._mix(0.75), 1.0)
        border.setCosmetic(True)
        sel_pen = QPen(SELECT_COLOR, 3.0)
        sel_pen.setCosmetic(True)
        partial_pen = QPen(SELECT_COLOR, 2.0, Qt.PenStyle.DashLine)
        partial_pen.setCosmetic(True)
        hatch = QBrush(QColor(0, 0, 0, 70), Qt.BrushStyle.BDiagPattern)
        text = lod >= TEXT_LOD
        for i in _in_rect(g.box, x0, y0, x1, y1):
            r = g.rects[i]
            fill = st.fills[i] if i < len(st.fills) else NEUTRAL_FILL
            group = bool(g.is_group[i])
            if group:  # a stack of cards: the collapsed scope holds many layers
                painter.setPen(border)
                painter.setBrush(self._mix(0.25))
                painter.drawRoundedRect(r.translated(4, 4), 7, 7)
            painter.setPen(border)
            painter.setBrush(fill if fill is not None else UNKNOWN_FILL)
            painter.drawRoundedRect(r, 7, 7)
            if fill is None:
                painter.setBrush(hatch)
                painter.drawRoundedRect(r, 7, 7)
            tcol = st.texts[i] if i < len(st.texts) else QColor("#111111")
            if group:
                inner = QPen(tcol, 1.0)
                inner.setCosmetic(True)
                painter.setPen(inner)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRoundedRect(r.adjusted(3, 3, -3, -3), 5, 5)
            if st.selected.size > i and st.selected[i]:
                painter.setPen(sel_pen)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRoundedRect(r.adjusted(-3, -3, 3, 3), 9, 9)
            elif st.partial.size > i and st.partial[i]:
                painter.setPen(partial_pen)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRoundedRect(r.adjusted(-3, -3, 3, 3), 9, 9)
            if not text:
                if lod >= TITLE_LOD:  # zoomed out: one big title, readable where two lines are not
                    self.font_title.setPixelSize(int(min(r.height() * 0.55, 10.0 / lod)))
                    painter.setFont(self.font_title)
                    painter.setPen(tcol)
                    title = g.vg.nodes[i].label if group else g.vg.nodes[i].op_type
                    painter.drawText(r.adjusted(6, 0, -6, 0), Qt.AlignmentFlag.AlignCenter,
                                     QFontMetricsF(self.font_title).elidedText(
                                         title, Qt.TextElideMode.ElideRight, r.width() - 12))
                continue
            top, bottom = self._labels(i, g)
            left = r.left() + (20 if group else 8)
            painter.setPen(tcol)
            if group:
                painter.setFont(self.font_op)
                painter.drawText(QRectF(r.left() + 6, r.top(), 14, r.height()),
                                 Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, "▸")
            value = st.values[i] if i < len(st.values) else ""
            top_rect = QRectF(left, r.top() + 4, r.right() - left - 6, r.height() / 2 - 4)
            bottom_rect = QRectF(left, r.center().y(), r.right() - left - 6, r.height() / 2 - 4)
            painter.setFont(self.font_op)
            painter.drawText(top_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, top)
            painter.setFont(self.font_name)
            if group and value:
                bottom = f"{bottom} · Σ {value}"
                bottom = QFontMetricsF(self.font_name).elidedText(
                    bottom, Qt.TextElideMode.ElideRight, bottom_rect.width())
            painter.drawText(bottom_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, bottom)
            if value and not group:
                fo = QFontMetricsF(self.font_op)
                room = r.right() - 6 - (left + fo.horizontalAdvance(top) + 6)
                if QFontMetricsF(self.font_value).horizontalAdvance(value) <= room:
                    painter.setFont(self.font_value)
                    painter.drawText(top_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                                     value)

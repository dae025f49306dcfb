"""A small overview of the whole graph with the viewport rectangle; click or drag to move."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QGraphicsScene, QWidget

MAX_W = 200


class Minimap(QWidget):
    """Shows a picture of ``scene`` (re-rendered by :meth:`refresh`) and the visible part of it."""

    sig_center_on = Signal(QPointF)  # scene point the user clicked or dragged to

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        self._image: QImage | None = None
        self._source = QRectF()
        self._viewport = QRectF()
        self.setFixedSize(QSize(MAX_W, MAX_W))

    def refresh(self, scene: QGraphicsScene, source: QRectF, max_h: int = 200) -> None:
        """Render ``source`` (scene coordinates) of ``scene`` into the overview picture."""
        self._source = QRectF(source)
        if source.isEmpty():
            self._image = None
            self.hide()
            return
        k = min(MAX_W / source.width(), max_h / source.height())
        w, h = max(24, int(source.width() * k)), max(24, int(source.height() * k))
        self.setFixedSize(w + 4, h + 4)
        img = QImage(w, h, QImage.Format.Format_ARGB32_Premultiplied)
        img.fill(self.palette().base().color())
        p = QPainter(img)
        scene.render(p, QRectF(0, 0, w, h), source, Qt.AspectRatioMode.IgnoreAspectRatio)
        p.end()
        self._image = img
        self.update()

    def set_viewport(self, rect: QRectF) -> None:
        self._viewport = QRectF(rect)
        self.update()

    def _to_widget(self, r: QRectF) -> QRectF:
        s = self._source
        if s.isEmpty():
            return QRectF()
        kx, ky = (self.width() - 4) / s.width(), (self.height() - 4) / s.height()
        return QRectF(2 + (r.left() - s.left()) * kx, 2 + (r.top() - s.top()) * ky,
                      r.width() * kx, r.height() * ky)

    def _to_scene(self, pos: QPointF) -> QPointF:
        s = self._source
        kx, ky = (self.width() - 4) / s.width(), (self.height() - 4) / s.height()
        return QPointF(s.left() + (pos.x() - 2) / kx, s.top() + (pos.y() - 2) / ky)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        pal = self.palette()
        p.fillRect(self.rect(), pal.base().color())
        if self._image is not None:
            p.drawImage(2, 2, self._image)
        p.setPen(QPen(pal.mid().color(), 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        vr = self._to_widget(self._viewport).intersected(QRectF(self.rect()))
        if not vr.isEmpty():
            fill = QColor("#ff3b30")
            fill.setAlpha(40)
            p.setBrush(fill)
            p.setPen(QPen(QColor("#ff3b30"), 1.5))
            p.drawRect(vr)
        p.end()

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and not self._source.isEmpty():
            self.sig_center_on.emit(self._to_scene(event.position()))

    def mouseMoveEvent(self, event) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton and not self._source.isEmpty():
            self.sig_center_on.emit(self._to_scene(event.position()))

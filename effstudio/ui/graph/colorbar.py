"""The colorbar legend in a strip under the graph: metric, scale, min/mid/max with units, n/a swatch."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QLinearGradient, QPainter, QPen
from PySide6.QtWidgets import QWidget

from effstudio.ui import numbers
from effstudio.ui.graph.colors import UNKNOWN_FILL, ColorScale

PAD = 4  # around the legend's box, in its strip under the graph


class ColorBar(QWidget):
    """Paints ``scale`` with a title; hidden while there is no metric."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)
        self.scale: ColorScale | None = None
        self.title = ""
        self.unit = ""
        self.unknown = 0  # how many shown boxes have no value
        self.setFixedSize(self.sizeHint())

    def sizeHint(self) -> QSize:
        return QSize(300 + 2 * PAD, 64 + 2 * PAD)

    def set_scale(self, scale: ColorScale | None, title: str, unit: str, unknown: int) -> None:
        self.scale, self.title, self.unit, self.unknown = scale, title, unit, unknown
        self.setVisible(scale is not None and (not scale.empty or unknown > 0))
        self.update()

    def labels(self) -> list[str]:
        """The tick labels shown (min, middle, max), for tests."""
        s = self.scale
        if s is None or s.empty:
            return []
        labels = [numbers.by_unit(s.value_at(t), self.unit) for t in (0.0, 0.5, 1.0)]
        if s.clipped_low:  # zeros have no place on a log scale: they get the lowest color
            labels[0] = "≤ " + labels[0]
        return labels

    def paintEvent(self, event) -> None:
        s = self.scale
        if s is None:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.translate(PAD, PAD)
        width = self.width() - 2 * PAD
        box = QRectF(0, 0, width, self.height() - 2 * PAD)
        pal = self.palette()
        bg = QColor(pal.window().color())
        bg.setAlpha(230)
        p.setPen(QPen(pal.mid().color(), 1))
        p.setBrush(bg)
        p.drawRoundedRect(box.adjusted(0.5, 0.5, -0.5, -0.5), 6, 6)
        fg = pal.windowText().color()
        small = QFont(self.font())
        small.setPointSizeF(max(6.5, self.font().pointSizeF() * 0.85))
        bold = QFont(self.font())
        bold.setBold(True)
        p.setPen(fg)
        p.setFont(bold)
        scale_name = "log scale" if s.log else "linear"
        head = QRectF(8, 3, width - 16, 18)
        p.drawText(head, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, self.title)
        p.setFont(small)
        p.drawText(head, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, scale_name)
        na_w = 44 if self.unknown else 0
        bar = QRectF(8, 23, width - 16 - na_w, 14)
        if not s.empty:
            grad = QLinearGradient(bar.left(), 0, bar.right(), 0)
            n = len(s.lut)
            for k in range(0, n, 8):
                grad.setColorAt(k / (n - 1), s.lut[k])
            grad.setColorAt(1.0, s.lut[-1])
            p.setPen(QPen(pal.mid().color(), 1))
            p.setBrush(QBrush(grad))
            p.drawRect(bar)
            p.setPen(fg)
            labels = self.labels()
            for t, text, align in zip((0.0, 0.5, 1.0), labels,
                                      (Qt.AlignmentFlag.AlignLeft, Qt.AlignmentFlag.AlignHCenter,
                                       Qt.AlignmentFlag.AlignRight), strict=True):
                x = bar.left() + t * bar.width()
                p.drawLine(int(x), int(bar.bottom()), int(x), int(bar.bottom() + 3))
                w = 90
                left = {Qt.AlignmentFlag.AlignLeft: x, Qt.AlignmentFlag.AlignHCenter: x - w / 2,
                        Qt.AlignmentFlag.AlignRight: x - w}[align]
                p.drawText(QRectF(left, bar.bottom() + 3, w, 18), align | Qt.AlignmentFlag.AlignTop, text)
        if self.unknown:
            sw = QRectF(width - 8 - na_w + 6, 23, na_w - 6, 14)
            p.setPen(QPen(pal.mid().color(), 1))
            p.setBrush(UNKNOWN_FILL)
            p.drawRect(sw)
            p.setBrush(QBrush(QColor(0, 0, 0, 70), Qt.BrushStyle.BDiagPattern))
            p.drawRect(sw)
            p.setPen(fg)
            p.drawText(QRectF(sw.left() - 4, sw.bottom() + 3, sw.width() + 8, 18),
                       Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, "n/a")
        p.end()

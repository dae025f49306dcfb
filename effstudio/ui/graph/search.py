"""Find layers by a regex on name or op type, and the small search box over the graph."""

from __future__ import annotations

import re

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QWidget

from effstudio.core.graph import LayerGraph


def find_layers(graph: LayerGraph, pattern: str) -> list[str]:
    """Layers whose name or op type matches ``pattern`` (a case-insensitive regex; text that
    is not a valid regex is matched literally), in graph order.  Empty pattern: none."""
    if not pattern.strip():
        return []
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error:
        rx = re.compile(re.escape(pattern), re.IGNORECASE)
    return [lay.name for lay in graph.layers if rx.search(lay.name) or rx.search(lay.op_type)]


class SearchBox(QWidget):
    """A line edit with a match count; Enter searches, Esc clears and gives focus back."""

    sig_search = Signal(str)
    sig_cleared = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText("Find layers: name or op regex (Ctrl+F)")
        self.edit.setClearButtonEnabled(True)
        self.edit.setMinimumWidth(260)
        self.count = QLabel(self)
        self.count.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addWidget(self.edit)
        lay.addWidget(self.count)
        self.edit.returnPressed.connect(lambda: self.sig_search.emit(self.edit.text()))
        self.setAutoFillBackground(False)

    def show_count(self, n: int | None) -> None:
        if n is None:
            text = ""
        else:
            text = "no match" if n == 0 else f"{n} match" + ("es" if n > 1 else "")
        self.count.setText(text)
        self.adjustSize()

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self.edit.clear()
            self.show_count(None)
            self.sig_cleared.emit()
            return
        super().keyPressEvent(event)

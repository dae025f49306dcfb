"""Repaint a new model's panels one per turn of the event loop instead of all in one stop.

A new graph or new numbers change every panel at once; Qt then paints the whole window in one
turn (the table, chart, tree and graph together: 20-40 ms on BERT-base, longer next to a busy
worker), and a turn that long is a stutter.  Spreading the changes over turns is not enough on
its own: a QGraphicsScene (the graph's, the chart's) that processes its changed items sends the
window's pending paint at once (``dispatchPendingUpdateRequests``), so whatever else is dirty
then is painted in that same turn.  :class:`PaintPacer` turns the panels' painting off while
their data changes (``hold``) and back on one panel per turn (:data:`RELEASE_GAP_MS` apart, so
other timers and input run in between).  Only painting waits: what the panels hold is up to date.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QWidget

RELEASE_GAP_MS = 12  # between two panels' paints: more than a 10 ms timer's period, so one fires in between


class PaintPacer(QObject):
    """Holds back painting of ``widgets`` and lets them paint one per turn, in the given order."""

    def __init__(self, widgets: Sequence[QWidget], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._widgets = list(widgets)
        self._held: list[QWidget] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._release_next)

    def hold(self, release_after_ms: int = 1) -> None:
        """Stop the panels painting; from ``release_after_ms`` on they paint again, one per turn.
        A hold while holding moves the start (a new graph's numbers follow it: one paint, with them)."""
        for w in self._widgets:
            # a hidden panel paints when shown; one whose painting someone else turned off is not ours
            if w not in self._held and w.isVisible() and w.updatesEnabled():
                w.setUpdatesEnabled(False)
                self._held.append(w)
        self._held.sort(key=self._widgets.index)
        if self._held:
            self._timer.start(release_after_ms)

    def release_soon(self, after_ms: int = 1) -> None:
        """Start letting the held panels paint in ``after_ms`` (one per turn from then on)."""
        if self._held:
            self._timer.start(after_ms)

    def is_holding(self) -> bool:
        return bool(self._held)

    def release_all(self) -> None:
        """Let every held panel paint (in the next paint of the window)."""
        self._timer.stop()
        held, self._held = self._held, []
        for w in held:
            w.setUpdatesEnabled(True)

    def _release_next(self) -> None:
        if not self._held:
            return
        self._held.pop(0).setUpdatesEnabled(True)  # calls update(): it paints in this turn's repaint
        if self._held:
            self._timer.start(RELEASE_GAP_MS)  # a timer, not a posted call: due timers get a turn between paints

"""The one layer selection shared by the graph, the table and the chart (keyed by layer name)."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import QObject, Signal


class SelectionModel(QObject):
    """A set of layer names plus the 'current' layer (the one whose properties are shown).

    Views call :meth:`set` / :meth:`toggle` and listen to ``sig_changed``; they never keep
    their own copy as the truth.  Setting an equal selection emits nothing (no feedback loops).
    """

    sig_changed = Signal(object, object)  # (frozenset of names, source object or None)
    sig_current_changed = Signal(object)  # name or None

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._names: frozenset[str] = frozenset()
        self._current: str | None = None

    @property
    def names(self) -> frozenset[str]:
        return self._names

    @property
    def current(self) -> str | None:
        return self._current

    def set(self, names: Iterable[str], source: object = None, current: str | None = None) -> None:
        new = frozenset(names)
        if current is None and len(new) == 1:
            current = next(iter(new))
        if new != self._names:
            self._names = new
            self.sig_changed.emit(new, source)
        if current is not None and current != self._current:
            self._current = current
            self.sig_current_changed.emit(current)

    def toggle(self, name: str, source: object = None) -> None:
        self.set(self._names ^ {name}, source, current=name)

    def add(self, names: Iterable[str], source: object = None) -> None:
        self.set(self._names | set(names), source)

    def clear(self, source: object = None) -> None:
        self.set((), source)

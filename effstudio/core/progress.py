"""Progress reporting and cancellation for long core functions.

Every long core function takes ``progress: Progress`` and calls :meth:`Progress.update`
now and then; ``update`` raises :class:`Cancelled` once cancellation was requested, so
work stops at the next checkpoint.  The UI adapts this to Qt signals in one place
(``ui/workers.py``), the CLI to a console bar, tests pass a plain ``Progress()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Cancelled(Exception):
    """Raised inside a core function when its caller asked it to stop."""


class Progress:
    """A fraction in [0, 1] with a message; thread-safe cancel flag.

    ``callback(fraction, message)`` is called on every update from the worker thread.
    ``sub(start, end)`` gives a child that maps its own [0, 1] into [start, end] of
    this one, so nested steps report one smooth bar.
    """

    def __init__(self, callback: Callable[[float, str], None] | None = None) -> None:
        self._callback = callback
        self._cancel = threading.Event()
        self.fraction = 0.0
        self.message = ""

    def update(self, fraction: float | None = None, message: str | None = None) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        if fraction is not None:
            self.fraction = min(1.0, max(0.0, float(fraction)))
        if message is not None:
            self.message = message
        if self._callback is not None:
            self._callback(self.fraction, self.message)

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._cancel.is_set():
            raise Cancelled()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def sub(self, start: float, end: float) -> Progress:
        return _SubProgress(self, start, end)


class _SubProgress(Progress):
    def __init__(self, parent: Progress, start: float, end: float) -> None:
        # not Progress.__init__: its Event would be replaced by the parent's at once
        self._callback = None
        self.fraction = 0.0
        self.message = ""
        self._parent = parent
        self._start = start
        self._end = end
        self._cancel = parent._cancel  # share the flag: cancelling either cancels both

    def update(self, fraction: float | None = None, message: str | None = None) -> None:
        if fraction is not None:
            self.fraction = min(1.0, max(0.0, float(fraction)))
        mapped = self._start + (self._end - self._start) * self.fraction
        self._parent.update(mapped, message)


NULL_PROGRESS_FACTORY = Progress

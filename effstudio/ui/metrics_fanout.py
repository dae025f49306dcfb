"""Hand new numbers to the panels in steps, one step per turn of the event loop for a big graph.

Each panel takes 5-10 ms of Python to take in BERT-base's numbers (table, chart, tree, ...);
done in one go that is one long stop of the event loop.  :class:`StepFanout` runs the first step
at once and each later one from a 1 ms timer, so due timers and input get a turn in between.
A newer run (new numbers, another model) drops the steps of the one before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject, QTimer

STAGGER_MIN_LAYERS = 200  # from this many layers on, new numbers reach the panels one step per turn


class StepFanout(QObject):
    """Runs a list of steps in order, at once or one per turn; a new :meth:`run` or :meth:`cancel`
    drops the steps still waiting."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._job = 0
        self._done = 0  # the last job whose every step ran

    def run(self, steps: Sequence[Callable[[], object]], *, one_by_one: bool,
            on_done: Callable[[], object] | None = None) -> None:
        """Run ``steps``: the first now, the rest now too or (``one_by_one``) one per turn;
        ``on_done`` after the last (not if a newer run or :meth:`cancel` came first)."""
        self._job += 1
        job = self._job
        steps = list(steps)

        def go(i: int) -> None:
            while i < len(steps):
                if job != self._job:
                    return  # newer numbers or another model: their own steps
                steps[i]()
                i += 1
                if one_by_one and i < len(steps):
                    # a timer, not a posted call: due timers and input go first; none once this object is gone
                    QTimer.singleShot(1, self, lambda i=i: go(i))
                    return
            if job == self._job:
                self._done = job
                if on_done is not None:
                    on_done()

        go(0)

    def cancel(self) -> None:
        """Drop the steps still waiting (their numbers belong to a model that is gone)."""
        self._job += 1

    def is_done(self) -> bool:
        """True when the last run's every step ran (and nothing was cancelled since)."""
        return self._done == self._job

"""The one place that adapts core ``fn(..., progress)`` functions to Qt (Orange3's pattern).

:class:`TaskRunner` runs a function on ``QThreadPool.globalInstance()`` and gives back a
:class:`Task` whose signals are delivered on the GUI thread:

- ``sig_progress(fraction, message)`` — throttled; from :class:`~effstudio.core.progress.Progress`
- ``sig_partial(obj)`` — an intermediate result the function published with ``publish(obj)``
- ``sig_done(result)`` / ``sig_failed(message, traceback)`` / ``sig_cancelled()`` — exactly one
- ``sig_finished()`` — after any of the three

Starting a task of a kind that is already running cancels the old one; a cancelled task never
delivers partial or final results, even if its function ran to the end.  The function never
touches a widget: it gets plain arguments, a ``progress`` and (if it asks for it) ``publish``.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QRunnable, QThreadPool, Signal, Slot

from effstudio.core.errors import EffstudioError
from effstudio.core.progress import Cancelled, Progress

_PROGRESS_INTERVAL_S = 0.05  # at most ~20 progress signals a second reach the GUI
# While a worker runs Python, the GUI thread waits up to the interpreter's switch interval (5 ms
# by default) each time it takes the GIL back, and painting a table calls into Python hundreds of
# times: a 13 ms paint took 90 ms next to a busy worker, 17 ms with this interval.
GUI_SWITCH_INTERVAL_S = 0.001

_LIVE: set[Task] = set()  # every task started and not yet finished (on the GUI side)


def live_tasks() -> list[Task]:
    """Tasks started and not yet finished (their final signal not yet delivered)."""
    return list(_LIVE)


class Task(QObject):
    """One run of a function in the thread pool. Created by :meth:`TaskRunner.start`."""

    sig_progress = Signal(float, str)
    sig_partial = Signal(object)
    sig_done = Signal(object)
    sig_failed = Signal(str, str)  # one-line message, traceback
    sig_cancelled = Signal()
    sig_finished = Signal()
    # internal: emitted from the worker thread, received on the GUI thread (queued)
    _sig_outcome = Signal(str, object)
    _sig_progress_raw = Signal(float, str)
    _sig_partial_raw = Signal(object)

    def __init__(self, kind: str, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.kind = kind
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.progress = Progress(self._on_progress)
        self.error: BaseException | None = None  # the exception of a failed task
        self.result: Any = None
        self.state = "pending"  # pending -> running -> done | failed | cancelled
        self._worker_done = threading.Event()
        self._last_emit = 0.0
        self._sig_outcome.connect(self._deliver)
        self._sig_progress_raw.connect(self._forward_progress)
        self._sig_partial_raw.connect(self._forward_partial)

    # --- called from the GUI thread -----------------------------------------------------
    def cancel(self) -> None:
        """Ask the function to stop at its next ``progress.update``; its result is dropped."""
        self.progress.cancel()

    @property
    def cancelled(self) -> bool:
        return self.progress.cancelled

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the worker returned (its signals may still be queued)."""
        return self._worker_done.wait(timeout_s)

    @Slot(float, str)
    def _forward_progress(self, fraction: float, message: str) -> None:
        if not self.cancelled and not self.finished:
            self.sig_progress.emit(fraction, message)

    @Slot(object)
    def _forward_partial(self, obj: object) -> None:
        if not self.cancelled and not self.finished:
            self.sig_partial.emit(obj)

    @Slot(str, object)
    def _deliver(self, outcome: str, payload: object) -> None:
        if self.finished:
            return
        if self.cancelled:
            outcome = "cancelled"
        self.state = outcome
        _LIVE.discard(self)
        if outcome == "done":
            self.result = payload
            self.sig_done.emit(payload)
        elif outcome == "failed":
            message, tb = payload  # type: ignore[misc]
            self.sig_failed.emit(message, tb)
        else:
            self.sig_cancelled.emit()
        self.sig_finished.emit()

    # --- called from the worker thread --------------------------------------------------
    def _on_progress(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last_emit >= _PROGRESS_INTERVAL_S or fraction >= 1.0:
            self._last_emit = now
            self._sig_progress_raw.emit(fraction, message)

    def _publish(self, obj: object) -> None:
        self.progress.check()
        self._sig_partial_raw.emit(obj)

    def _run(self) -> None:
        self.state = "running"
        try:
            kwargs = dict(self.kwargs)
            params = inspect.signature(self.fn).parameters
            if "progress" in params:
                kwargs["progress"] = self.progress
            if "publish" in params:
                kwargs["publish"] = self._publish
            result = self.fn(*self.args, **kwargs)
        except Cancelled:
            self._sig_outcome.emit("cancelled", None)
        except BaseException as e:  # report everything; the GUI decides what to show
            self.error = e
            message = str(e) if isinstance(e, EffstudioError) else f"{type(e).__name__}: {e}"
            self._sig_outcome.emit("failed", (message.splitlines()[0] if message else type(e).__name__,
                                              traceback.format_exc()))
        else:
            self._sig_outcome.emit("done", result)
        finally:
            self._worker_done.set()

    def __repr__(self) -> str:
        return f"<Task {self.kind} {getattr(self.fn, '__name__', self.fn)} {self.state}>"


class _Runnable(QRunnable):
    def __init__(self, task: Task) -> None:
        super().__init__()
        self._task = task
        self.setAutoDelete(True)

    def run(self) -> None:
        self._task._run()


class TaskRunner(QObject):
    """Starts tasks in the global thread pool, one running task per kind."""

    sig_started = Signal(object)  # Task
    sig_idle = Signal()  # no task of this runner is running any more

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._current: dict[str, Task] = {}
        if sys.getswitchinterval() > GUI_SWITCH_INTERVAL_S:
            sys.setswitchinterval(GUI_SWITCH_INTERVAL_S)

    def start(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Task:
        """Run ``fn(*args, **kwargs, progress=..., publish=...)`` off the GUI thread.

        ``progress``/``publish`` are passed only if ``fn`` takes them.  A running task of the
        same ``kind`` is cancelled first.
        """
        old = self._current.get(kind)
        if old is not None and not old.finished:
            old.cancel()
        task = Task(kind, fn, args, kwargs)
        task.sig_finished.connect(lambda t=task: self._on_finished(t))
        self._current[kind] = task
        _LIVE.add(task)
        QThreadPool.globalInstance().start(_Runnable(task))
        self.sig_started.emit(task)
        return task

    def current(self, kind: str) -> Task | None:
        task = self._current.get(kind)
        return task if task is not None and not task.finished else None

    def running(self) -> list[Task]:
        return [t for t in self._current.values() if not t.finished]

    def is_busy(self) -> bool:
        return bool(self.running())

    def cancel(self, kind: str | None = None) -> None:
        """Cancel the task of ``kind``, or every task of this runner."""
        for k, t in list(self._current.items()):
            if kind is None or k == kind:
                t.cancel()

    def _on_finished(self, task: Task) -> None:
        if self._current.get(task.kind) is task:
            del self._current[task.kind]
        if not self.running():
            self.sig_idle.emit()

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Cancel everything and wait for it; True when nothing is left running."""
        tasks = list(self._current.values())
        self.cancel()
        return wait_all(timeout_s, tasks)


def wait_all(timeout_s: float = 30.0, tasks: list[Task] | None = None) -> bool:
    """Wait for ``tasks`` (default: every live task) to return, then deliver their signals."""
    tasks = live_tasks() if tasks is None else tasks
    deadline = time.monotonic() + timeout_s
    ok = all(t.wait(max(0.0, deadline - time.monotonic())) for t in tasks)
    app = QCoreApplication.instance()
    if app is not None:
        # the outcome signals are queued on the GUI thread: deliver them now
        for _ in range(3):
            QCoreApplication.sendPostedEvents()
            app.processEvents()
    return ok and not any(t in _LIVE for t in tasks)

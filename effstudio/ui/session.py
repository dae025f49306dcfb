"""The open model as the window sees it: load/profile tasks, the current graph and its numbers.

Views subscribe to the signals; none of them keeps its own copy of the model.  A load that
fails or is cancelled leaves the previous model in place.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from effstudio.core.errors import InputShapeError, UntrustedPickleError
from effstudio.core.graph import LayerGraph
from effstudio.core.inputs import InputSpec
from effstudio.core.metrics.table import MetricsTable
from effstudio.core.model import LoadedModel
from effstudio.ui import pipeline
from effstudio.ui.workers import Task, TaskRunner

LOAD = "load"  # task kinds: one running task per kind
LATENCY = "latency"


class ModelSession(QObject):
    """Holds the current :class:`LoadedModel` and :class:`MetricsTable`; runs the work that changes them."""

    sig_model_changed = Signal(object)  # LayerGraph (a new model is shown; metrics follow)
    sig_metrics_changed = Signal(object)  # MetricsTable (static, then with latency merged in)
    sig_load_failed = Signal(str, str, str)  # spec, one-line message, kind: "untrusted" | "input_shapes" | "error"
    sig_load_cancelled = Signal(str)
    sig_opened = Signal(str)  # spec: the model is shown with its static numbers
    sig_latency_state = Signal(str, str)  # "measuring" | "done" | "failed" | "cancelled", detail
    sig_progress = Signal(float, str)
    sig_busy_changed = Signal(bool)

    def __init__(self, runner: TaskRunner | None = None, parent: QObject | None = None,
                 open_fn: Callable[..., object] = pipeline.open_and_profile,
                 measure_fn: Callable[..., object] = pipeline.measure) -> None:
        super().__init__(parent)
        self.runner = runner or TaskRunner(self)
        self._open_fn = open_fn
        self._measure_fn = measure_fn
        self.spec: str | None = None
        self.loaded: LoadedModel | None = None
        self._preview_graph: LayerGraph | None = None  # see _on_graph_shown
        self._preview_task: Task | None = None
        self._drawn = None  # threading.Event of the graph shown last, until it is drawn
        self.wait_for_draw = False  # True: a view calls graph_drawn() when it has drawn a new graph
        self.metrics = MetricsTable()
        self.latency_result: object = None
        self.latency_state = "none"  # none | measuring | done | failed | cancelled
        self.latency_device = "cpu"  # measure_latency's device for the next measurement
        self._timing_task: Task | None = None
        self.requests: dict[str, dict] = {}  # spec -> the trust/inputs it was last opened with
        self.runner.sig_started.connect(lambda _t: self.sig_busy_changed.emit(True))
        self.runner.sig_idle.connect(lambda: self.sig_busy_changed.emit(False))

    @property
    def graph(self) -> LayerGraph | None:
        """The graph on screen: the loaded model's, or a new one shown while its weights load."""
        if self._preview_graph is not None:
            return self._preview_graph
        return self.loaded.graph if self.loaded is not None else None

    def is_busy(self) -> bool:
        return self.runner.is_busy()

    # --- opening ----------------------------------------------------------------------------
    def open(self, spec: str, *, trust: bool = False, inputs: dict[str, InputSpec] | None = None,
             latency: bool = True) -> Task:
        """Load ``spec`` in the background; the current model stays until the new one is counted."""
        self.runner.cancel(LATENCY)
        self.requests[spec] = {"trust": trust, "inputs": dict(inputs or {})}
        kwargs: dict = {"trust": trust, "latency": latency, **self._device_kwargs()}
        if inputs:
            kwargs["inputs"] = dict(inputs)
        task = self.runner.start(LOAD, self._open_fn, spec, **kwargs)
        task.sig_progress.connect(self.sig_progress)
        task.sig_partial.connect(lambda part, t=task: self._on_partial(t, part))
        task.sig_done.connect(lambda measured, t=task: self._on_measured(t, measured))
        task.sig_failed.connect(lambda msg, _tb, t=task, s=spec: self._on_failed(t, s, msg))
        task.sig_cancelled.connect(lambda t=task, s=spec: self._on_cancelled(t, s))
        return task

    def _on_partial(self, task: Task, part: object) -> None:
        if isinstance(part, pipeline.GraphShown):
            self._on_graph_shown(task, part)
        else:
            self._on_opened(task, part)  # type: ignore[arg-type]

    def _on_graph_shown(self, task: Task, shown: pipeline.GraphShown) -> None:
        """The new graph with its static numbers, while its weights are still being read: the
        views show it; ``loaded`` is None until :class:`~pipeline.Opened` (restored on failure)."""
        before = self._preview_task
        if before is not None and getattr(before, "preview", None) is not None:
            task.preview, before.preview = before.preview, None  # what was there before that one
        else:
            task.preview = (self.spec, self.loaded, self.metrics, self.latency_result, self.latency_state)
        self._preview_task = task
        self.loaded = None
        self._preview_graph = shown.graph
        self.metrics = shown.metrics
        self.latency_result = None
        self._drawn = shown.drawn
        self.sig_model_changed.emit(shown.graph)
        # the numbers in a later turn of the event loop: two short stops instead of one long one.
        # A timer, not a posted call: Qt handles every posted event (the new graph's repaints among
        # them) before it looks at due timers again, so posted work piles up into one long stop
        QTimer.singleShot(1, lambda: self._show_preview_metrics(shown))

    def _show_preview_metrics(self, shown: pipeline.GraphShown) -> None:
        if self._preview_graph is not shown.graph:
            return  # replaced or dropped meanwhile
        self.sig_metrics_changed.emit(self.metrics)
        if not self.wait_for_draw:
            self.graph_drawn()

    def graph_drawn(self) -> None:
        """The window drew the graph shown last: the load goes on (it waits for this, see
        :class:`~effstudio.ui.pipeline.GraphShown`).  Views that draw asynchronously call it
        when they are done; otherwise it is called once the numbers are shown."""
        if self._drawn is not None:
            self._drawn.set()
            self._drawn = None

    def _on_opened(self, task: Task, opened: pipeline.Opened) -> None:
        self._timing_task = task  # this task goes on to measure the new model's latency
        task.opened_shown = True
        shown = self._preview_graph is opened.loaded.graph and self.metrics is opened.metrics
        self._preview_graph = None
        self._preview_task = None
        task.preview = None
        self.spec = opened.spec
        self.loaded = opened.loaded
        self.metrics = opened.metrics
        self.latency_result = None
        if not shown:  # already on screen from GraphShown otherwise
            self.sig_model_changed.emit(opened.loaded.graph)
            self.sig_metrics_changed.emit(self.metrics)
        self.sig_opened.emit(opened.spec)
        self._set_latency_state("measuring", "")

    def _drop_preview(self, task: Task) -> None:
        """A load that showed its graph failed or was cancelled: show the previous model again."""
        preview = getattr(task, "preview", None)
        if preview is None or task is not self._preview_task:
            return
        task.preview = None
        self._preview_task = None
        self._preview_graph = None
        self.spec, self.loaded, self.metrics, self.latency_result, self.latency_state = preview
        self.sig_model_changed.emit(self.graph)
        self.sig_metrics_changed.emit(self.metrics)

    def _on_failed(self, task: Task, spec: str, message: str) -> None:
        if task is self._timing_task:  # the model opened; only timing it failed
            self._set_latency_state("failed", message)
        elif task.kind == LOAD and not getattr(task, "opened_shown", False):
            self._drop_preview(task)
            kind = "untrusted" if isinstance(task.error, UntrustedPickleError) else \
                "input_shapes" if isinstance(task.error, InputShapeError) else "error"
            self.sig_load_failed.emit(spec, message, kind)

    def _on_cancelled(self, task: Task, spec: str) -> None:
        if task is self._timing_task:
            self._set_latency_state("cancelled", "")
        elif task.kind == LOAD and not getattr(task, "opened_shown", False):
            self._drop_preview(task)
            self.sig_load_cancelled.emit(spec)

    # --- latency ----------------------------------------------------------------------------
    def measure_latency(self) -> Task | None:
        """Measure the current model's latency again."""
        if self.loaded is None:
            return None
        if self._timing_task is not None:  # a load task still timing the model: stop it quietly
            self._timing_task.opened_shown = True
            self._timing_task.cancel()
        task = self.runner.start(LATENCY, self._measure_fn, self.loaded, **self._device_kwargs())
        self._timing_task = task
        task.sig_progress.connect(self.sig_progress)
        task.sig_done.connect(lambda measured, t=task: self._on_measured(t, measured))
        task.sig_failed.connect(lambda msg, _tb, t=task: self._on_failed(t, "", msg))
        task.sig_cancelled.connect(lambda t=task: self._on_cancelled(t, ""))
        self._set_latency_state("measuring", "")
        return task

    def _device_kwargs(self) -> dict:
        # passed only when not the CPU: the open/measure functions' defaults
        return {} if self.latency_device == "cpu" else {"device": self.latency_device}

    def _on_measured(self, task: Task, measured: pipeline.Measured | None) -> None:
        if task is not self._timing_task:
            return
        self._timing_task = None
        if measured is None:
            self._set_latency_state("none", "")
            return
        self.latency_result = measured.result
        old = self.metrics  # a re-measurement replaces the old measured columns whole
        base = MetricsTable({k: v for k, v in old.values.items() if k not in measured.metrics.values},
                            dict(old.totals), list(old.uncounted_ops), dict(old.notes))
        self.metrics = base.merge(measured.metrics)
        self.sig_metrics_changed.emit(self.metrics)
        self._set_latency_state("done", "")

    def _set_latency_state(self, state: str, detail: str) -> None:
        if state in ("failed", "cancelled"):
            self._timing_task = None
        self.latency_state = state
        self.sig_latency_state.emit(state, detail)

    def cancel(self) -> None:
        self.runner.cancel()

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        return self.runner.shutdown(timeout_s)

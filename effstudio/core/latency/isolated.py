"""Measure an ONNX model's latency in a child process, as the desktop app does.

Timing in a thread of the app's own process cost the window its smoothness: onnxruntime's
``end_profiling``, parsing its profile and the attribution to layers are long calls that hold
the GIL (100-350 ms of frozen window on BERT-base), and onnxruntime's threads took both cores
of a small machine from the GUI thread.  In a child process they cannot hold the GUI's GIL, and
the child runs at a lower CPU priority (:data:`CHILD_NICE`), so when both want a core the GUI
thread goes first; with the window idle the child has the machine to itself and times as before.

The caller's :class:`~effstudio.core.progress.Progress` keeps working across the boundary: the
child sends progress over a pipe, the calling thread forwards it, and a cancel terminates the
child.  Torch models are timed in the calling thread (a module cannot be handed to another
process without pickling it).  The CLI times in its own process (``measure_latency``): nothing
there needs to stay responsive.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.latency.result import LatencyResult
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

CHILD_NICE = 10  # the measuring process's niceness: the GUI's threads are scheduled first
PROCESS_NAME = "effstudio-latency"  # the measuring child, as multiprocessing names it
POLL_S = 0.05  # how often the calling thread looks for progress and for a cancel
PROGRESS_INTERVAL_S = 0.05  # the child sends at most ~20 progress messages a second
STOP_WAIT_S = 2.0  # after a cancel: how long the child may take to end on SIGTERM before SIGKILL


@dataclass
class _Job:
    """What the child needs: plain data only (pickled into a fresh interpreter)."""

    path: str  # the model's path, for messages
    format: str
    source: str  # the file onnxruntime loads (the model's own, or a copy in the scratch folder)
    producers: dict[str, str]  # tensor -> layer that produces it (attributing node times)
    names: list[str]  # layers in graph order
    inputs: dict[str, np.ndarray]
    options: dict[str, Any]  # measure_latency's keywords: device, threads, runs, budget_s, per_layer, flops


class _Layers:
    """The two things attributing runtime-node times needs of a :class:`LayerGraph`, without
    sending the whole graph to the child."""

    def __init__(self, producers: dict[str, str], names: list[str]) -> None:
        self._producers, self._names = producers, names
        self._set = set(names)

    def producers(self) -> dict[str, str]:
        return self._producers

    def names(self) -> list[str]:
        return self._names

    def __contains__(self, name: object) -> bool:
        return name in self._set


def import_ahead() -> None:
    """Import what the measurement needs in this process (numpy's random module makes the example
    inputs), for a caller with a quieter moment than the start of the measurement."""
    import numpy.random  # noqa: F401


class MeasuringProcess:
    """A child process for one measurement, started ahead of it.

    Its interpreter starts and imports onnxruntime (about 0.5 s of CPU, at the lower priority)
    while the caller does other work, e.g. while the GUI loads and draws a model; the
    measurement then starts at once.  Unused, :meth:`close` ends it.
    """

    def __init__(self, nice: int = CHILD_NICE) -> None:
        ctx = multiprocessing.get_context("spawn")  # forking a process that runs Qt threads is unsafe
        self._conn, child_end = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child_end, nice), name=PROCESS_NAME,
                                 daemon=True)
        self._proc.start()
        child_end.close()  # EOF on our end once the child is gone
        self.pid = self._proc.pid
        _lower_priority(self.pid, nice)  # already for its start-up; the child repeats it itself

    def measure(self, job: _Job, progress: Progress) -> LatencyResult:
        """Send ``job``, forward the child's progress, return its result; a cancel (or any error)
        ends the child.  One measurement per process."""
        try:
            self._conn.send(job)
            while True:
                progress.check()  # Cancelled -> finally: the child is terminated
                if not self._conn.poll(POLL_S):
                    if not self._proc.is_alive() and not self._conn.poll(0):
                        raise self._died()
                    continue
                try:
                    kind, *payload = self._conn.recv()
                except (EOFError, OSError):
                    raise self._died() from None
                if kind == "progress":
                    progress.update(*payload)
                elif kind == "done":
                    return LatencyResult.from_json(payload[0])
                elif kind == "error":
                    raise EffstudioError(payload[0])
                else:
                    raise RuntimeError(f"latency measurement failed in its process:\n{payload[0]}")
        finally:
            self.close()

    def _died(self) -> EffstudioError:
        self._proc.join(STOP_WAIT_S)
        return EffstudioError("the latency measurement process ended unexpectedly "
                              f"(exit code {self._proc.exitcode})")

    def close(self) -> None:
        """End the child (if it still runs) and wait for it; safe to call more than once."""
        if self._conn is None:
            return
        self._conn.close()
        self._conn = None
        proc = self._proc
        if proc.is_alive():
            proc.terminate()
            proc.join(STOP_WAIT_S)
            if proc.is_alive():
                proc.kill()
        proc.join()
        with contextlib.suppress(ValueError):
            proc.close()


def measure_latency_isolated(loaded: LoadedModel, *, progress: Progress | None = None,
                             inputs: Mapping[str, np.ndarray] | None = None, nice: int = CHILD_NICE,
                             process: MeasuringProcess | None = None, **options: Any) -> LatencyResult:
    """:func:`~effstudio.core.latency.measure_latency` of ``loaded``, run in a child process for
    ONNX (see the module docstring): ``process`` when given (started ahead), else a new one.  Same
    keywords and result; raises :class:`~effstudio.core.progress.Cancelled` (the child is ended)
    and :class:`~effstudio.core.errors.EffstudioError` (the child's message) as it does.  The
    child is ended when this returns, whichever way."""
    from effstudio.core.latency import measure_latency

    progress = progress or Progress()
    if loaded.onnx_model is None:
        if process is not None:
            process.close()
        return measure_latency(loaded, inputs=inputs, progress=progress, **options)
    from effstudio.core.latency.ort_source import ort_source

    try:
        progress.update(0.0, "preparing the model for onnxruntime")
        data = dict(loaded.example_inputs if inputs is None else inputs)
        with tempfile.TemporaryDirectory(prefix="effstudio-latency-") as workdir:
            # in this process: an edited model is written tensor by tensor (short calls), where
            # pickling it to the child would serialize it whole in one long call
            source = ort_source(loaded, workdir)
            job = _Job(loaded.path, loaded.format, source, loaded.graph.producers(), loaded.graph.names(), data,
                       dict(options))
            if process is None:
                progress.update(0.0, "starting the measuring process")
                process = MeasuringProcess(nice)
            return process.measure(job, progress)
    finally:
        if process is not None:
            process.close()


def _lower_priority(pid: int, nice: int) -> None:
    """Raise ``pid``'s niceness to ``nice`` (never lower it); quietly nothing where the OS can't."""
    if not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)


# --- the child --------------------------------------------------------------------------------

def _child_main(conn, nice: int) -> None:
    """Entry point of the measuring process: import, wait for a job, time it, send the outcome."""
    _lower_priority(0, nice)  # before onnxruntime starts its threads: they inherit it
    import onnxruntime  # noqa: F401 - the slow import, done while the parent is still busy

    import effstudio.core.latency  # noqa: F401

    last = [0.0]

    def send_progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
            last[0] = now
            conn.send(("progress", fraction, message))

    try:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # closed unused
        result = measure_job(job, Progress(send_progress))
        conn.send(("done", result.to_json()))
    except EffstudioError as e:
        conn.send(("error", str(e)))
    except BaseException:  # reported to the parent, which raises it there
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def measure_job(job: _Job, progress: Progress) -> LatencyResult:
    """The measurement itself (in the child): the model's structure from ``job.source`` (weights
    stay in their files), timed by :func:`~effstudio.core.latency.measure_latency`."""
    import onnx

    from effstudio.core.latency import measure_latency
    from effstudio.core.latency.ort_source import file_stamp

    model = onnx.load(job.source, load_external_data=False)
    loaded = LoadedModel(_Layers(job.producers, job.names), job.format, job.path,  # type: ignore[arg-type]
                         onnx_model=model, onnx_path=job.source)
    loaded.onnx_file_stamp = file_stamp(job.source, model)  # onnxruntime reads job.source itself
    if loaded.onnx_file_stamp is None:
        raise EffstudioError(f"{job.path}: the model's files changed or went away while it was being timed")
    return measure_latency(loaded, inputs=job.inputs, progress=progress, **job.options)

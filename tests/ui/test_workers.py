"""ui/workers.py: functions run off the GUI thread, results come back on it, cancel works,
a new task of a kind cancels the old one, and the leak check catches what is left running."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import QThread

from effstudio.core.errors import ModelLoadError
from effstudio.core.progress import Progress
from effstudio.ui.workers import TaskRunner, live_tasks, wait_all


@pytest.fixture
def runner(qtbot):
    r = TaskRunner()
    yield r
    r.shutdown(10)


def test_fn_runs_off_the_gui_thread_and_result_arrives_on_it(qtbot, runner) -> None:
    main = threading.current_thread()
    seen: dict[str, object] = {}

    def fn(x: int, progress: Progress) -> int:
        seen["thread"] = threading.current_thread()
        seen["qthread"] = QThread.currentThread()
        progress.update(0.5, "half")
        return x * 2

    task = runner.start("work", fn, 21)
    with qtbot.waitSignal(task.sig_done, timeout=5000) as blocker:
        pass
    assert blocker.args == [42]
    assert seen["thread"] is not main
    assert seen["qthread"] is not QThread.currentThread()
    assert task.state == "done" and not live_tasks()


def test_done_signal_is_delivered_on_the_gui_thread(qtbot, runner) -> None:
    main = threading.current_thread()
    where = {}
    task = runner.start("work", lambda: 1)
    task.sig_done.connect(lambda _r: where.setdefault("thread", threading.current_thread()))
    qtbot.waitUntil(lambda: task.finished, timeout=5000)
    assert where["thread"] is main


def test_failure_gives_the_one_line_message_and_traceback(qtbot, runner) -> None:
    def fn(progress: Progress) -> None:
        raise ModelLoadError("bad.onnx", "not an ONNX or PyTorch file")

    task = runner.start("load", fn)
    with qtbot.waitSignal(task.sig_failed, timeout=5000) as blocker:
        pass
    message, tb = blocker.args
    assert message == "bad.onnx: not an ONNX or PyTorch file"
    assert "ModelLoadError" in tb
    assert isinstance(task.error, ModelLoadError)


def test_cancel_stops_the_function_and_drops_its_result(qtbot, runner) -> None:
    started = threading.Event()
    stopped = threading.Event()

    def fn(progress: Progress) -> str:
        started.set()
        try:
            for _ in range(500):
                progress.update(None, "spinning")
                threading.Event().wait(0.01)
        finally:
            stopped.set()
        return "finished anyway"

    task = runner.start("work", fn)
    done = []
    task.sig_done.connect(done.append)
    assert started.wait(5)
    with qtbot.waitSignal(task.sig_cancelled, timeout=5000):
        task.cancel()
    assert stopped.is_set()
    assert done == [] and task.state == "cancelled"


def test_new_task_of_same_kind_cancels_the_old_one(qtbot, runner) -> None:
    release = threading.Event()

    def slow(progress: Progress) -> str:
        while not release.is_set():
            progress.update(None, "waiting")
            release.wait(0.01)
        return "old"

    old = runner.start("load", slow)
    new = runner.start("load", lambda: "new")
    other = runner.start("other", lambda: "other")
    qtbot.waitUntil(lambda: old.finished and new.finished and other.finished, timeout=5000)
    assert old.state == "cancelled"
    assert new.result == "new" and other.result == "other"


def test_partial_results_arrive_before_done(qtbot, runner) -> None:
    def fn(progress: Progress, publish) -> str:
        publish("first")
        publish("second")
        return "final"

    task = runner.start("pipe", fn)
    order: list[str] = []
    task.sig_partial.connect(order.append)
    task.sig_done.connect(order.append)
    qtbot.waitUntil(lambda: task.finished, timeout=5000)
    assert order == ["first", "second", "final"]


def test_shutdown_cancels_and_waits(qtbot) -> None:
    runner = TaskRunner()
    running = threading.Event()

    def forever(progress: Progress) -> None:
        running.set()
        while True:
            progress.update(None, "forever")
            threading.Event().wait(0.005)

    task = runner.start("work", forever)
    assert running.wait(5)
    assert runner.shutdown(10)
    assert task.state == "cancelled" and not live_tasks()


def test_leak_check_catches_a_running_task_and_a_thread(qtbot, leak_check) -> None:
    before = {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}
    release = threading.Event()
    runner = TaskRunner()
    task = runner.start("work", lambda: release.wait(30))
    thread = threading.Thread(target=release.wait, args=(30,), name="leaky")
    thread.start()
    try:
        problems = leak_check(before, wait_s=0.2)
        text = "; ".join(problems)
        assert "worker tasks not finished" in text
        assert "QThreadPool" in text
        assert "leaky" in text
    finally:
        release.set()
        thread.join(5)
        assert wait_all(10)
    assert task.finished
    assert leak_check(before, wait_s=2) == []

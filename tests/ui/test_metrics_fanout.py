"""New numbers reach the panels in steps (``ui/metrics_fanout.py``): all at once, or one per turn
of the event loop with the turns free for timers in between; a newer run drops the older steps."""

from __future__ import annotations

from PySide6.QtCore import QTimer

from effstudio.ui.metrics_fanout import StepFanout


def _steps(log: list[str], tag: str, n: int = 3):
    return [lambda i=i: log.append(f"{tag}{i}") for i in range(n)]


def test_all_at_once_runs_every_step_then_on_done(qtbot) -> None:
    fanout = StepFanout()
    log: list[str] = []
    fanout.run(_steps(log, "a"), one_by_one=False, on_done=lambda: log.append("done"))
    assert log == ["a0", "a1", "a2", "done"]
    assert fanout.is_done()


def test_one_by_one_runs_the_first_step_now_and_lets_a_timer_in_between(qtbot) -> None:
    fanout = StepFanout()
    log: list[str] = []
    ticks = QTimer()
    ticks.timeout.connect(lambda: log.append("tick"))
    ticks.start(0)  # due every turn: it runs between two steps if the steps leave the loop turns
    fanout.run(_steps(log, "a"), one_by_one=True, on_done=lambda: log.append("done"))
    assert log == ["a0"] and not fanout.is_done()
    qtbot.waitUntil(fanout.is_done, timeout=2000)
    ticks.stop()
    steps = [e for e in log if e != "tick"]
    assert steps == ["a0", "a1", "a2", "done"]
    assert "tick" in log[log.index("a0"):log.index("a1")]
    assert "tick" in log[log.index("a1"):log.index("a2")]


def test_a_newer_run_or_a_cancel_drops_the_steps_still_waiting(qtbot) -> None:
    fanout = StepFanout()
    log: list[str] = []
    fanout.run(_steps(log, "old"), one_by_one=True, on_done=lambda: log.append("old done"))
    fanout.run(_steps(log, "new"), one_by_one=True, on_done=lambda: log.append("new done"))
    qtbot.waitUntil(fanout.is_done, timeout=2000)
    qtbot.wait(20)  # a dropped step's timer has fired by now
    assert log == ["old0", "new0", "new1", "new2", "new done"]
    log.clear()
    fanout.run(_steps(log, "c"), one_by_one=True, on_done=lambda: log.append("c done"))
    fanout.cancel()
    qtbot.wait(30)
    assert log == ["c0"] and not fanout.is_done()

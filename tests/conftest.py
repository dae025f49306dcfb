"""Shared test setup: headless Qt, a private cache folder, and a check that no test leaves
background work (a worker task, a thread-pool thread, a Python thread) running."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import pytest

LEAK_WAIT_S = 1.5  # how long background work may take to wind down after a test


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write into the user's cache or data folders.

    The cache (demo exports, keyed by weights hash and torch version) lives in the checkout's
    ``.test-cache/`` so repeated local runs reuse it; a fresh clone (CI) starts empty.  The
    session store gets a new temporary folder every run.
    """
    repo = Path(__file__).resolve().parent.parent
    os.environ.setdefault("EFFSTUDIO_CACHE_DIR", str(repo / ".test-cache"))
    os.environ.setdefault("EFFSTUDIO_DATA_DIR", str(tmp_path_factory.mktemp("effstudio-data")))
    yield


def _python_threads() -> set[threading.Thread]:
    # threads Python started itself; Qt's pool threads show up as _DummyThread once they ran
    # Python code and never go away, so they are checked through QThreadPool instead
    return {t for t in threading.enumerate() if t.is_alive() and not isinstance(t, threading._DummyThread)}


def find_leaks(baseline_threads: set[threading.Thread], wait_s: float = LEAK_WAIT_S) -> list[str]:
    """What is still running after ``wait_s`` (processing Qt events meanwhile); [] if nothing."""
    deadline = time.monotonic() + wait_s
    while True:
        problems: list[str] = []
        if "effstudio.ui.workers" in sys.modules:
            live = sys.modules["effstudio.ui.workers"].live_tasks()
            if live:
                problems.append(f"worker tasks not finished: {live}")
        if "PySide6.QtCore" in sys.modules:
            from PySide6.QtCore import QCoreApplication, QThreadPool

            busy = QThreadPool.globalInstance().activeThreadCount()
            if busy:
                problems.append(f"{busy} QThreadPool thread(s) still busy")
            if QCoreApplication.instance() is not None:
                QCoreApplication.processEvents()  # deliver finished tasks' queued signals
        extra = _python_threads() - baseline_threads
        if extra:
            problems.append(f"threads still running: {sorted(t.name for t in extra)}")
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.02)


@pytest.fixture
def leak_check() -> Callable[..., list[str]]:
    """The function the autouse leak fixture calls (so tests can check that it catches leaks)."""
    return find_leaks


def _is_qt_test(request: pytest.FixtureRequest) -> bool:
    parts = set(request.node.path.parts)
    return "ui" in parts or "qtbot" in request.fixturenames or "qapp" in request.fixturenames


@pytest.fixture(autouse=True)
def _no_leaked_background_work(request: pytest.FixtureRequest):
    """Fail a Qt test that leaves a worker task, a pool thread or a Python thread running."""
    if not _is_qt_test(request):
        yield
        return
    before = _python_threads()
    yield
    problems = find_leaks(before)
    if problems:
        pytest.fail("test left background work running: " + "; ".join(problems), pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skip them (with the reason) on machines without it."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)

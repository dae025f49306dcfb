"""Work the GUI thread must not do synchronously while a model opens: a progress step must not
paint the window on the spot, and saving settings must not write the file on the GUI thread."""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSettings
from PySide6.QtWidgets import QApplication

from effstudio.ui.panels.status import StatusPanel
from effstudio.ui.settings import Settings


class _Paints(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def eventFilter(self, _obj, event) -> bool:
        if event.type() == QEvent.Type.Paint:
            self.n += 1
        return False


def test_progress_is_painted_with_the_next_update_not_inside_the_signal(qtbot) -> None:
    panel = StatusPanel()
    qtbot.addWidget(panel)
    panel.resize(600, 30)
    panel.show()
    qtbot.waitExposed(panel)
    panel.set_busy(True)
    qtbot.wait(20)
    paints = _Paints()
    panel.progress.installEventFilter(paints)
    for i in range(1, 6):
        panel.set_progress(i / 10, f"step {i}")
        assert paints.n == 0, "QProgressBar.setValue painted (and flushed the window) synchronously"
        assert panel.progress.value() == i * 100
    qtbot.waitUntil(lambda: paints.n > 0)  # painted later, by the ordinary update
    panel.set_busy(False)
    assert panel.progress.value() == 0


def test_settings_are_written_off_the_gui_thread(private_settings) -> None:
    writers: list[str] = []
    original = QSettings.sync

    def spy(self) -> None:
        writers.append(threading.current_thread().name)
        original(self)

    settings = Settings()
    QSettings.sync = spy  # type: ignore[method-assign]
    try:
        settings.add_recent("/models/a.onnx")
        settings.add_recent("/models/b.onnx")
        settings.metric = "params"
        assert settings.wait_written()
        on_disk = Path(settings._s.fileName()).read_text(encoding="utf-8")  # before the event loop runs
        QApplication.processEvents()  # a write queued on the GUI thread would happen here
    finally:
        QSettings.sync = original  # type: ignore[method-assign]
    assert writers and all(name != threading.main_thread().name for name in writers)
    assert "b.onnx" in on_disk and "params" in on_disk
    fresh = QSettings(settings._s.fileName(), QSettings.Format.IniFormat)
    assert fresh.value("recent_files") == ["/models/b.onnx", "/models/a.onnx"]
    assert fresh.value("view/metric") == "params"
    assert Settings().recent_files() == ["/models/b.onnx", "/models/a.onnx"]

"""Model ▸ Measure On: where latency is measured — the CPU, or CUDA when this machine has it.

Finding out imports torch and onnxruntime, so it runs once, in the background, the first time
the menu opens (or at start when the saved choice is not the CPU); until then CUDA shows as
"checking…".  A choice is remembered and re-measures the open model.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QActionGroup
from PySide6.QtWidgets import QMenu

from effstudio.core.latency.devices import DeviceChoice, cpu_choice, latency_devices
from effstudio.ui.workers import TaskRunner


class DeviceMenu(QObject):
    """Fills the submenu and holds the current choice (``current``); emits ``sig_chosen(id)``."""

    sig_chosen = Signal(str)
    sig_checked = Signal()  # the background check finished (``choices`` is set)

    def __init__(self, current: str = "cpu", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.current = current
        self.choices: list[DeviceChoice] | None = None
        self.runner = TaskRunner(self)
        self._menu: QMenu | None = None
        if current != "cpu":
            self.check()

    def check(self) -> None:
        """Start the background check (once)."""
        if self.choices is not None or self.runner.current("devices") is not None:
            return
        task = self.runner.start("devices", latency_devices)
        task.sig_done.connect(self._on_checked)
        task.sig_failed.connect(lambda msg, _tb: self._on_checked(
            [cpu_choice(), DeviceChoice("cuda", "CUDA", False, False, f"the check failed: {msg}")]))

    def _on_checked(self, choices: list[DeviceChoice]) -> None:
        self.choices = choices
        chosen = next((c for c in choices if c.id == self.current), None)
        if chosen is None or not chosen.available:  # saved on another machine, or the GPU went away
            self.current = "cpu"
            self.sig_chosen.emit("cpu")
        if self._menu is not None and self._menu.isVisible():
            self.fill(self._menu)
        self.sig_checked.emit()

    def fill(self, menu: QMenu) -> None:
        self._menu = menu
        menu.clear()
        menu.setToolTipsVisible(True)
        if self.choices is None:
            self.check()
            choices = [cpu_choice(), DeviceChoice("cuda", "CUDA (checking…)", False, False, "looking for a GPU")]
        else:
            choices = self.choices
        group = QActionGroup(menu)
        for c in choices:
            unavailable = self.choices is not None and not c.available
            act = menu.addAction(f"{c.label} (not available here)" if unavailable else c.label)
            act.setObjectName(f"device_{c.id}")
            act.setCheckable(True)
            act.setChecked(c.id == self.current)
            act.setEnabled(c.available)
            act.setToolTip(_tip(c))
            group.addAction(act)
            act.triggered.connect(lambda _c=False, d=c.id: self.choose(d))

    def choose(self, device: str) -> None:
        if device == self.current:
            return
        self.current = device
        self.sig_chosen.emit(device)


def _tip(c: DeviceChoice) -> str:
    if c.id == "cpu":
        return "Time models on this computer's processor"
    if not c.available:
        return f"Not available: {c.detail}" if c.detail else "Not available"
    backends = " and ".join(b for b, ok in (("PyTorch models", c.torch), ("ONNX models", c.onnxruntime)) if ok)
    tip = f"Time {backends} on the GPU"
    return f"{tip} ({c.detail})" if c.detail else tip

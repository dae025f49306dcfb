"""What the window remembers between runs, through ``QSettings`` (organization/app set in ``app.py``).

Tests point QSettings at a temporary folder (``tests/ui/conftest.py``); nothing here picks a path.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QByteArray, QCoreApplication, QEvent, QSettings

MAX_RECENT = 10
ORGANIZATION = "effstudio"
APPLICATION = "effstudio"


class Settings:
    """Typed access to the keys effstudio stores."""

    def __init__(self) -> None:
        self._s = QSettings()
        self._writer: threading.Thread | None = None  # the last background write (see _set)

    # --- recent files ---------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self._s.value("recent_files", [])
        if isinstance(value, str):  # QSettings gives a bare string for a one-item list (INI format)
            value = [value]
        return [str(v) for v in (value or []) if v]

    def add_recent(self, spec: str) -> list[str]:
        items = [spec, *(r for r in self.recent_files() if r != spec)][:MAX_RECENT]
        self._set("recent_files", items)
        return items

    def remove_recent(self, spec: str) -> list[str]:
        items = [r for r in self.recent_files() if r != spec]
        self._set("recent_files", items)
        return items

    def clear_recent(self) -> None:
        self._set("recent_files", [])

    # --- simple values --------------------------------------------------------------------
    def _str(self, key: str, default: str) -> str:
        v = self._s.value(key, default)
        return str(v) if v is not None else default

    @property
    def theme(self) -> str:
        return self._str("view/theme", "light")

    @theme.setter
    def theme(self, name: str) -> None:
        self._set("view/theme", name)

    @property
    def metric(self) -> str:
        return self._str("view/metric", "macs")

    @metric.setter
    def metric(self, key: str) -> None:
        self._set("view/metric", key)

    @property
    def log_scale(self) -> bool:
        return self._str("view/log_scale", "false").lower() == "true"

    @log_scale.setter
    def log_scale(self, on: bool) -> None:
        self._set("view/log_scale", "true" if on else "false")

    @property
    def latency_device(self) -> str:
        return self._str("latency/device", "cpu")

    @latency_device.setter
    def latency_device(self, device: str) -> None:
        self._set("latency/device", device)

    @property
    def last_dir(self) -> str:
        return self._str("files/last_dir", "")

    @last_dir.setter
    def last_dir(self, path: str) -> None:
        self._set("files/last_dir", path)

    # --- window layout --------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        v = self._s.value("window/geometry")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        v = self._s.value("window/state")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def save_layout(self, geometry: QByteArray, state: QByteArray) -> None:
        self._set("window/geometry", geometry, "window/state", state)

    def sync(self) -> None:
        self._s.sync()

    def wait_written(self, timeout_s: float = 10.0) -> bool:
        """Wait for the last background write (tests); True when none is running."""
        w = self._writer
        if w is not None:
            w.join(timeout_s)
        return w is None or not w.is_alive()

    def _set(self, *pairs) -> None:
        """Set ``key, value[, key, value...]`` and write the file from a short thread.

        QSettings writes a changed file from its thread's event loop: on the GUI thread, a disk
        write of 3-20 ms (once 280 ms) in the middle of opening a model, which adds the file to
        the recent list.  Its queued write is dropped here and done by another QSettings on the
        same file in a thread: QSettings objects of one file in a process share their unsaved
        changes, and QSettings locks the file while it writes.
        """
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            self._s.setValue(key, value)
        QCoreApplication.removePostedEvents(self._s, QEvent.Type.UpdateRequest)
        args = (self._s.fileName(), self._s.format())
        self._writer = threading.Thread(target=_write, args=args, name="settings-write", daemon=True)
        self._writer.start()


def _write(path: str, fmt: QSettings.Format) -> None:
    QSettings(path, fmt).sync()

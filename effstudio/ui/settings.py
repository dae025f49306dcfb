"""What the window remembers between runs, through ``QSettings`` (organization/app set in ``app.py``).

Tests point QSettings at a temporary folder (``tests/ui/conftest.py``); nothing here picks a path.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSettings

MAX_RECENT = 10
ORGANIZATION = "effstudio"
APPLICATION = "effstudio"


class Settings:
    """Typed access to the keys effstudio stores."""

    def __init__(self) -> None:
        self._s = QSettings()

    # --- recent files ---------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self._s.value("recent_files", [])
        if isinstance(value, str):  # QSettings gives a bare string for a one-item list (INI format)
            value = [value]
        return [str(v) for v in (value or []) if v]

    def add_recent(self, spec: str) -> list[str]:
        items = [spec, *(r for r in self.recent_files() if r != spec)][:MAX_RECENT]
        self._s.setValue("recent_files", items)
        return items

    def remove_recent(self, spec: str) -> list[str]:
        items = [r for r in self.recent_files() if r != spec]
        self._s.setValue("recent_files", items)
        return items

    def clear_recent(self) -> None:
        self._s.setValue("recent_files", [])

    # --- simple values --------------------------------------------------------------------
    def _str(self, key: str, default: str) -> str:
        v = self._s.value(key, default)
        return str(v) if v is not None else default

    @property
    def theme(self) -> str:
        return self._str("view/theme", "light")

    @theme.setter
    def theme(self, name: str) -> None:
        self._s.setValue("view/theme", name)

    @property
    def metric(self) -> str:
        return self._str("view/metric", "macs")

    @metric.setter
    def metric(self, key: str) -> None:
        self._s.setValue("view/metric", key)

    @property
    def log_scale(self) -> bool:
        return self._str("view/log_scale", "false").lower() == "true"

    @log_scale.setter
    def log_scale(self, on: bool) -> None:
        self._s.setValue("view/log_scale", "true" if on else "false")

    @property
    def last_dir(self) -> str:
        return self._str("files/last_dir", "")

    @last_dir.setter
    def last_dir(self, path: str) -> None:
        self._s.setValue("files/last_dir", path)

    # --- window layout --------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        v = self._s.value("window/geometry")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        v = self._s.value("window/state")
        return v if isinstance(v, QByteArray) and not v.isEmpty() else None

    def save_layout(self, geometry: QByteArray, state: QByteArray) -> None:
        self._s.setValue("window/geometry", geometry)
        self._s.setValue("window/state", state)

    def sync(self) -> None:
        self._s.sync()

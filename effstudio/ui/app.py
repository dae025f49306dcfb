"""Start the desktop app: ``run_app(model)`` is what ``effstudio [MODEL]`` calls.

``EFFSTUDIO_SCREENSHOT=PATH`` makes the app save a screenshot of the window to PATH and quit
once the first model is shown with its static numbers (``EFFSTUDIO_SCREENSHOT_AFTER=latency``:
after latency was measured too).  The GUI smoke test and the docs use it.
"""

from __future__ import annotations

import os
import sys

from PySide6.QtCore import QCoreApplication, QTimer
from PySide6.QtWidgets import QApplication

from effstudio import __version__
from effstudio.ui.settings import APPLICATION, ORGANIZATION

DEFAULT_MODEL = "demo:cnn"
SCREENSHOT_ENV = "EFFSTUDIO_SCREENSHOT"
SCREENSHOT_AFTER_ENV = "EFFSTUDIO_SCREENSHOT_AFTER"


def configure_application(app: QCoreApplication) -> None:
    """Names that QSettings keys off, and the version."""
    app.setOrganizationName(ORGANIZATION)
    app.setOrganizationDomain("effstudio.invalid")
    app.setApplicationName(APPLICATION)
    app.setApplicationVersion(__version__)


def create_window(model: str | None = DEFAULT_MODEL, *, trust: bool = False,
                  inputs: dict | None = None):
    """The main window, shown, with ``model`` opening in the background (None: open nothing)."""
    from effstudio.ui import theme
    from effstudio.ui.main_window import MainWindow
    from effstudio.ui.settings import Settings

    app = QApplication.instance()
    if isinstance(app, QApplication):
        theme.apply_theme(app, Settings().theme)
    window = MainWindow()
    window.show()
    if model:
        window.open_spec(model, trust=trust, inputs=inputs)
    return window


def _install_screenshot(window, path: str, after: str) -> None:
    """Save ``window.grab()`` to ``path`` and quit when the first model is shown (or failed)."""
    app = QApplication.instance()
    done = {"saved": False}

    def save_and_quit() -> None:
        if done["saved"]:
            return
        done["saved"] = True
        window.grab().save(path)
        window.close()
        app.exit(0)

    def settle() -> None:
        # let the docks lay out and the graph view finish its layout before grabbing
        view = window.graph_view
        if view is not None and hasattr(view, "sig_layout_ready") and not getattr(view, "layout_ready", True):
            view.sig_layout_ready.connect(lambda *_: QTimer.singleShot(300, save_and_quit))
            QTimer.singleShot(20000, save_and_quit)
        else:
            QTimer.singleShot(500, save_and_quit)

    if after == "latency":
        window.session.sig_latency_state.connect(
            lambda state, _d: settle() if state in ("done", "failed", "cancelled") else None)
    else:
        window.session.sig_opened.connect(lambda _spec: settle())

    def failed(_spec: str, message: str, _kind: str) -> None:
        print(f"effstudio: {message}", file=sys.stderr)
        done["saved"] = True
        window.close()
        app.exit(2)

    window.session.sig_load_failed.disconnect(window._on_load_failed)  # no modal dialog in this mode
    window.session.sig_load_failed.connect(failed)


def run_app(model: str | None = None, *, trust: bool = False, inputs: dict | None = None) -> int:
    """Run the GUI on ``model`` (a path, ``demo:NAME`` or ``pkg.module:factory``; default the demo CNN).

    ``trust`` and ``inputs`` (name -> InputSpec) are the CLI's ``--trust`` and ``--input``.
    """
    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_application(app)
    window = create_window(model or DEFAULT_MODEL, trust=trust, inputs=inputs)
    shot = os.environ.get(SCREENSHOT_ENV)
    if shot:
        _install_screenshot(window, shot, os.environ.get(SCREENSHOT_AFTER_ENV, "static"))
    return app.exec()

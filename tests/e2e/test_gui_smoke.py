"""The GUI as a user starts it: ``python -m effstudio MODEL`` in a subprocess, offscreen, saving a
screenshot once the model's static numbers are shown, then quitting by itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PySide6.QtGui import QImage


def run_gui(args: list[str], tmp_path, screenshot) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["EFFSTUDIO_SCREENSHOT"] = str(screenshot)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # QSettings of this run: not the user's
    env["HOME"] = str(tmp_path)
    return subprocess.run([sys.executable, "-m", "effstudio", *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_gui_starts_on_the_demo_cnn_and_saves_a_screenshot(tmp_path) -> None:
    shot = tmp_path / "window.png"
    out = run_gui([], tmp_path, shot)  # no model: the demo CNN
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = QImage(str(shot))
    assert img.width() >= 800 and img.height() >= 500
    # non-trivial: many distinct colors (text, table, chart), not a blank window
    colors = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
    assert len(colors) > 50


@pytest.mark.slow
def test_gui_with_a_bad_file_exits_2_with_the_message(tmp_path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    out = run_gui([str(bad)], tmp_path, tmp_path / "never.png")
    assert out.returncode == 2
    assert str(bad) in out.stderr
    assert not (tmp_path / "never.png").exists()

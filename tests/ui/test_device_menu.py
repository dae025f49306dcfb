"""Model ▸ Measure On: the devices found in the background, the choice remembered, and a change
re-measuring the open model on the chosen device."""

from __future__ import annotations

from PySide6.QtWidgets import QMenu

from effstudio.core.latency.devices import DeviceChoice, cpu_choice
from effstudio.core.metrics.table import MetricsTable
from effstudio.ui import pipeline
from effstudio.ui.main_window import MainWindow
from effstudio.ui.session import ModelSession
from effstudio.ui.settings import Settings

CUDA = DeviceChoice("cuda", "CUDA (Test GPU)", True, False, "onnxruntime 1.0 has no CUDA provider")


def _window(qtbot, make_loaded, make_metrics, measured: list[str]) -> MainWindow:
    def open_fn(spec, *, trust=False, latency=True, device="cpu", progress, publish):
        loaded = make_loaded(spec)
        publish(pipeline.Opened(spec, loaded, make_metrics(loaded.graph)))
        return _measure(loaded, progress, device) if latency else None

    def _measure(loaded, progress, device="cpu"):
        measured.append(device)
        totals = {"latency_ms": {"median": 1.0, "p10": 0.9, "p90": 1.1, "runs": 10},
                  "latency_device": "CUDA (Test GPU)" if device == "cuda" else "CPU, 2 threads"}
        return pipeline.Measured(MetricsTable({}, totals=totals), None)

    w = MainWindow(ModelSession(open_fn=open_fn, measure_fn=_measure))
    qtbot.addWidget(w)
    return w


def _wait_checked(qtbot, w: MainWindow) -> None:
    qtbot.waitUntil(lambda: w.device_menu.choices is not None and not w.device_menu.runner.is_busy(), timeout=60_000)


def test_the_menu_finds_this_machines_devices_in_the_background(qtbot, make_loaded, make_metrics) -> None:
    w = _window(qtbot, make_loaded, make_metrics, [])
    menu = QMenu(w)
    w.fill_device_menu(menu)  # first fill: the check starts, CUDA waits for it
    assert menu.actions()[0].text().startswith("CPU (")
    assert menu.actions()[0].isChecked() and menu.actions()[0].isEnabled()
    assert "checking" in menu.actions()[1].text() and not menu.actions()[1].isEnabled()
    _wait_checked(qtbot, w)
    w.fill_device_menu(menu)
    found = {c.id: c for c in w.device_menu.choices}
    cuda = menu.actions()[1]
    assert cuda.isEnabled() == found["cuda"].available
    if not found["cuda"].available:  # this machine: the reason is in the tooltip, never a silent grey item
        assert cuda.toolTip().startswith("Not available:") and "torch" in cuda.toolTip()
    w.close()


def test_choosing_a_device_remeasures_there_and_is_remembered(qtbot, make_loaded, make_metrics) -> None:
    measured: list[str] = []
    w = _window(qtbot, make_loaded, make_metrics, measured)
    with qtbot.waitSignal(w.session.sig_opened, timeout=30_000):
        w.open_spec("small.onnx")
    qtbot.waitUntil(lambda: w.session.latency_state == "done", timeout=30_000)
    assert measured == ["cpu"]
    w.device_menu.choices = [cpu_choice(), CUDA]  # as a machine with a GPU would find
    menu = QMenu(w)
    w.fill_device_menu(menu)
    menu.actions()[1].trigger()
    qtbot.waitUntil(lambda: measured == ["cpu", "cuda"] and w.session.latency_state == "done", timeout=30_000)
    assert w.session.latency_device == "cuda" and Settings().latency_device == "cuda"
    assert "1.00 ms ± 100 µs · CUDA" in w.status.latency_label.text()
    assert "measured on CUDA (Test GPU)" in w.status.latency_label.toolTip()
    assert menu.actions()[1].toolTip() == "Time PyTorch models on the GPU (onnxruntime 1.0 has no CUDA provider)"
    w.close()


def test_a_saved_gpu_choice_falls_back_to_the_cpu_where_there_is_none(qtbot, make_loaded, make_metrics,
                                                                       monkeypatch) -> None:
    from effstudio.ui import device_menu

    Settings().latency_device = "cuda"
    monkeypatch.setattr(device_menu, "latency_devices",
                        lambda: [cpu_choice(), DeviceChoice("cuda", "CUDA", False, False, "no GPU here")])
    w = _window(qtbot, make_loaded, make_metrics, [])
    assert w.session.latency_device == "cuda"  # until the check, started at once, says otherwise
    _wait_checked(qtbot, w)
    assert w.session.latency_device == "cpu" and w.device_menu.current == "cpu"
    assert Settings().latency_device == "cpu"
    w.close()

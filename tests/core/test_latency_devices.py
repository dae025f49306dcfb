"""Where latency can be measured (the window's Model ▸ Measure On) and how a result names it."""

from __future__ import annotations

from effstudio.core.latency import LatencyResult, device_label
from effstudio.core.latency.devices import DeviceChoice, latency_devices


def test_the_cpu_always_and_cuda_with_the_reason_when_absent() -> None:
    import onnxruntime as ort
    import torch

    cpu, cuda = latency_devices()
    assert cpu.id == "cpu" and cpu.available and cpu.label.startswith("CPU (")
    assert cuda.id == "cuda"
    assert cuda.torch == torch.cuda.is_available()
    assert cuda.onnxruntime == ("CUDAExecutionProvider" in ort.get_available_providers())
    if not cuda.torch:
        assert f"torch {torch.__version__} sees no CUDA device" in cuda.detail
    if not cuda.onnxruntime:
        assert "no CUDA provider" in cuda.detail


def test_a_choice_runs_a_backend_only_where_it_can() -> None:
    only_torch = DeviceChoice("cuda", "CUDA (X)", True, False, "")
    assert only_torch.available and only_torch.runs("torch") and not only_torch.runs("onnx")
    assert not DeviceChoice("cuda", "CUDA", False, False, "none").available


def test_device_label_names_cpu_threads_and_the_gpu() -> None:
    def result(device: str, threads: int, env: dict) -> LatencyResult:
        return LatencyResult(backend="torch", device=device, threads=threads, e2e_ms={"median": 1.0},
                             environment=env)

    assert device_label(result("cpu", 1, {})) == "CPU, 1 thread"
    assert device_label(result("cpu", 8, {})) == "CPU, 8 threads"
    assert device_label(result("cuda", 8, {"gpu": "NVIDIA H100 80GB HBM3"})) == "CUDA (NVIDIA H100 80GB HBM3)"
    assert device_label(result("cuda", 8, {})) == "CUDA"

"""CUDA paths of profiling: run only where a GPU is present (marker ``gpu``; skipped otherwise)."""

from __future__ import annotations

import pytest

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import measure_latency
from effstudio.core.progress import Progress
from effstudio.core.zoo import load_demo


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
def test_torch_latency_on_cuda() -> None:
    loaded = load_demo("cnn")
    result = measure_latency(loaded, device="cuda", runs=5)
    assert result.device.startswith("cuda")
    assert result.e2e_ms["median"] > 0
    assert result.per_layer_ms, "per-layer times on CUDA"
    assert result.latency_sum_ratio is not None
    print(f"cnn on {result.environment.get('gpu')}: e2e {result.e2e_ms['median']:.3f} ms, "
          f"sum/e2e {result.latency_sum_ratio:.2f}")


@pytest.mark.gpu
def test_cuda_clock_times_the_kernels_not_their_launches() -> None:
    import time

    import torch

    from effstudio.core.latency.clock import CudaClock

    clock = CudaClock()
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    for _ in range(2):
        start = clock.mark()
        t0 = time.perf_counter_ns()
        for _ in range(10):
            a @ a
        end = clock.mark()
        launch_ns = time.perf_counter_ns() - t0
        clock.settle()
        # 10 fp32 4096³ products are ~1.4 TFLOP: the kernels outlast their asynchronous launches
        assert clock.ns(start, end) > launch_ns > 0
        clock.reset()
    assert len(clock._pool) == 2  # the events are reused run after run


@pytest.mark.gpu
def test_onnxruntime_latency_on_cuda() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (the CPU wheel is installed)")
    loaded = load_demo("cnn.onnx")
    result = measure_latency(loaded, device="cuda", runs=5)
    assert result.e2e_ms["median"] > 0
    assert not result.per_layer_ms and "not measured on CUDA" in result.method


def test_onnxruntime_on_cuda_shows_no_host_side_layer_times(monkeypatch) -> None:
    """onnxruntime's node events on CUDA time the kernels' asynchronous launches: not shown as layer
    times.  (Run on the CPU provider here, with the CUDA branch taken.)"""
    from effstudio.core.latency import ort_latency

    real = ort_latency._time_e2e
    monkeypatch.setattr(ort_latency, "providers_for", lambda _d: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_latency, "_time_e2e",
                        lambda loaded, source, _providers, *a: real(loaded, source, ["CPUExecutionProvider"], *a))
    result = measure_latency(load_demo("mlp.onnx"), device="cuda", runs=3)
    assert result.e2e_ms["median"] > 0 and result.per_layer_ms == {}
    assert "not measured on CUDA" in result.method and result.latency_sum_ratio is None


def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    if _cuda_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EffstudioError, match=r"(?i)cuda"):
        measure_latency(load_demo("mlp"), device="cuda", runs=2)


@pytest.mark.gpu
def test_cuda_is_offered_with_the_gpu_name() -> None:
    import torch

    from effstudio.core.latency.devices import latency_devices

    cuda = latency_devices()[1]
    assert cuda.torch and cuda.available and torch.cuda.get_device_name(0) in cuda.label


@pytest.mark.gpu
def test_the_windows_measuring_path_times_on_cuda() -> None:
    """What Model ▸ Measure On ▸ CUDA runs (``ui.pipeline.measure``, Qt-free), and the label it shows."""
    from effstudio.ui.pipeline import measure

    measured = measure(load_demo("mlp"), Progress(), device="cuda")
    assert measured.result.device == "cuda"
    assert measured.metrics.totals["latency_device"].startswith("CUDA (")
    assert measured.metrics.values["latency_ms"]

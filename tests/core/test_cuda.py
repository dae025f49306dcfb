"""CUDA paths of profiling: run only where a GPU is present (marker ``gpu``; skipped otherwise)."""

from __future__ import annotations

import pytest

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import measure_latency
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


@pytest.mark.gpu
def test_onnxruntime_latency_on_cuda() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (the CPU wheel is installed)")
    loaded = load_demo("cnn.onnx")
    result = measure_latency(loaded, device="cuda", runs=5)
    assert result.e2e_ms["median"] > 0


def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    if _cuda_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EffstudioError, match=r"(?i)cuda"):
        measure_latency(load_demo("mlp"), device="cuda", runs=2)

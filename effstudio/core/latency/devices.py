"""Where latency can be measured on this machine: the CPU always, CUDA when torch or onnxruntime
can reach a GPU.  The window asks once, in the background (the check imports torch and
onnxruntime), and offers what it found; the CLI takes ``--device`` and fails with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from effstudio.core.latency.environment import available_cores


@dataclass(frozen=True)
class DeviceChoice:
    """A place to time models: ``id`` is ``measure_latency``'s ``device``; ``torch`` /
    ``onnxruntime`` say whether each backend can run there, ``detail`` why not (or what it is)."""

    id: str
    label: str
    torch: bool
    onnxruntime: bool
    detail: str

    @property
    def available(self) -> bool:
        return self.torch or self.onnxruntime

    def runs(self, backend: str) -> bool:
        """Whether a model of this backend (``"torch"`` or ``"onnx"``) can be timed here."""
        return self.onnxruntime if backend == "onnx" else self.torch


def cpu_choice() -> DeviceChoice:
    return DeviceChoice("cpu", f"CPU ({available_cores()} cores)", True, True, "")


def latency_devices() -> list[DeviceChoice]:
    """The CPU, then CUDA (available or not, with the reason)."""
    return [cpu_choice(), _cuda()]


def _cuda() -> DeviceChoice:
    try:
        import torch

        torch_ok = bool(torch.cuda.is_available())
        gpu = torch.cuda.get_device_name(0) if torch_ok else ""
        torch_why = "" if torch_ok else f"torch {torch.__version__} sees no CUDA device"
    except Exception as e:  # a broken CUDA install raises from is_available/get_device_name
        torch_ok, gpu, torch_why = False, "", f"torch: {type(e).__name__}: {e}"
    try:
        import onnxruntime as ort

        ort_ok = "CUDAExecutionProvider" in ort.get_available_providers()
        ort_why = "" if ort_ok else f"onnxruntime {ort.__version__} has no CUDA provider (onnxruntime-gpu has)"
    except Exception as e:
        ort_ok, ort_why = False, f"onnxruntime: {type(e).__name__}: {e}"
    label = f"CUDA ({gpu})" if gpu else "CUDA"
    detail = "; ".join(w for w in (torch_why, ort_why) if w)
    return DeviceChoice("cuda", label, torch_ok, ort_ok, detail)

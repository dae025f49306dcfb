"""Where a latency was measured: CPU, cores, threads, library versions (timings mean little without it)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(backend: str, device: str, threads: int, **extra: Any) -> dict[str, Any]:
    libs = {name: _version(dist) for name, dist in (
        ("numpy", "numpy"), ("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime-gpu"),
        ("onnx", "onnx"), ("torch", "torch"))}
    return {
        "backend": backend,
        "device": device,
        "threads": threads,
        "cpu": cpu_model(),
        "cores_available": available_cores(),
        "cores_total": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {k: v for k, v in libs.items() if v is not None},
        **extra,
    }

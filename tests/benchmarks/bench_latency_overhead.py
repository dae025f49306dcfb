"""How well per-layer times add up: latency_sum_ratio (sum of per-layer medians / end-to-end median)
for the ONNX (onnxruntime profiling) and torch (module hooks) forms of the demo models.

    python tests/benchmarks/bench_latency_overhead.py [--models cnn,resnet] [--repeats 3] [--budget 1]
        [--device cpu|cuda] [--clock events,sync]

Each form is measured ``--repeats`` times; the medians are printed with the spread, how many
layers got a time, fused kernels and the runtime-only share.  Random weights (fixed seed) are
used when a demo's trained weights are not there: latency does not depend on weight values.
A ratio above 1 is instrumentation overhead left in; below 1, time outside the measured nodes.
``raw`` is onnxruntime's ratio before the profiler's measured cost inside node events is taken out.
On a loaded machine run it with ``--threads 1``: with as many threads as busy cores every
parallel op can stall, and end-to-end medians swing 10× from one measurement to the next.

On CUDA the torch form's module times come from CUDA events (:mod:`effstudio.core.latency.clock`);
``--clock events,sync`` also measures the earlier way, a host clock with ``torch.cuda.synchronize``
at every module boundary, so the two can be compared in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from effstudio.core.latency import RUNTIME_KEY, measure_latency, torch_latency
from effstudio.core.latency.clock import Clock
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.metrics.static import compute_static
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress
from effstudio.core.zoo import DEMOS, _factory, build_demo, example_inputs

DEFAULT_MODELS = ("mlp", "cnn", "mobilenetv2", "resnet", "transformer", "lstm")


def _module(name: str) -> torch.nn.Module:
    try:
        return build_demo(name)
    except Exception:  # trained weights not made yet: same architecture, seeded random weights
        torch.manual_seed(0)
        return _factory(DEMOS[name])().eval()


class _SyncClock(Clock):
    """The earlier CUDA per-module timing: synchronize, then read the host clock."""

    device = "cuda"

    def mark(self) -> int:
        torch.cuda.synchronize()
        return time.perf_counter_ns()


def _forms(name: str, workdir: Path, forms: list[str]) -> dict[str, LoadedModel]:
    module = _module(name)
    ex = example_inputs(name)
    torch_form = loaded_from_module(module, ex, path=f"demo:{name}", format="demo")
    if "onnx" not in forms:
        return {"torch": torch_form}
    path = workdir / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), kwargs=ex, dynamo=True, verbose=False).save(str(path))
    return {"onnx": load_onnx(path, inputs={}, progress=Progress()), "torch": torch_form}


def _measure(loaded: LoadedModel, repeats: int, budget: float, threads: int | None, device: str) -> dict:
    flops = compute_static(loaded).column("flops")
    ratios, raws, e2e, runtime_share = [], [], [], []
    last = None
    for _ in range(repeats):
        r = measure_latency(loaded, device=device, budget_s=budget, threads=threads, flops=flops)
        ratios.append(r.latency_sum_ratio)
        raws.append(r.latency_sum_ratio_raw)
        e2e.append(r.e2e_ms["median"])
        runtime_share.append(r.per_layer_ms.get(RUNTIME_KEY, 0.0) / max(sum(r.per_layer_ms.values()), 1e-12))
        last = r
    names = loaded.graph.names()
    timed = sum(1 for n in names if n in last.per_layer_ms)
    raw = statistics.median(raws) if None not in raws else None
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios), "raw": raw,
            "all": " ".join(f"{x:.2f}" for x in ratios),
            "e2e_ms": statistics.median(e2e), "timed": f"{timed}/{len(names)}",
            "fused": sum(1 for v in last.fused.values() if len(v) > 1),
            "eliminated": len(last.eliminated), "runtime_share": statistics.median(runtime_share),
            "threads": last.threads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of end-to-end runs per measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--forms", default="onnx,torch", help="which forms to measure")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--clock", default="events",
                    help="cuda, torch form: 'events' (CUDA events), 'sync' (synchronize + host clock) or both")
    args = ap.parse_args(argv)
    forms = args.forms.split(",")
    clocks = args.clock.split(",") if args.device == "cuda" else ["host"]
    print(f"{'model':<12} {'form':<12} {'sum/e2e':>8} {'(min–max)':>12} {'e2e ms':>8} {'timed':>8} "
          f"{'fused':>5} {'elim':>4} {'runtime':>8} {'thr':>3} {'raw':>5}  each run")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            try:
                loaded_forms = _forms(name, Path(tmp), forms)
            except Exception as exc:  # one model that fails to build or export does not end the table
                print(f"{name:<12} failed to load: {type(exc).__name__}: {exc}", flush=True)
                continue
            for form, loaded in loaded_forms.items():
                for clock in clocks if form == "torch" else clocks[:1]:
                    label = form if clock in ("host", "events") or form != "torch" else f"{form}/{clock}"
                    try:
                        with _clock(clock):
                            m = _measure(loaded, args.repeats, args.budget, args.threads, args.device)
                    except Exception as exc:
                        print(f"{name:<12} {label:<12} failed: {type(exc).__name__}: {exc}", flush=True)
                        continue
                    _print_row(name, label, m)
    return 0


@contextlib.contextmanager
def _clock(kind: str):
    if kind != "sync":
        yield
        return
    saved = torch_latency.clock_for
    torch_latency.clock_for = lambda device_type: _SyncClock()
    try:
        yield
    finally:
        torch_latency.clock_for = saved


def _print_row(name: str, form: str, m: dict) -> None:
    spread = f"{m['ratio_min']:>5.2f}–{m['ratio_max']:<5.2f}"
    print(f"{name:<12} {form:<12} {m['ratio']:>8.2f} {spread} {m['e2e_ms']:>8.3f} "
          f"{m['timed']:>8} {m['fused']:>5} {m['eliminated']:>4} "
          f"{m['runtime_share'] * 100:>7.1f}% {m['threads']:>3} "
          f"{'' if m['raw'] is None else format(m['raw'], '.2f'):>5}  {m['all']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

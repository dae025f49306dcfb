"""How well per-layer times add up: latency_sum_ratio (sum of per-layer medians / end-to-end median)
for the ONNX (onnxruntime profiling) and torch (module hooks) forms of the demo models.

    python tests/benchmarks/bench_latency_overhead.py [--models cnn,resnet] [--repeats 3] [--budget 1]

Each form is measured ``--repeats`` times; the medians are printed with the spread, how many
layers got a time, fused kernels and the runtime-only share.  Random weights (fixed seed) are
used when a demo's trained weights are not there: latency does not depend on weight values.
A ratio above 1 is instrumentation overhead left in; below 1, time outside the measured nodes.
``raw`` is onnxruntime's ratio before the profiler's measured cost inside node events is taken out.
On a loaded machine run it with ``--threads 1``: with as many threads as busy cores every
parallel op can stall, and end-to-end medians swing 10× from one measurement to the next.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from effstudio.core.latency import RUNTIME_KEY, measure_latency
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


def _forms(name: str, workdir: Path) -> dict[str, LoadedModel]:
    module = _module(name)
    ex = example_inputs(name)
    torch_form = loaded_from_module(module, ex, path=f"demo:{name}", format="demo")
    path = workdir / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), kwargs=ex, dynamo=True, verbose=False).save(str(path))
    return {"onnx": load_onnx(path, inputs={}, progress=Progress()), "torch": torch_form}


def _measure(loaded: LoadedModel, repeats: int, budget: float, threads: int | None) -> dict:
    flops = compute_static(loaded).column("flops")
    ratios, raws, e2e, runtime_share = [], [], [], []
    last = None
    for _ in range(repeats):
        r = measure_latency(loaded, budget_s=budget, threads=threads, flops=flops)
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
    args = ap.parse_args(argv)
    print(f"{'model':<12} {'form':<6} {'sum/e2e':>8} {'(min–max)':>12} {'e2e ms':>8} {'timed':>8} "
          f"{'fused':>5} {'elim':>4} {'runtime':>8} {'thr':>3} {'raw':>5}  each run")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for form, loaded in _forms(name, Path(tmp)).items():
                if form not in args.forms.split(","):
                    continue
                m = _measure(loaded, args.repeats, args.budget, args.threads)
                spread = f"{m['ratio_min']:>5.2f}–{m['ratio_max']:<5.2f}"
                print(f"{name:<12} {form:<6} {m['ratio']:>8.2f} {spread} {m['e2e_ms']:>8.3f} "
                      f"{m['timed']:>8} {m['fused']:>5} {m['eliminated']:>4} "
                      f"{m['runtime_share'] * 100:>7.1f}% {m['threads']:>3} "
                      f"{'' if m['raw'] is None else format(m['raw'], '.2f'):>5}  {m['all']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

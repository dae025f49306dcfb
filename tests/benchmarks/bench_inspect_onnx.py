"""Benchmark: ``effstudio inspect`` on a BERT-base ONNX against plain onnx.load + infer_shapes.

    python tests/benchmarks/bench_inspect_onnx.py [--reps N] [--cache DIR]

Builds (once, cached) a BERT-base-size ONNX with random weights (transformers ``BertModel`` from a
default ``BertConfig``: ~110 M params, ~440 MB), then times, each run in a fresh process:
- plain:   ``onnx.load(path)`` + ``onnx.shape_inference.infer_shapes(model)``
- inspect: ``open_model(path)`` (what ``effstudio inspect`` does: load, check, shapes, layers)
and prints medians, their ratio (goal: inspect <= 0.5x plain) and each one's peak RSS growth over
the process's RSS after imports (weights held once: inspect should grow by about the model size).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_NAME = "bert_base_random.onnx"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    # VmHWM is this process image's peak; ru_maxrss would also count the parent's RSS at fork time
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model(cache: Path) -> Path:
    """Export a random-weight BERT-base once; later runs reuse the file."""
    path = cache / MODEL_NAME
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import BertConfig, BertModel

    print(f"exporting BERT-base to {path} (once) ...", flush=True)
    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()
    ids = torch.randint(0, 1000, (1, 128))
    mask = torch.ones(1, 128, dtype=torch.long)
    staging = cache / "export-in-progress"  # a failed export leaves nothing that looks finished
    staging.mkdir(exist_ok=True)
    tmp = staging / MODEL_NAME
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    names = ["input_ids", "attention_mask"]
    try:
        torch.onnx.export(model, (ids, mask), str(tmp), dynamo=True, input_names=names,
                          dynamic_shapes={n: {0: batch, 1: seq} for n in names})
    except Exception as e:  # the TorchScript exporter as a fallback
        print(f"dynamo export failed ({type(e).__name__}: {e}); trying the TorchScript exporter", flush=True)
        torch.onnx.export(model, (ids, mask), str(tmp), dynamo=False, input_names=names,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
    # the exporter may write the weights beside the model (external data, located by a relative
    # file name): move the data first and the model last
    files = sorted(staging.iterdir(), key=lambda f: f.name == MODEL_NAME)
    for f in files:
        f.rename(cache / f.name)
    staging.rmdir()
    return path


def child(mode: str, path: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import onnx

    import effstudio.core.loaders.onnx_loader
    from effstudio.core.loaders import open_model

    del effstudio  # only imported, so that import costs stay out of the measurement

    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "plain":
        model = onnx.load(path)
        inferred = onnx.shape_inference.infer_shapes(model)
        n = len(inferred.graph.value_info)
    else:
        loaded = open_model(path)
        n = len(loaded.graph.layers)
    dt = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "s": dt, "peak_growth_mb": _peak_mb() - base,
                      "held_mb": _rss_mb() - base, "n": n}))


def run_child(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    default_cache = Path(tempfile.gettempdir()) / "effstudio-bench"
    ap.add_argument("--cache", type=Path, default=os.environ.get("EFFSTUDIO_BENCH_CACHE", default_cache))
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    path = build_model(args.cache)
    size = sum(f.stat().st_size for f in path.parent.glob(MODEL_NAME + "*")) / 2**20
    print(f"model: {path} ({size:.0f} MB with its data)")
    runs: dict[str, list[dict]] = {"plain": [], "inspect": []}
    for i in range(args.reps):
        for mode in ("plain", "inspect"):  # interleaved, so machine load hits both alike
            r = run_child(mode, path)
            runs[mode].append(r)
            print(f"  rep {i + 1} {mode:8s} {r['s']:6.2f} s   peak RSS +{r['peak_growth_mb']:5.0f} MB   "
                  f"held +{r['held_mb']:5.0f} MB", flush=True)
    med = {m: statistics.median(r["s"] for r in rs) for m, rs in runs.items()}
    peak = {m: statistics.median(r["peak_growth_mb"] for r in rs) for m, rs in runs.items()}
    print(f"\nplain   (onnx.load + infer_shapes): median {med['plain']:.2f} s, peak RSS growth "
          f"{peak['plain']:.0f} MB")
    print(f"inspect (open_model):               median {med['inspect']:.2f} s, peak RSS growth "
          f"{peak['inspect']:.0f} MB ({runs['inspect'][0]['n']} layers)")
    ratio = med["inspect"] / med["plain"]
    print(f"ratio inspect/plain: {ratio:.2f}x (goal <= 0.5x: {'met' if ratio <= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()

"""Does pruning pay off in time?  One run, medians of several repeats, printed as ratios.

    python tests/benchmarks/bench_prune.py [--repeats 7]

1. ``prune.channels`` at 50 % on every conv of the demo CNN: the measured speedup divided by
   the FLOP reduction (static MACs from ``compute_static``; goal ≥ 0.8), measured on
   onnxruntime (batch 1, the exported model's fixed shape) and on torch eager (batch 16);
   one intra-op thread each, original and pruned runs interleaved so load drift hits both.
2. ``prune.unstructured`` at 50 % on the same convs: latency ratio (≈ 1.0: dense kernels do
   not skip zeros) and the compressed-bytes ratio (deflate level 6 of the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from effstudio.core.compress.registry import get_technique
from effstudio.core.metrics.static import compute_static
from effstudio.core.progress import Progress
from effstudio.core.zoo import load_demo


def _ort_runner(loaded):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(loaded.onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {k: np.ascontiguousarray(v) for k, v in loaded.example_inputs.items()}
    return lambda: sess.run(None, feeds)


def _torch_runner(loaded, batch: int = 16):
    module = loaded.torch_module
    x = {k: torch.from_numpy(np.repeat(v, batch, axis=0)) for k, v in loaded.example_inputs.items()}

    def run():
        with torch.inference_mode():
            module(**x)
    return run


def _time(run, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


def compare(runs: dict[str, object], repeats: int, n: int) -> dict[str, list[float]]:
    """Median-ready timings of each runner, interleaved repeat by repeat (after a warm-up)."""
    for run in runs.values():
        _time(run, max(3, n // 5))
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            out[k].append(_time(run, n))
    return out


def _macs(loaded) -> float:
    return float(compute_static(loaded, flop_counter=False).totals["macs"])


def _fmt(ts: list[float]) -> str:
    med = statistics.median(ts)
    return f"{med * 1e3:.3f} ms (spread {min(ts) * 1e3:.3f}–{max(ts) * 1e3:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    channels = get_technique("prune.channels")
    unstructured = get_technique("prune.unstructured")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 intra-op thread")
    for form, runner, n in (("cnn.onnx", _ort_runner, 200), ("cnn", _torch_runner, 20)):
        base = load_demo(form)
        convs = [lay.name for lay in base.graph.layers if lay.op_type in ("Conv", "conv2d")]
        pruned = channels.apply(base, channels.config_cls(amount=0.5), convs, Progress()).model
        sparse_step = unstructured.apply(base, unstructured.config_cls(amount=0.5), convs, Progress())
        sparse = sparse_step.model
        t = compare({"base": runner(base), "channels": runner(pruned), "sparse": runner(sparse)}, args.repeats, n)
        m0, m1 = _macs(base), _macs(pruned)
        flop_red = m0 / m1
        speed = statistics.median(t["base"]) / statistics.median(t["channels"])
        backend = "onnxruntime, batch 1" if form.endswith(".onnx") else "torch eager, batch 16"
        print(f"\n== demo {form} ({backend}) ==")
        print(f"base      {_fmt(t['base'])}, {m0 / 1e6:.2f} M MACs, {base.graph.totals()['params']:,} params")
        print(f"channels  {_fmt(t['channels'])}, {m1 / 1e6:.2f} M MACs, {pruned.graph.totals()['params']:,} params")
        print(f"  prune.channels 50 %: FLOP reduction ×{flop_red:.2f}, measured speedup ×{speed:.2f}, "
              f"speedup / FLOP reduction = {speed / flop_red:.2f} (goal ≥ 0.8)")
        cb = sparse_step.extra["compressed_bytes"]
        lat = statistics.median(t["sparse"]) / statistics.median(t["base"])
        print(f"sparse    {_fmt(t['sparse'])}")
        print(f"  prune.unstructured 50 %: latency ratio {lat:.2f} (≈1.0: no speedup), compressed bytes "
              f"{cb['before']:,} → {cb['after']:,} (ratio {cb['after'] / cb['before']:.2f}), raw weight bytes "
              f"{base.graph.totals()['weight_bytes']:,} → {sparse.graph.totals()['weight_bytes']:,}")


if __name__ == "__main__":
    main()

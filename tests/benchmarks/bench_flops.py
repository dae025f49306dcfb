"""Static analysis: effstudio vs onnx-tool (time and counts) vs torch FlopCounterMode (counts).

Run: ``.venv/bin/python tests/benchmarks/bench_flops.py [--quick] [--runs N]``
(needs ``onnx-tool``: ``pip install onnx-tool -c packaging/constraints.txt``; it does not pull torch).

For each model: the same ONNX file is analysed by effstudio (``load_onnx`` + ``compute_static``)
and by onnx-tool (``Model`` + ``shape_infer`` + ``profile``), and the ratio printed (goal:
effstudio >= 3x faster).  effstudio is timed twice: loading the model whole (every weight read
into the ModelProto, as the GUI does) and as ``effstudio inspect`` does (``read_weights=False``:
the large weights stay in their file; the counts are the same).  onnx-tool has no such mode (it
reads every weight's values to build its graph).

Timing convention (the same for both tools): one process, every import done and each call run
once untimed before timing (so import and first-call costs are excluded for both); then
``--runs`` rounds, each running every timed call once in turn (so machine load hits all alike),
each call after an untimed ``gc.collect()`` (so none pays for collecting the garbage of the one
before it).  Shown: the median of the rounds, of the wall-clock time and of the process's CPU
time (the steadier one when other jobs share the machine); ratios are ratios of medians.

Models: small torch nets defined here, the demo zoo's trained models (their cached ONNX copy, as
``demo:cnn.onnx`` opens it) and the reference architectures (MobileNetV2, ResNet-50, BERT-base);
all exported with the dynamo exporter.

Then a count table: effstudio MACs (ONNX and
torch graph), onnx-tool's "MACs" in total and on the product ops only, and FlopCounterMode's
FLOPs / 2, with a footnote for every difference.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from effstudio.core.loaders import onnx_graph, onnx_shapes
from effstudio.core.loaders.onnx_loader import load_onnx
from effstudio.core.loaders.torch_graph import loaded_from_module
from effstudio.core.metrics import compute_static
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress
from effstudio.core.zoo import DEMOS, build_demo, demo_onnx_path, example_inputs, reference

PRODUCT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Einsum", "Attention"}


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.lstm(x)[0])


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2)

    def forward(self, x):
        return self.enc(x)


def models(quick: bool) -> list[tuple[str, Callable[[], nn.Module], dict[str, torch.Tensor]]]:
    out = [
        ("tiny-cnn", TinyCNN, {"x": torch.randn(1, 3, 32, 32)}),
        ("tiny-lstm", TinyLSTM, {"x": torch.randn(2, 20, 16)}),
        ("tiny-transformer", TinyTransformer, {"x": torch.randn(2, 16, 64)}),
    ]
    # the demo zoo's trained models, as their cached ONNX copy (what ``demo:NAME.onnx`` opens)
    out += [(f"demo:{name}", lambda n=name: build_demo(n), example_inputs(name))
            for name, spec in DEMOS.items() if spec.trained]
    out += [
        ("mobilenet_v2", reference.mobilenet_v2, {"x": torch.randn(1, 3, 224, 224)}),
        ("resnet50", reference.resnet50, {"x": torch.randn(1, 3, 224, 224)}),
    ]
    if not quick:
        import transformers

        ids = {"input_ids": torch.randint(0, 30522, (1, 128))}
        out.append(("bert-base (eager)", reference.bert_base, ids))  # the zoo's: matmul + softmax
        # transformers' default SDPA attention exports IsNaN / Where guards
        out.append(("bert-base (SDPA)", lambda: transformers.BertModel(transformers.BertConfig()), ids))
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(runs: int, calls: dict[str, Callable[[], Any]]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Median time of each call over ``runs`` rounds on each clock (``{"wall": {call: s}, "cpu": ...}``),
    after one untimed run of each; each round runs every call once in turn, after a
    ``gc.collect()``.  Also returns each call's last result."""
    results = {k: fn() for k, fn in calls.items()}  # warm-up: first-call costs out of the timing
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in calls} for c in CLOCKS}
    for _ in range(runs):
        for k, fn in calls.items():
            gc.collect()  # no call pays for collecting the garbage that the one before it left
            w0, c0 = time.perf_counter(), time.process_time()
            results[k] = fn()
            c1, w1 = time.process_time(), time.perf_counter()
            times["wall"][k].append(w1 - w0)
            times["cpu"][k].append(c1 - c0)
    return {c: {k: statistics.median(v) for k, v in ts.items()} for c, ts in times.items()}, results


def run_onnx_tool(m: Path | onnx.ModelProto) -> Any:
    """onnx-tool's profile: build its graph, infer shapes, count (from a path or a parsed model)."""
    import onnx_tool

    g = onnx_tool.Model(str(m) if isinstance(m, Path) else m).graph
    g.graph_reorder_nodes()
    g.shape_infer()
    g.profile()
    return g


def tool_profile_only(proto: onnx.ModelProto, runs: int) -> dict[str, float]:
    """onnx-tool's shape_infer + profile on an already built onnx-tool graph (median of runs, each clock)."""
    import onnx_tool

    times: dict[str, list[float]] = {c: [] for c in CLOCKS}
    for i in range(runs + 1):
        g = onnx_tool.Model(proto).graph
        g.graph_reorder_nodes()
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        g.shape_infer()
        g.profile()
        c1, w1 = time.process_time(), time.perf_counter()
        if i:  # the first is the warm-up
            times["wall"].append(w1 - w0)
            times["cpu"].append(c1 - c0)
    return {c: statistics.median(v) for c, v in times.items()}


def effstudio_onnx(path: Path, read_weights: bool = True) -> Any:
    loaded = load_onnx(path, inputs={}, progress=Progress(), read_weights=read_weights)
    return loaded, compute_static(loaded)


def effstudio_in_memory(model: onnx.ModelProto, path: Path) -> Any:
    """What ``load_onnx`` does once the file and its weights are read (shape inference, the
    layer graph), then ``compute_static``: the analysis proper, comparable to onnx-tool's."""
    declared = onnx_shapes.graph_inputs(model.graph)
    resolved = onnx_shapes.resolve_inputs(str(path), declared, {})
    infos, _ = onnx_shapes.infer_tensor_infos(model, resolved, onnx_shapes.symbol_values(declared, resolved))
    ctx = onnx_graph.BuildContext(functions=frozenset(), progress=Progress(),
                                  total_nodes=max(1, onnx_graph.count_nodes(model.graph)))
    graph = onnx_graph.build_graph(model.graph, infos=infos, outer_weights={}, outer_values=set(), ctx=ctx,
                                   inputs=resolved)
    onnx_graph.mark_shared(graph)
    return compute_static(LoadedModel(graph, "onnx", str(path), onnx_model=model))


def fmt(x: float | None, scale: float = 1e6) -> str:
    return "-" if x is None else f"{x / scale:,.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip BERT-base")
    ap.add_argument("--runs", type=int, default=11, help="timed rounds per model (median shown)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import onnx_tool  # noqa: F401  (fail early with a clear ImportError)

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_flops_"))
    for name, factory, inputs in models(args.quick):
        torch.manual_seed(0)
        module = factory().eval()
        if name.startswith("demo:"):
            path = demo_onnx_path(name.removeprefix("demo:"))  # one file, weights inside
        else:
            path = tmp / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".onnx")
            torch.onnx.export(module, (), str(path), kwargs=inputs, dynamo=True, verbose=False)
        runs = min(args.runs, 3) if name.startswith("bert") else args.runs
        proto = onnx.load(str(path))  # weights read once, for the in-memory timings
        loaded = load_onnx(path, inputs={}, progress=Progress())
        tool_calls: dict[str, Callable[[], Any]] = {}
        try:  # onnx-tool asserts or exits on ops it cannot infer: find out before timing
            g = run_onnx_tool(path)
            tool_total = float(g.macs[0])
            tool_products = sum(float(n.macs[0]) for n in g.nodemap.values() if n.op_type in PRODUCT_OPS)
            tool_error = None
            tool_calls = {"tool": lambda p=path: run_onnx_tool(p), "tool_mem": lambda m=proto: run_onnx_tool(m)}
        except BaseException as e:
            tool_total, tool_products = None, None
            tool_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        med, res = interleaved(runs, {
            "eff": lambda p=path: effstudio_onnx(p),
            "insp": lambda p=path: effstudio_onnx(p, read_weights=False),
            "eff_mem": lambda m=proto, p=path: effstudio_in_memory(m, p),
            "static": lambda ld=loaded: compute_static(ld),
            **tool_calls,
        })
        table, table_insp = res["eff"][1], res["insp"][1]
        assert table_insp.values == table.values, name
        prof = tool_profile_only(proto, runs) if tool_calls else None
        tl = loaded_from_module(module, inputs, path=name, format="torch-module")
        t_torch = compute_static(tl)
        check = t_torch.totals.get("flop_counter_check", {})
        rows.append({
            "name": name, "tool_error": tool_error,
            "times": {c: {"t_eff": m["eff"], "t_insp": m["insp"], "t_static": m["static"], "t_tool": m.get("tool"),
                          "t_eff_mem": m["eff_mem"], "t_tool_mem": m.get("tool_mem"),
                          "t_tool_prof": prof[c] if prof else None} for c, m in med.items()},
            "eff_macs": table.totals["macs"], "eff_flops": table.totals["flops"],
            "eff_uncounted": table.totals["uncounted_layers"], "torch_macs": t_torch.totals["macs"],
            "fc_macs": (check.get("flop_counter_flops") or 0) / 2, "tool_total": tool_total,
            "tool_products": tool_products,
            "eff_params": table.totals["params"], "torch_params": t_torch.totals["params"],
        })
        print(f"  done {name}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)  # the exports (about 1 GB with BERT's weights)

    print(f"\nAnalysis time, ms: medians of {args.runs} interleaved rounds (BERT: {min(args.runs, 3)}) in one warm "
          "process, imports and a first untimed call excluded for both tools;\n"
          "ratios = onnx-tool median / effstudio median.  'file': from the .onnx path, weights read from disk\n"
          "(effstudio load_onnx + compute_static; onnx-tool Model + shape_infer + profile).  'memory': the\n"
          "model already parsed with its weights (effstudio shape inference + layer graph + compute_static;\n"
          "onnx-tool the same calls on the ModelProto).  'static' = compute_static alone.")
    print("'tool shape+profile' = onnx-tool's shape_infer + profile alone, against 'static'.")
    print("'eff inspect' = load_onnx(read_weights=False) + compute_static (what `effstudio inspect` runs).")
    for clock, what in (("wall", "wall-clock time"), ("cpu", "process CPU time (steadier when other jobs share the "
                                                           "machine)")):
        print(f"\n{what}:")
        print(f"{'model':20s} {'eff file':>9s} {'tool file':>10s} {'ratio':>6s} {'eff inspect':>12s} {'ratio':>6s} "
              f"{'eff mem':>9s} {'tool mem':>9s} {'ratio':>6s} {'static':>8s} {'tool shape+profile':>19s}")
        for r in rows:
            t = r["times"][clock]
            ms = {k: (v * 1e3 if v is not None else None) for k, v in t.items()}
            if t["t_tool"] is None:
                print(f"{r['name']:20s} {ms['t_eff']:9.2f} {'FAILED':>10s} {'-':>6s} {ms['t_insp']:12.2f} "
                      f"{'-':>6s} {ms['t_eff_mem']:9.2f} {'FAILED':>9s} {'-':>6s} {ms['t_static']:8.2f}")
                continue
            print(f"{r['name']:20s} {ms['t_eff']:9.2f} {ms['t_tool']:10.2f} {t['t_tool'] / t['t_eff']:5.2f}x "
                  f"{ms['t_insp']:12.2f} {t['t_tool'] / t['t_insp']:5.2f}x "
                  f"{ms['t_eff_mem']:9.2f} {ms['t_tool_mem']:9.2f} {t['t_tool_mem'] / t['t_eff_mem']:5.2f}x "
                  f"{ms['t_static']:8.2f} {ms['t_tool_prof']:19.2f}")
        handled = [r["times"][clock] | {"name": r["name"]} for r in rows if r["times"][clock]["t_tool"] is not None]
        short = [f"{t['name']} ({t['t_tool'] / t['t_insp']:.2f}x)" for t in handled if t["t_tool"] < 3 * t["t_insp"]]
        print(f"goal, effstudio inspect >= 3x faster than onnx-tool from the file: met on "
              f"{len(handled) - len(short)} of the {len(handled)} models onnx-tool handles"
              + (f"; short on {', '.join(short)}" if short else ""))

    print("\nCounts in millions (MACs; FlopCounterMode FLOPs / 2)")
    print(f"{'model':20s} {'eff ONNX':>12s} {'eff torch':>12s} {'FlopCounter':>12s} "
          f"{'tool total':>12s} {'tool products':>14s} {'eff uncounted':>14s}")
    for r in rows:
        print(f"{r['name']:20s} {fmt(r['eff_macs']):>12s} {fmt(r['torch_macs']):>12s} {fmt(r['fc_macs']):>12s} "
              f"{fmt(r['tool_total']):>12s} {fmt(r['tool_products']):>14s} {r['eff_uncounted']:>14d}")
    for r in rows:
        if r["tool_error"]:
            print(f"  onnx-tool on {r['name']}: {r['tool_error']}")

    print("\nFootnotes")
    print(" 1. eff ONNX == eff torch == FlopCounterMode on every model: the same formulas (1 MAC per\n"
          "    multiply-accumulate of conv / matmul / gemm / attention / RNN) on both graphs, and\n"
          "    FlopCounterMode counts 2 FLOPs per MAC of the same products.")
    print(" 2. onnx-tool 'total' is not a MAC count: it adds every elementwise op weighted by an\n"
          "    instruction-cost table (exp = 32, div = 4, sqrt = 24, tanh ~ 38 'MACs' per element; BN,\n"
          "    ReLU, Add, Softmax, LayerNorm all enter), so it is above the product MACs, most on models\n"
          "    with many transcendental ops (GELU/Erf, Softmax in transformers; Sigmoid/Tanh in LSTMs).")
    print(" 3. onnx-tool 'products' (Conv/Gemm/MatMul/LSTM nodes only) still includes the bias add of\n"
          "    Conv and Gemm as 1 MAC per output element (we count it as 1 FLOP, not a MAC), and for\n"
          "    LSTM it adds its own gate-activation costs.  Any remaining gap is listed by the model.")
    print(" 4. effstudio FLOPs = 2 x MACs + elementwise work at 1 FLOP per element (softmax 5, norms\n"
          "    5-7, GELU 5); see MetricsTable.notes['macs'].")
    for r in rows:
        if r["tool_products"] is not None:
            gap = r["tool_products"] - r["eff_macs"]
            print(f"    {r['name']}: onnx-tool products - effstudio MACs = {gap / 1e6:,.3f} M "
                  f"({gap / max(r['eff_macs'], 1):+.2%})")
    print(" 5. Params (ONNX vs torch graph) differ where the exporter folds BatchNorm into Conv and\n"
          "    drops zero biases; the torch graph also counts BN running statistics (float buffers).")
    for r in rows:
        print(f"    {r['name']}: params ONNX {r['eff_params']:,} / torch graph {r['torch_params']:,}")


if __name__ == "__main__":
    main()

"""Latency of a torch module: end to end, and per layer from module hooks and per-op timing.

Eager modules: forward pre/post hooks on every module record a call tree per run; a module's
*self* time (its call minus its child modules' calls) is the time of the ops its own
``forward`` ran, i.e. of the layers whose ``scope`` is that module (for a leaf module, its
single layer named after it).  The root module's call covers the whole forward, so the layer
times add up to the end-to-end time plus the hooks' small overhead — measured on the very
module the user runs (fast paths such as ``nn.TransformerEncoderLayer``'s included).  A module
with several layers shares its self time in proportion to its ops' times measured by running
the exported FX graph node by node (:mod:`.fx_timing`); FLOPs only when that is unavailable.
``torch.profiler`` was not used: its per-op events nest, miss the Python between ops and cost
more per op than a hook per module.  Self time of a module that made no layer (the
``nn.Sequential`` loop, an ``nn.Dropout`` that export removed) is Python overhead and goes to
the ``(runtime)`` pseudo-layer.

A flat ``ExportedProgram.module()`` (``.pt2``) calls no submodules, so hooks see nothing: its
ops are timed node by node directly.  TorchScript modules take no hooks: end to end only.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import stats
from effstudio.core.latency.environment import environment
from effstudio.core.latency.fx_timing import fx_node_times, layer_times
from effstudio.core.latency.result import RUNTIME_KEY, LatencyResult, add_times, in_graph_order, split_time
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

MAX_PROFILED_RUNS = 50
FX_SPLIT_RUNS = 20


def _device(device: str):
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise EffstudioError("--device cuda: torch has no CUDA device here (a CPU-only build, "
                                 "or no GPU/driver)")
        return torch.device("cuda")
    raise EffstudioError(f"--device {device!r}: expected cpu or cuda")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_torch(loaded: LoadedModel, *, device: str, threads: int, plan: stats.RunPlan, per_layer: bool,
                  inputs: Mapping[str, np.ndarray], flops: Mapping[str, float] | None,
                  progress: Progress) -> LatencyResult:
    import torch

    dev = _device(device)
    sync: Callable[[], None] | None = torch.cuda.synchronize if dev.type == "cuda" else None
    module = loaded.torch_module
    moved = dev.type != "cpu"
    if moved:
        module.to(dev)
    kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
    try:
        with _threads(threads), torch.inference_mode():
            e2e_part = progress.sub(0.0, 0.5 if per_layer else 1.0)
            stats.warm_up(lambda: module(**kwargs), e2e_part, "warming up")
            times = stats.time_runs(lambda: module(**kwargs), plan, e2e_part, "timing end to end", sync=sync)
            e2e = stats.summarize(times)
            result = LatencyResult(
                backend="torch", device=device, threads=threads, e2e_ms=e2e,
                environment=environment("torch", device, threads, **_torch_env(dev)),
                method=f"median of {e2e['runs']} runs (p10–p90, CV)")
            if per_layer:
                _per_layer(loaded, module, kwargs, len(times), flops, sync, progress.sub(0.5, 1.0), result)
    finally:
        if moved:
            module.to("cpu")
    return result


def _torch_env(dev) -> dict:
    import torch

    out = {"torch_threads_interop": torch.get_num_interop_threads()}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


class _CallTree:
    """Forward pre/post hooks on every module that accumulate each module's self time (ns)."""

    def __init__(self, module, sync: Callable[[], None] | None) -> None:
        self.self_ns: dict[str, int] = {}
        self._stack: list[list] = []  # [name, start_ns, children_ns]
        self._sync = sync
        self._handles = []
        for name, m in module.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._pre(name)))
            self._handles.append(m.register_forward_hook(self._post(name), always_call=True))

    def _pre(self, name: str):
        def hook(_m, _args):
            if self._sync is not None:
                self._sync()
            self._stack.append([name, time.perf_counter_ns(), 0])
        return hook

    def _post(self, name: str):
        def hook(_m, _args, _out):
            if self._sync is not None:
                self._sync()
            end = time.perf_counter_ns()
            if not self._stack or self._stack[-1][0] != name:
                return  # a hook fired out of order (an exception unwound the stack): ignore it
            _, start, children = self._stack.pop()
            total = end - start
            self.self_ns[name] = self.self_ns.get(name, 0) + total - children
            if self._stack:
                self._stack[-1][2] += total
        return hook

    def take(self) -> dict[str, int]:
        out, self.self_ns, self._stack = self.self_ns, {}, []
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _per_layer(loaded: LoadedModel, module, kwargs, n_e2e: int, flops: Mapping[str, float] | None,
               sync: Callable[[], None] | None, progress: Progress, result: LatencyResult) -> None:
    import torch

    n = max(3, min(n_e2e, MAX_PROFILED_RUNS))
    producers = loaded.graph.producers()
    if isinstance(module, torch.jit.ScriptModule):
        result.method += "; per layer: not available for TorchScript (no module hooks, no FX graph)"
        return
    if isinstance(module, torch.fx.GraphModule):  # ExportedProgram.module(): flat, no module calls
        node_ms = fx_node_times(module, kwargs, n, progress, sync)
        per_layer, unmapped = layer_times(node_ms, producers)
        if unmapped:
            per_layer[RUNTIME_KEY] = sum(unmapped.values())
        result.per_layer_ms = in_graph_order(per_layer, loaded.graph.names())
        result.runtime_nodes = unmapped
        result.per_layer_runs = n
        how = f"each op of the exported graph timed node by node, median of {n} runs"
    else:
        tree = _CallTree(module, sync)
        per_run: list[dict[str, int]] = []
        hooks_part = progress.sub(0.0, 0.6 if loaded.exported is not None else 1.0)
        try:
            stats.warm_up(lambda: module(**kwargs), hooks_part, "warming up with hooks")
            tree.take()

            def run() -> None:
                module(**kwargs)
                per_run.append(tree.take())

            stats.time_runs(run, stats.RunPlan(runs=n), hooks_part, "timing per module")
        finally:
            tree.remove()
        names = {k for r in per_run for k in r}
        module_ms = {k: statistics.median(r.get(k, 0) for r in per_run) / 1e6 for k in names}
        measured: dict[str, float] = {}
        if loaded.exported is not None:
            # how a module's own time divides among its ops: measured on the exported graph
            gm = loaded.exported.module()
            if sync is not None:
                gm.to(next(iter(kwargs.values())).device)
            node_ms = fx_node_times(gm, kwargs, min(n, FX_SPLIT_RUNS), progress.sub(0.6, 1.0), sync)
            measured = layer_times(node_ms, producers)[0]
        assign_modules(loaded, module_ms, measured, flops, result)
        result.per_layer_runs = len(per_run)
        how = (f"module self times from forward hooks, median of {len(per_run)} runs; a module's time "
               "shared among its ops by their node-by-node times" if measured else
               f"module self times from forward hooks, median of {len(per_run)} runs")
    e2e_median = result.e2e_ms["median"]
    result.latency_sum_ratio = sum(result.per_layer_ms.values()) / e2e_median if e2e_median > 0 else None
    result.method += f"; per layer: {how}, sum/e2e = {result.latency_sum_ratio:.2f}"


def assign_modules(loaded: LoadedModel, module_ms: Mapping[str, float], measured: Mapping[str, float],
                   flops: Mapping[str, float] | None, result: LatencyResult) -> None:
    """Module self times -> layer times (layers whose scope is the module), the rest to (runtime).

    A module with several layers shares its time by ``measured`` op times when every one of
    them has one, else by static FLOPs, else equally."""
    by_scope: dict[str, list[str]] = {}
    for lay in loaded.graph.layers:
        by_scope.setdefault(lay.scope, []).append(lay.name)
    per_layer: dict[str, float] = {}
    runtime: dict[str, float] = {}
    fused: dict[str, list[str]] = {}
    for mod, ms in module_ms.items():
        layers = by_scope.get(mod)
        if not layers:
            runtime[mod or "(root)"] = ms
            continue
        weights = measured if all(measured.get(lay) for lay in layers) else flops
        add_times(per_layer, split_time(ms, layers, weights))
        if len(layers) > 1 or layers != [mod]:
            fused[mod or "(root)"] = layers
    if runtime:
        per_layer[RUNTIME_KEY] = sum(runtime.values())
    result.per_layer_ms = in_graph_order(per_layer, loaded.graph.names())
    result.fused = fused
    result.runtime_nodes = runtime

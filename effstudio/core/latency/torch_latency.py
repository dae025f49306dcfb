"""Latency of a torch module: end to end, and per layer from module hooks and per-op timing.

Eager modules: forward pre/post hooks on every module record a call tree per run; a module's
*self* time (its call minus its child modules' calls) is the time of the ops its own
``forward`` ran, i.e. of the layers whose ``scope`` is that module (for a leaf module, its
single layer named after it).  The root module's call covers the whole forward, so the layer
times add up to the end-to-end time — measured on the very module the user runs (fast paths
such as ``nn.TransformerEncoderLayer``'s included) — once three things are taken care of:

- the hooks cost 3–7 µs per module call (25 % of a 0.2 ms MLP of 8 modules): measured on the
  model itself as the median hooked run less the median plain run, it is taken out again and
  reported as ``overhead_ms``.  Part of it lands inside the called module's own window (the
  marks, the hook dispatch between them), the rest in its parent's self time (the hook code
  around the child's window); the share inside is measured on a chain of ``nn.Identity`` with
  the same clock (:func:`.torch_hooks.inside_share`);
- a per-module median drops each module's slow runs while the median run keeps its one slow
  module, so on a busy machine the sum of medians fell to 0.2× the end-to-end median: a module
  gets its mean over the typical runs instead (:func:`.stats.typical_breakdown`);
- load drifts between phases, so each hooked run alternates with a timed end-to-end run
  (the hooks are attached for that run only);
- ``nn.TransformerEncoderLayer`` leaves its fused fast path when it or a child has a hook
  (the ViT demo ran 1.17× slower hooked): it is timed whole through a ``forward`` wrapper, and
  its time covers the layers of its subtree (:func:`.torch_hooks.opaque_modules`).

A module with several layers shares its self time in proportion to its ops' times measured by running
the exported FX graph node by node (:mod:`.fx_timing`); FLOPs only when that is unavailable.
``torch.profiler`` was not used: its per-op events nest, miss the Python between ops and cost
more per op than a hook per module.  Self time of a module that made no layer (the
``nn.Sequential`` loop, an ``nn.Dropout`` that export removed) is Python overhead and goes to
the ``(runtime)`` pseudo-layer.

On CUDA the marks are CUDA events (:mod:`.clock`): a host clock there would time the
asynchronous launches, and synchronizing at each boundary serializes launch and execution.

A flat ``ExportedProgram.module()`` (``.pt2``) calls no submodules, so hooks see nothing: its
ops are timed node by node directly.  TorchScript modules take no hooks: end to end only.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import stats
from effstudio.core.latency.clock import Clock, clock_for
from effstudio.core.latency.environment import environment
from effstudio.core.latency.fx_timing import fx_node_times, layer_times
from effstudio.core.latency.result import RUNTIME_KEY, LatencyResult, add_times, in_graph_order, split_time
from effstudio.core.latency.torch_hooks import HookRuns, inside_share
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
    clock = clock_for(dev.type)
    module = loaded.torch_module
    moved = dev.type != "cpu"
    if moved:
        module.to(dev)
    kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
    try:
        with _threads(threads), torch.inference_mode():
            hooks = HookRuns(module, clock, sync) if per_layer and _hookable(module) else None
            e2e_part = progress.sub(0.0, 0.5 if per_layer else 1.0)

            def plain() -> None:
                module(**kwargs)

            stats.warm_up(plain, e2e_part, "warming up")
            between = None
            if hooks is not None:
                stats.warm_up(lambda: hooks.run(plain), e2e_part, "warming up with hooks")
                hooks.clear()

                def between() -> None:  # a hooked run after each timed one: both see the same load
                    if len(hooks) < MAX_PROFILED_RUNS:
                        hooks.run(plain)

            times = stats.time_runs(plain, plan, e2e_part, "timing end to end", sync=sync, between=between)
            e2e = stats.summarize(times)
            result = LatencyResult(
                backend="torch", device=device, threads=threads, e2e_ms=e2e,
                environment=environment("torch", device, threads, **_torch_env(dev)),
                method=f"median of {e2e['runs']} runs (p10–p90, CV)")
            if per_layer:
                _per_layer(loaded, module, kwargs, times, hooks, flops, clock, progress.sub(0.5, 1.0), result)
    finally:
        if moved:
            module.to("cpu")
    return result


def _hookable(module) -> bool:
    import torch

    return not isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule))


def _torch_env(dev) -> dict:
    import torch

    out = {"torch_threads_interop": torch.get_num_interop_threads()}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def _per_layer(loaded: LoadedModel, module, kwargs, times: Sequence[float], hooks: HookRuns | None,
               flops: Mapping[str, float] | None, clock: Clock, progress: Progress,
               result: LatencyResult) -> None:
    import torch

    n = max(3, min(len(times), MAX_PROFILED_RUNS))
    producers = loaded.graph.producers()
    if isinstance(module, torch.jit.ScriptModule):
        result.method += "; per layer: not available for TorchScript (no module hooks, no FX graph)"
        return
    if hooks is None:  # ExportedProgram.module(): a flat GraphModule, no module calls
        node_ms = fx_node_times(module, kwargs, n, progress, clock)
        per_layer, unmapped = layer_times(node_ms, producers)
        if unmapped:
            per_layer[RUNTIME_KEY] = sum(unmapped.values())
        result.per_layer_ms = in_graph_order(per_layer, loaded.graph.names())
        result.runtime_nodes = unmapped
        result.per_layer_runs = n
        how = f"each op of the exported graph timed node by node, mean of the typical fifth of {n} runs (by total)"
    else:
        while len(hooks) < 3:  # a slow model: fewer end-to-end runs than that
            hooks.run(lambda: module(**kwargs))
        per_call = hooks.per_call_ms(times)
        device = next(iter(kwargs.values())).device if kwargs else torch.device("cpu")
        inside = inside_share(clock, torch.cuda.synchronize if clock.device == "cuda" else None, device)
        module_ms = hooks.module_ms(per_call, inside)
        result.overhead_ms = per_call * statistics.median(hooks.calls)
        measured: dict[str, float] = {}
        split_note = ""
        if loaded.exported is not None:
            # how a module's own time divides among its ops: measured on the exported graph
            gm = loaded.exported.module()
            try:
                if clock.device != "cpu":
                    gm.to(device)
                node_ms = fx_node_times(gm, kwargs, min(n, FX_SPLIT_RUNS), progress, clock)
                measured = layer_times(node_ms, producers)[0]
            except RuntimeError as exc:
                # an exported graph can hold the export device in its nodes (the LSTM's zero
                # state, transformers' mask checks): it does not run on another device
                split_note = (f"; the exported graph did not run on {clock.device} "
                              f"({str(exc).splitlines()[0][:120]}): a module's time shared by FLOPs")
        assign_modules(loaded, module_ms, measured, flops, result, frozenset(hooks.tree.opaque))
        result.per_layer_runs = len(hooks)
        how = (f"module self times from forward hooks (runs alternating with the end-to-end ones) less the "
               f"hooks' cost ({per_call * 1e3:.1f} µs per module call: hooked minus plain runs; "
               f"{inside:.0%} of it inside the module's own window, measured on a chain of no-op modules), "
               f"mean of the typical fifth of {len(hooks)} runs (ranked by total)")
        if measured:
            how += "; a module's time shared among its ops by their node-by-node times"
        how += split_note
    e2e_median = result.e2e_ms["median"]
    result.latency_sum_ratio = sum(result.per_layer_ms.values()) / e2e_median if e2e_median > 0 else None
    result.sum_ratio_e2e_ms = e2e_median
    result.method += f"; per layer: {how}, sum/e2e = {result.latency_sum_ratio:.2f}"


def assign_modules(loaded: LoadedModel, module_ms: Mapping[str, float], measured: Mapping[str, float],
                   flops: Mapping[str, float] | None, result: LatencyResult, opaque: frozenset[str] = frozenset()
                   ) -> None:
    """Module self times -> layer times (layers whose scope is the module), the rest to (runtime).

    A module with several layers shares its time by ``measured`` op times when every one of
    them has one, else by static FLOPs, else equally.  An ``opaque`` module (timed whole) covers
    the layers of its whole subtree."""
    by_scope: dict[str, list[str]] = {}
    for lay in loaded.graph.layers:
        scope = next((o for o in opaque if lay.scope == o or lay.scope.startswith(o + ".")), lay.scope)
        by_scope.setdefault(scope, []).append(lay.name)
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

"""Latency of a torch module: end to end, and per layer from module hooks and per-op timing.

Eager modules: forward pre/post hooks on every module record a call tree per run; a module's
*self* time (its call minus its child modules' calls) is the time of the ops its own
``forward`` ran, i.e. of the layers whose ``scope`` is that module (for a leaf module, its
single layer named after it).  The root module's call covers the whole forward, so the layer
times add up to the end-to-end time — measured on the very module the user runs (fast paths
such as ``nn.TransformerEncoderLayer``'s included) — once three things are taken care of:

- the hooks cost 3–7 µs per module call (25 % of a 0.2 ms MLP of 8 modules): measured on the
  model itself as the median hooked run less the median plain run, it is taken out of the
  parents' self times (where the dispatch around a child's window lands) and reported as
  ``overhead_ms``.  (Measured on a chain of ``nn.Identity`` instead it came out ~40 % low:
  hook code runs colder between real kernels);
- a per-module median drops each module's slow runs while the median run keeps its one slow
  module, so on a busy machine the sum of medians fell to 0.2× the end-to-end median: a module
  gets its mean over the typical runs instead (:func:`.stats.typical_breakdown`);
- load drifts between phases, so each hooked run alternates with a timed end-to-end run
  (the hooks are attached for that run only);
- ``nn.TransformerEncoderLayer`` leaves its fused fast path when it or a child has a hook
  (the ViT demo ran 1.17× slower hooked): it is timed whole through a ``forward`` wrapper, and
  its time covers the layers of its subtree (:func:`opaque_modules`).

A module with several layers shares its self time in proportion to its ops' times measured by running
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
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import stats
from effstudio.core.latency.clock import Clock, clock_for
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
    clock = clock_for(dev.type)
    module = loaded.torch_module
    moved = dev.type != "cpu"
    if moved:
        module.to(dev)
    kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
    try:
        with _threads(threads), torch.inference_mode():
            hooks = _HookRuns(module, clock, sync) if per_layer and _hookable(module) else None
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


def opaque_modules(module) -> set[str]:
    """Modules timed whole, through their ``forward`` rather than hooks: those whose fast path
    any hook in them turns off (``nn.TransformerEncoderLayer`` checks for hooks on itself and its
    children and falls back to the slow path; hooking it timed a different model)."""
    import torch

    return {name for name, m in module.named_modules() if isinstance(m, torch.nn.TransformerEncoderLayer)}


class _Unwrap:
    def __init__(self, m, saved) -> None:
        self._m, self._saved = m, saved

    def remove(self) -> None:
        if self._saved is None:
            del self._m.forward
        else:
            self._m.forward = self._saved


def _wrap_forward(m, pre, post) -> _Unwrap:
    """Time ``m`` by an instance-level ``forward`` wrapper calling the hook functions: no hook is
    registered, so fast paths that look for hooks stay on."""
    saved = m.__dict__.get("forward")
    inner = saved if saved is not None else type(m).forward.__get__(m)

    def forward(*args, **kwargs):
        pre(m, args)
        out = None
        try:
            out = inner(*args, **kwargs)
        finally:
            post(m, args, out)
        return out

    m.forward = forward
    return _Unwrap(m, saved)


class _CallTree:
    """Forward pre/post hooks on every module that accumulate, per run, each module's self time
    (ns), how often it was called and how many child-module calls it made.

    The hooks only take marks of the :class:`~.clock.Clock` (host clock or CUDA events) and
    note the call; the arithmetic waits for :meth:`take`, after the run, when CUDA events
    have times."""

    def __init__(self, module, clock: Clock) -> None:
        self.last_calls = 0  # module calls in the run last taken
        self._records: list[list] = []  # [name, start mark, end mark or None, parent record index]
        self._stack: list[int] = []  # indices of the records of the modules running now
        self._clock = clock
        self._handles: list = []
        self.opaque = opaque_modules(module)
        self._hooks = [(m, name, self._pre(name), self._post(name)) for name, m in module.named_modules()
                       if not any(name.startswith(o + ".") for o in self.opaque)]
        self.attach()

    def attach(self) -> None:
        """Register the hooks (again); a few µs per module, outside any timed window."""
        if not self._handles:
            for m, name, pre, post in self._hooks:
                if name in self.opaque:
                    self._handles.append(_wrap_forward(m, pre, post))
                    continue
                self._handles.append(m.register_forward_pre_hook(pre))
                self._handles.append(m.register_forward_hook(post, always_call=True))

    def _pre(self, name: str):
        def hook(_m, _args):
            parent = self._stack[-1] if self._stack else None
            self._stack.append(len(self._records))
            self._records.append([name, self._clock.mark(), None, parent])
        return hook

    def _post(self, name: str):
        def hook(_m, _args, _out):
            end = self._clock.mark()
            if not self._stack or self._records[self._stack[-1]][0] != name:
                return  # a hook fired out of order (an exception unwound the stack): ignore it
            self._records[self._stack.pop()][2] = end
        return hook

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        """This run's (self time in ns, child-module calls) per module; resets."""
        self._clock.settle()
        records, self._records, self._stack = self._records, [], []
        totals = [None if end is None else self._clock.ns(start, end) for _, start, end, _ in records]
        self_ns: dict[str, int] = {}
        child_calls: dict[str, int] = {}
        calls = 0
        for (name, _, _, parent), total in zip(records, totals, strict=True):
            if total is None:
                continue
            calls += 1
            self_ns[name] = self_ns.get(name, 0) + total
            if parent is not None and totals[parent] is not None:
                pname = records[parent][0]
                self_ns[pname] = self_ns.get(pname, 0) - total
                child_calls[pname] = child_calls.get(pname, 0) + 1
        self._clock.reset()
        self.last_calls = calls
        return self_ns, child_calls

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _HookRuns:
    """Hooked runs of an eager module: per run its modules' self times and child-module calls.

    The hooks are attached only for these runs, so that plain end-to-end runs can alternate with
    them, and the hooks' own cost can be measured as the difference of the two."""

    def __init__(self, module, clock: Clock, sync: Callable[[], None] | None) -> None:
        self.tree = _CallTree(module, clock)
        self.tree.remove()
        self.self_ns: list[dict[str, int]] = []
        self.child_calls: list[dict[str, int]] = []
        self.calls: list[int] = []
        self.wall_ms: list[float] = []
        self._sync = sync

    def run(self, fn: Callable[[], object]) -> None:
        self.tree.take()
        self.tree.attach()
        try:
            t0 = time.perf_counter_ns()
            fn()
            if self._sync is not None:
                self._sync()
            wall = (time.perf_counter_ns() - t0) / 1e6
        finally:
            self.tree.remove()
        own, children = self.tree.take()
        self.self_ns.append(own)
        self.child_calls.append(children)
        self.calls.append(self.tree.last_calls)
        self.wall_ms.append(wall)

    def clear(self) -> None:
        for runs in (self.self_ns, self.child_calls, self.calls, self.wall_ms):
            runs.clear()

    def __len__(self) -> int:
        return len(self.self_ns)

    def per_call_ms(self, plain_ms: Sequence[float]) -> float:
        """The hooks' cost per module call: median hooked run less median plain run, per call."""
        calls = statistics.median(self.calls)
        if not calls:
            return 0.0
        return max(0.0, statistics.median(self.wall_ms) - statistics.median(plain_ms)) / calls

    def module_ms(self, per_call_ms: float) -> dict[str, float]:
        """Module -> self time (ms) of a typical run, each module less ``per_call_ms`` per child
        call it made (the hook dispatch around a child's window lands in its parent's self time)."""
        per_call_ns = per_call_ms * 1e6
        runs = [{k: max(0.0, v - children.get(k, 0) * per_call_ns) for k, v in own.items()}
                for own, children in zip(self.self_ns, self.child_calls, strict=True)]
        return {k: v / 1e6 for k, v in stats.typical_breakdown(runs).items()}


def _per_layer(loaded: LoadedModel, module, kwargs, times: Sequence[float], hooks: _HookRuns | None,
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
        module_ms = hooks.module_ms(per_call)
        result.overhead_ms = per_call * statistics.median(hooks.calls)
        measured: dict[str, float] = {}
        if loaded.exported is not None:
            # how a module's own time divides among its ops: measured on the exported graph
            gm = loaded.exported.module()
            if clock.device != "cpu":
                gm.to(next(iter(kwargs.values())).device)
            node_ms = fx_node_times(gm, kwargs, min(n, FX_SPLIT_RUNS), progress, clock)
            measured = layer_times(node_ms, producers)[0]
        assign_modules(loaded, module_ms, measured, flops, result, frozenset(hooks.tree.opaque))
        result.per_layer_runs = len(hooks)
        how = (f"module self times from forward hooks (runs alternating with the end-to-end ones) less the "
               f"hooks' cost ({per_call * 1e3:.1f} µs per module call: hooked minus plain runs), mean of the "
               f"typical fifth of {len(hooks)} runs (ranked by total)")
        if measured:
            how += "; a module's time shared among its ops by their node-by-node times"
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

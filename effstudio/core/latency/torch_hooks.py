"""Forward hooks that time every module of an eager torch model (see :mod:`.torch_latency`).

A :class:`CallTree` takes a :class:`~.clock.Clock` mark as each module starts and ends; after
the run the marks become each module's *self* time (its window less its child modules'
windows).  :class:`HookRuns` keeps those per run together with the run's wall time, so that the
hooks' own cost can be measured (hooked minus plain runs) and taken out again, split between the
module's own window and its parent by :func:`inside_share`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from effstudio.core.latency import stats
from effstudio.core.latency.clock import Clock


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


class CallTree:
    """Forward pre/post hooks on every module that accumulate, per run, each module's self time
    (ns), how often it was called and how many child-module calls it made.

    The hooks only take marks of the :class:`~.clock.Clock` (host clock or CUDA events) and
    note the call; the arithmetic waits for :meth:`take`, after the run, when CUDA events
    have times."""

    def __init__(self, module, clock: Clock) -> None:
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

    def take(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """This run's (self time in ns, child-module calls, own calls) per module; resets."""
        self._clock.settle()
        records, self._records, self._stack = self._records, [], []
        totals = [None if end is None else self._clock.ns(start, end) for _, start, end, _ in records]
        self_ns: dict[str, int] = {}
        child_calls: dict[str, int] = {}
        own_calls: dict[str, int] = {}
        for (name, _, _, parent), total in zip(records, totals, strict=True):
            if total is None:
                continue
            own_calls[name] = own_calls.get(name, 0) + 1
            self_ns[name] = self_ns.get(name, 0) + total
            if parent is not None and totals[parent] is not None:
                pname = records[parent][0]
                self_ns[pname] = self_ns.get(pname, 0) - total
                child_calls[pname] = child_calls.get(pname, 0) + 1
        self._clock.reset()
        return self_ns, child_calls, own_calls

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class HookRuns:
    """Hooked runs of an eager module: per run its modules' self times and child-module calls.

    The hooks are attached only for these runs, so that plain end-to-end runs can alternate with
    them, and the hooks' own cost can be measured as the difference of the two."""

    def __init__(self, module, clock: Clock, sync: Callable[[], None] | None) -> None:
        self.tree = CallTree(module, clock)
        self.tree.remove()
        self.self_ns: list[dict[str, int]] = []
        self.child_calls: list[dict[str, int]] = []
        self.own_calls: list[dict[str, int]] = []
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
        own, children, calls = self.tree.take()
        self.self_ns.append(own)
        self.child_calls.append(children)
        self.own_calls.append(calls)
        self.calls.append(sum(calls.values()))
        self.wall_ms.append(wall)

    def clear(self) -> None:
        for runs in (self.self_ns, self.child_calls, self.own_calls, self.calls, self.wall_ms):
            runs.clear()

    def __len__(self) -> int:
        return len(self.self_ns)

    def per_call_ms(self, plain_ms: Sequence[float]) -> float:
        """The hooks' cost per module call: median hooked run less median plain run, per call."""
        calls = statistics.median(self.calls)
        if not calls:
            return 0.0
        return max(0.0, statistics.median(self.wall_ms) - statistics.median(plain_ms)) / calls

    def module_ms(self, per_call_ms: float, inside: float = 0.0) -> dict[str, float]:
        """Module -> self time (ms) of a typical run, the hooks' cost taken out: ``per_call_ms``
        per module call, the share ``inside`` from the called module's own window (the marks
        and the hook dispatch between them), the rest from its parent's self time (the hook
        code around the child's window), see :func:`inside_share`."""
        child_ns = per_call_ms * (1.0 - inside) * 1e6
        own_ns = per_call_ms * inside * 1e6
        runs = [{k: max(0.0, v - children.get(k, 0) * child_ns - calls.get(k, 0) * own_ns) for k, v in own.items()}
                for own, children, calls in zip(self.self_ns, self.child_calls, self.own_calls, strict=True)]
        return {k: v / 1e6 for k, v in stats.typical_breakdown(runs).items()}


PROBE_MODULES = 32
PROBE_RUNS = 40
PROBE_WARMUP = 5


def inside_share(clock: Clock, sync: Callable[[], None] | None, device) -> float:
    """The share of the hooks' cost per module call that lands inside the called module's own
    window, measured on a chain of ``nn.Identity`` (no work: a window holds nothing but hook
    cost) timed with the same clock on the same device, alternating plain and hooked runs.

    Taking the whole cost out of the parents (the first version) left the in-window part in
    every leaf: on an H100, where the small demos are launch-bound, the CNNs' layer times came
    to 1.4–1.55× their run.  The chain only gives the share; the cost itself is measured on
    the model (on a chain of no-ops it came out ~40 % low: hook code runs colder between real
    kernels)."""
    import torch

    net = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(PROBE_MODULES)])
    x = torch.zeros(1, device=device)
    hooks = HookRuns(net, clock, sync)
    plain: list[float] = []

    def run() -> None:
        net(x)

    for i in range(PROBE_WARMUP + PROBE_RUNS):
        t0 = time.perf_counter_ns()
        run()
        if sync is not None:
            sync()
        if i >= PROBE_WARMUP:
            plain.append((time.perf_counter_ns() - t0) / 1e6)
        hooks.run(run)
    for runs in (hooks.self_ns, hooks.child_calls, hooks.own_calls, hooks.calls, hooks.wall_ms):
        del runs[:PROBE_WARMUP]
    per_call = hooks.per_call_ms(plain)
    if per_call <= 0:
        return 0.0
    leaves = [str(i) for i in range(PROBE_MODULES)]
    window_ms = statistics.median(sum(own.get(k, 0) for k in leaves) / len(leaves) / 1e6 for own in hooks.self_ns)
    return min(1.0, max(0.0, window_ms / per_call))

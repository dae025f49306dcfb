"""SmoothQuant-style activation smoothing for dynamic int8 MatMuls, and the per-input choice of
weight format, done on the ONNX graph before onnxruntime's ``quantize_dynamic`` runs.

Why here: dynamic int8 quantizes each activation with *one* scale per call, so a few outlier
channels (BERT's LayerNorm outputs have one ~20× the median) leave the other channels a handful of
levels.  SmoothQuant (Xiao et al. 2023) divides activation channel j by
``s_j = max|X_j|^alpha / max|W_j,:|^(1-alpha)`` and multiplies row j of the weights by it: the
float product is unchanged, the outliers move into the per-channel-quantized weights.
onnxruntime offers SmoothQuant only in static quantization through neural-compressor (not a
dependency here), so the fold is written here as numpy on the initializers.

Where the ``1/s`` goes (:func:`_fold_plan`, walking back from the activation through ops that
have a single consumer): a LayerNormalization's scale and bias; a constant operand of a Mul (the
0.5 of an exported erf-GELU); the columns (and bias) of a MatMul that produces it, also through
Relu, Reshape / Transpose and the value side of an attention MatMul (the attention output projection's
input is the V projection's columns, rearranged by head).  When the activation has other readers
(a post-LN transformer's LayerNorm output also feeds the residual Add) a ``Mul`` by ``1/s`` is
inserted before the MatMuls instead, which costs an elementwise op per input.  Every fold is
checked numerically on the calibration inputs (the new activation must equal the old one divided
by ``s``); a fold that fails is replaced by a Mul.

The choice per input (``alpha`` from a grid or none, per-channel or per-tensor weights, 8- or
7-bit) is the one with the least error of the emulated int8 product on the calibration
activations (:mod:`._int8_emulation`, which models the u8×s8 saturation of CPUs without VNNI),
scored two-fold (:class:`_Scorer`), unless a cheaper one (no inserted Mul, then per-tensor
weights) comes within the tolerance (:func:`_pick`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from effstudio.core.compress.base import CompressError
from effstudio.core.compress.techniques import _int8_emulation as E
from effstudio.core.compress.techniques import _onnx_quant_util as U

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # tried by smooth "auto" (and no smoothing)
# ops a per-channel scale passes through unchanged (s > 0 commutes with Relu); Reshape / Transpose
# only where they keep the channel order, which the numerical check confirms
_PASS = frozenset({"Reshape", "Transpose", "Identity", "Relu"})
_NORMS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"})
_MAX_ROWS = 2048  # calibration rows kept per input for the emulation (whole calls, at least one)
_CHUNK = 16  # groups whose activations are held at once
_SCORE_ROWS = 512  # rows per fold the error is measured on (evenly spaced; each call is still quantized whole)
_TOL = 1e-4


@dataclass
class Group:
    """The selected MatMuls that read one activation (they share its dynamic quantization)."""

    tensor: str
    nodes: list[str]
    weights: list[str]  # their weight initializers, in node order


@dataclass
class Choice:
    """What was chosen for one group, and the emulated relative errors it was chosen by."""

    group: Group
    alpha: float | None
    per_channel: bool
    reduce_range: bool
    error: float  # emulated relative error of the chosen option
    error_plain: float  # ... of the same weight granularity without smoothing
    error_default: float  # ... of per-channel 8-bit weights (the technique's default), unsmoothed
    how: str = ""  # "folded into <node>" | "Mul inserted" | "" (no smoothing)
    folded: list[str] = field(default_factory=list)  # nodes whose constants took 1/s
    scale: np.ndarray | None = field(default=None, repr=False)


def find_groups(proto, nodes: list[str]) -> list[Group]:
    """Groups of the named MatMuls by the activation they read (graph order); a MatMul whose weight
    is not a 2-D constant used by it alone is left out (smoothing would change its other readers)."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    uses = U.consumers(g)
    wanted = set(nodes)
    groups: dict[str, Group] = {}
    for node in g.node:
        if node.name not in wanted or node.op_type != "MatMul" or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in inits or len(inits[w].dims) != 2 or len(uses.get(w, [])) != 1 or node.input[0] == w:
            continue
        grp = groups.setdefault(node.input[0], Group(node.input[0], [], []))
        grp.nodes.append(node.name)
        grp.weights.append(w)
    return list(groups.values())


def _session(proto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _with_outputs(proto, tensors: list[str]):
    from onnx import helper

    out = U.copy_proto(proto)
    have = {o.name for o in out.graph.output}
    for t in tensors:
        if t not in have:
            out.graph.output.append(helper.make_value_info(t, helper.TypeProto()))
    return out


def activations(proto, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Each tensor's value in each call, flattened to ``[rows, channels]`` (calls up to _MAX_ROWS rows)."""
    sess = _session(_with_outputs(proto, tensors))
    out: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    rows = 0
    for f in feeds:
        vals = sess.run(tensors, f)
        for t, v in zip(tensors, vals, strict=True):
            out[t].append(np.asarray(v, np.float32).reshape(-1, v.shape[-1]))
        rows += out[tensors[0]][-1].shape[0] if tensors else 0
        if rows >= _MAX_ROWS:
            break
    return out


def smoothing_scale(amax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_j,:|^(1-alpha) (weights: max over all of them; 1
    where either is 0), clipped to [1e-5, 1e5].

    Each channel's activation maximum is first floored at the median channel's: a channel that was
    quiet on the calibration inputs would otherwise get s_j < 1, be amplified, and become the new
    outlier on an input where it is not quiet (MiniLM's FFN output projections: the held-out error
    at alpha 0.7 was 0.0138 against 0.0129 with the floor, and two-fold cross-validation on the
    calibration inputs, which the choice is made by, 0.0384 against 0.0122)."""
    wmax = np.max([np.abs(w).max(1) for w in weights], axis=0).astype(np.float64)
    a = np.maximum(amax.astype(np.float64), float(np.median(amax)))
    ok = (a > 0) & (wmax > 0)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


# --- folding 1/s into the graph ------------------------------------------------------------------
def _fold_plan(g, tensor: str, uses, producer, inits, depth: int = 0) -> list[tuple[str, str]] | None:
    """How to divide channel j (last axis) of ``tensor`` by s_j by editing constants: a list of
    (node name, constant input name), each to be multiplied by 1/s along its last axis, or None
    when no such edit exists.  Every tensor on the way has the next op as its only reader."""
    if depth > 8 or tensor not in producer:
        return None
    p = producer[tensor]
    if p.op_type in _NORMS:
        if int(U.attr(p, "axis", -1)) != -1 or len(p.input) < 2 or p.input[1] not in inits:
            return None
        return [(p.name, i) for i in p.input[1:3] if i and i in inits]
    if p.op_type == "Mul" and len(p.input) == 2 and p.input[0] != p.input[1]:
        const = next((i for i in reversed(p.input) if i in inits), None)
        if const is not None:  # x * c: scale c (a scalar becomes a vector)
            return [(p.name, const)]
        for i in p.input:  # x * y: scale whichever factor can be
            if len(uses.get(i, [])) == 1:
                sub = _fold_plan(g, i, uses, producer, inits, depth + 1)
                if sub is not None:
                    return sub
        return None
    if p.op_type == "Add" and len(p.input) == 2:  # x + c: scale both
        for i, other in ((p.input[1], p.input[0]), (p.input[0], p.input[1])):
            if i in inits and other not in inits and len(uses.get(other, [])) == 1:
                sub = _fold_plan(g, other, uses, producer, inits, depth + 1)
                return None if sub is None else [*sub, (p.name, i)]
        return None
    if p.op_type in _PASS and len(uses.get(p.input[0], [])) == 1:
        return _fold_plan(g, p.input[0], uses, producer, inits, depth + 1)
    if p.op_type == "MatMul" and len(p.input) == 2 and p.input[0] != p.input[1]:
        if p.input[1] in inits and len(inits[p.input[1]].dims) == 2:
            return [(p.name, p.input[1])]
        if len(uses.get(p.input[1], [])) == 1:  # attention: probabilities @ V keeps V's channels
            return _fold_plan(g, p.input[1], uses, producer, inits, depth + 1)
    return None


def _edit_const(g, node_name: str, name: str, inv: np.ndarray, inits, uses) -> None:
    """Multiply constant ``name`` (input of ``node_name``) by ``inv`` along its last axis; a constant
    read by other nodes too is copied first, so only this node sees the change."""
    from onnx import numpy_helper

    node = next(n for n in g.node if n.name == node_name)
    value = numpy_helper.to_array(inits[name])
    if value.ndim and value.shape[-1] not in (1, len(inv)):
        raise CompressError(f"smoothing: {name} has {value.shape[-1]} channels, expected {len(inv)}")
    new = (value.astype(np.float64) * inv.astype(np.float64)).astype(value.dtype)
    if len(uses.get(name, [])) > 1:
        new_name = f"{name}_smooth_{node_name}"
        g.initializer.append(numpy_helper.from_array(new, new_name))
        node.input[:] = [new_name if i == name else i for i in node.input]
        inits[new_name] = g.initializer[-1]
        uses[name] = [n for n in uses[name] if n.name != node_name]
        uses[new_name] = [node]
    else:
        inits[name].CopyFrom(numpy_helper.from_array(new, name))


def _apply(g, ch: Choice, plan: list[tuple[str, str]] | None) -> None:
    """Edit graph ``g`` in place for one smoothed group: weight rows times s; 1/s folded by ``plan``
    or, without one, a Mul inserted right after the activation is made."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in g.initializer}
    uses = U.consumers(g)
    grp, s = ch.group, ch.scale
    assert s is not None
    inv = (1.0 / s.astype(np.float64)).astype(np.float32)
    for w in grp.weights:
        value = numpy_helper.to_array(inits[w])
        inits[w].CopyFrom(numpy_helper.from_array((value * s[:, None]).astype(value.dtype), w))
    if plan is not None:
        for node_name, name in plan:
            _edit_const(g, node_name, name, inv, inits, uses)
        # a scalar constant became a vector: recorded shapes of it and of what it feeds may be stale
        stale = {name for _, name in plan} | {o for n in g.node if n.name in {p[0] for p in plan} for o in n.output}
        for vi in [v for v in g.value_info if v.name in stale]:
            g.value_info.remove(vi)
        for inp in g.input:
            if inp.name in stale and inp.type.HasField("tensor_type"):
                inp.type.tensor_type.ClearField("shape")
        ch.how = f"folded into {plan[0][0]}"
        ch.folded = list(dict.fromkeys(n for n, _ in plan))
        return
    inv_name = f"{grp.tensor}_smooth_inv"
    g.initializer.append(numpy_helper.from_array(inv, inv_name))
    out = f"{grp.tensor}_smoothed"
    mul = helper.make_node("Mul", [grp.tensor, inv_name], [out], name=f"{grp.nodes[0]}_smooth")
    for n in g.node:
        if n.name in grp.nodes:
            n.input[0] = out
    at = next((i + 1 for i, n in enumerate(g.node) if grp.tensor in n.output), 0)
    g.node.insert(at, mul)
    ch.how = "Mul inserted"


def smoothed_input(ch: Choice) -> str:
    """The tensor the group's MatMuls read after :func:`smooth_and_choose`."""
    return f"{ch.group.tensor}_smoothed" if ch.how == "Mul inserted" else ch.group.tensor


def check_smoothing(original, smoothed, choices: list[Choice], feeds) -> list[Choice]:
    """The smoothed choices whose new input is not the old one divided by s on the calibration
    inputs (within 1e-4 of its largest value): their fold is wrong and must be replaced."""
    done = [c for c in choices if c.scale is not None]
    if not done:
        return []
    before = activations(original, [c.group.tensor for c in done], feeds[:4])
    after = activations(smoothed, [smoothed_input(c) for c in done], feeds[:4])
    bad = []
    for c in done:
        for x, y in zip(before[c.group.tensor], after[smoothed_input(c)], strict=True):
            want = x / c.scale
            if np.abs(y - want).max() > _TOL * max(1e-12, float(np.abs(want).max())):
                bad.append(c)
                break
    return bad


# --- choosing --------------------------------------------------------------------------------------
# emulated errors (and whether the 8-bit product saturated) by content, so a search that re-applies
# the step reuses them
_ERRORS: dict[tuple, float] = {}
_SATURATED: dict[tuple, bool] = {}


def _digest(arrays: list[np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha1()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


class _Scorer:
    """Emulated relative error of one group's options, two-fold: the smoothing scale is calibrated on
    every other call and the error measured on the calls between, then the other way round, averaged.
    Scored on the calls it was calibrated on, a strong alpha looks best (0.9 on MiniLM's FFN output
    projections) by fitting those calls' channel maxima, and is worse on new inputs; the two-fold
    score ranks the options as the error on held-out sentences does."""

    def __init__(self, calls: list[np.ndarray], weights: list[np.ndarray], saturate: bool,
                 prune_7bit: bool = False) -> None:
        self.calls, self.weights, self.saturate, self.prune_7bit = calls, weights, saturate, prune_7bit
        self.key = (_digest(weights), _digest(calls), saturate)
        self.folds: list[list[np.ndarray]] | None = None

    def _setup(self) -> None:
        calls = self.calls
        folds = [calls[0::2], calls[1::2]] if len(calls) > 1 else [calls, calls]
        self.rows = []
        self.refs = []
        for f in folds:
            n = sum(len(x) for x in f)
            rows = np.unique(np.linspace(0, n - 1, min(n, _SCORE_ROWS)).round().astype(np.int64))
            stacked = np.concatenate(f)[rows].astype(np.float64)
            self.rows.append(rows)
            self.refs.append([stacked @ w.astype(np.float64) for w in self.weights])
        self.amax = [np.max([np.abs(x).max(0) for x in f], axis=0) for f in folds]
        self._quantized: dict[tuple[float | None, int], tuple] = {}
        self.folds = folds

    def _calls(self, alpha: float | None, test: int) -> tuple[np.ndarray | None, tuple]:
        """(scale, the test fold's calls quantized as onnxruntime would, at the scored rows)."""
        assert self.folds is not None
        scale = None if alpha is None else smoothing_scale(self.amax[1 - test], self.weights, alpha)
        if (alpha, test) not in self._quantized:
            calls = self.folds[test]
            a, sa, za = E.quantize_calls(calls if scale is None else [x / scale for x in calls])
            rows = self.rows[test]
            self._quantized[(alpha, test)] = (a[rows], sa[rows], za[rows])
        return scale, self._quantized[(alpha, test)]

    def error(self, per_channel: bool, reduce_range: bool, alpha: float | None = None) -> float:
        """Two-fold emulated relative error.  With ``prune_7bit`` (8-bit is an option too), 7-bit weights
        are scored only where the same 8-bit product saturates (elsewhere they only round more
        coarsely): infinity otherwise, which halves the work on CPUs with VNNI."""
        if reduce_range and self.prune_7bit and not self._saturated(per_channel, alpha):
            return math.inf
        key = (*self.key, per_channel, reduce_range, alpha)
        if key not in _ERRORS:
            if self.folds is None:
                self._setup()
            assert self.folds is not None
            errs, stats = [], {"saturated": False}
            for test in (0, 1):
                scale, quantized = self._calls(alpha, test)
                errs.append(E.relative_error(self.folds[test], self.weights, per_channel=per_channel,
                                             reduce_range=reduce_range, saturate=self.saturate, scale=scale,
                                             reference=self.refs[test], quantized=quantized, stats=stats))
            if len(_ERRORS) > 200_000:
                _ERRORS.clear()
                _SATURATED.clear()
            _ERRORS[key] = float(np.mean(errs))
            _SATURATED[key] = stats["saturated"]
        return _ERRORS[key]

    def _saturated(self, per_channel: bool, alpha: float | None) -> bool:
        key = (*self.key, per_channel, False, alpha)
        if key not in _SATURATED:
            self.error(per_channel, False, alpha)
        return _SATURATED[key]


@dataclass
class Options:
    """What a group may get: smoothing strengths (empty: none), weight formats (per_channel,
    reduce_range), whether a Mul may be inserted where the scale cannot be folded, and how much more
    emulated error (relative) a cheaper option (:func:`_pick`) may have and still be taken over the
    most accurate one."""

    alphas: tuple[float, ...]
    formats: list[tuple[bool, bool]]
    allow_mul: bool
    tolerance: float
    saturate: bool
    only_smoothed: bool = False  # a fixed alpha: smooth every group that can be (no "none" option)


def _pick(options: dict[tuple[float | None, bool, bool], float], needs_mul: bool, tolerance: float
          ) -> tuple[float | None, bool, bool]:
    """The cheapest option whose error is within (1 + tolerance) of the least (the least-error one
    among equally cheap ones).

    Cost per call, most first: an inserted Mul (one more op: ~8 µs on MiniLM-L6's [tokens, 384]
    activations, one thread of a 2-core AVX2 CPU, ~0.15 % of a sentence each), then per-channel
    weights: onnxruntime's DynamicQuantizeMatMul with one scale per column measured 3–4.5 % slower
    than with one scale per tensor (384×1536: 155.7 against 150.9 µs, 1536×384: 220.0 against
    209.4, 384×384: 54.6 against 52.7; 10–25 rows, same AVX2 CPU, interleaved thread CPU time),
    which is ~3 % of a MiniLM sentence when every weight is per-channel.  7-bit weights cost nothing
    (same kernels)."""
    best = min(options.values())

    def cost(k: tuple[float | None, bool, bool]) -> tuple[int, int, float]:
        return (int(needs_mul and k[0] is not None), int(k[1]), options[k])

    return min((k for k, e in options.items() if e <= best * (1.0 + tolerance)), key=cost)


def _choose_one(g, grp: Group, calls: list[np.ndarray], opts: Options, default: tuple[bool, bool],
                force_mul: frozenset[str]) -> Choice:
    from onnx import numpy_helper

    inits = {t.name: t for t in g.initializer}
    uses = U.consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    ws = [numpy_helper.to_array(inits[w]).astype(np.float32) for w in grp.weights]
    scorer = _Scorer(calls, ws, opts.saturate, prune_7bit=all((pc, False) in opts.formats for pc, _ in opts.formats))
    readers = {n.name for n in uses.get(grp.tensor, [])}
    plan = (_fold_plan(g, grp.tensor, uses, producer, inits)
            if readers == set(grp.nodes) and grp.tensor not in force_mul else None)
    can_smooth = bool(opts.alphas) and (plan is not None or opts.allow_mul)
    options: dict[tuple[float | None, bool, bool], float] = {}
    if not (opts.only_smoothed and can_smooth):
        options.update({(None, pc, rr): scorer.error(pc, rr) for pc, rr in opts.formats})
    if can_smooth:
        options.update({(a, pc, rr): scorer.error(pc, rr, a) for a in opts.alphas for pc, rr in opts.formats})
    alpha, pc, rr = _pick(options, plan is None, opts.tolerance)
    scale = None
    if alpha is not None:
        scale = smoothing_scale(np.max([np.abs(x).max(0) for x in calls], axis=0), ws, alpha)
    plain = min(scorer.error(*f) for f in opts.formats if f[0] == pc)  # unsmoothed, same granularity
    ch = Choice(grp, alpha, pc, rr, options[(alpha, pc, rr)], plain, scorer.error(*default), scale=scale)
    if scale is not None:
        _apply(g, ch, plan)
    return ch


def smooth_and_choose(proto, original, groups: list[Group], feeds: list[dict[str, np.ndarray]], opts: Options,
                      default: tuple[bool, bool], *, force_mul: frozenset[str] = frozenset(),
                      progress=None) -> list[Choice]:
    """Per group, the option picked by :func:`_pick` from the emulated errors (:class:`_Scorer`) on the
    activations of ``original`` for ``feeds``, applied to ``proto`` (in place) at once, the scale
    calibrated on all the calls.  Groups go in reverse graph order: a fold may edit the weights of an
    earlier group's MatMul (the V projection's columns), which that group is then scored with.  A
    group in ``force_mul`` is not folded; without a fold or an allowed Mul it is not smoothed."""
    out: list[Choice] = []
    todo = list(reversed(groups))
    for start in range(0, len(todo), _CHUNK):
        chunk = todo[start:start + _CHUNK]
        acts = activations(original, [grp.tensor for grp in chunk], feeds)
        for i, grp in enumerate(chunk):
            if progress is not None:
                progress.update((start + i) / len(todo), f"choosing for {grp.nodes[0]} ({start + i + 1}/{len(todo)})")
            out.append(_choose_one(proto.graph, grp, acts[grp.tensor], opts, default, force_mul))
    return out[::-1]


def layerwise(original, nodes: list[str], feeds: list[dict[str, np.ndarray]], opts: Options,
              default: tuple[bool, bool], progress=None) -> tuple[object, list[Choice]]:
    """A copy of ``original`` with the chosen smoothing applied, and the choices for the MatMuls in
    ``nodes``; a fold that the numerical check rejects is redone as a Mul (or dropped when Muls are not
    allowed)."""
    groups = find_groups(original, nodes)
    proto = U.copy_proto(original)
    choices = smooth_and_choose(proto, original, groups, feeds, opts, default, progress=progress)
    bad = check_smoothing(original, proto, choices, feeds)
    if bad:
        proto = U.copy_proto(original)
        choices = smooth_and_choose(proto, original, groups, feeds, opts, default, progress=progress,
                                    force_mul=frozenset(c.group.tensor for c in bad))
        still = check_smoothing(original, proto, choices, feeds)
        if still:
            raise CompressError(f"smoothing changed the float model's values at {still[0].group.tensor}; "
                                "the step was not applied")
    return proto, choices

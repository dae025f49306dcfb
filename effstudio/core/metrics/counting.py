"""What every FLOP handler shares: the result type, the "cannot count" signal, a shape view of
one layer, and the closed-form formulas that the ONNX and ATen handlers both call (so the two
forms of one model give the same numbers).

Convention: 1 MAC (multiply-accumulate) = 2 FLOPs.  MAC ops (conv, matmul/gemm/linear,
attention, RNNs) report their MACs and ``flops = 2 * macs`` plus the elementwise work done
around the products (bias adds, softmax, gates); other ops report ``macs = 0`` and their
elementwise work as FLOPs.  The per-element constants sit next to each handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from effstudio.core.graph import Layer, LayerGraph, Shape, TensorInfo

StaticShape = tuple[int, ...]


class Uncountable(Exception):
    """A layer whose work cannot be counted; ``str(err)`` says why (shown to the user)."""


@dataclass(frozen=True)
class Count:
    macs: int = 0
    flops: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.macs + other.macs, self.flops + other.flops)

    def scaled(self, k: int) -> Count:
        return Count(self.macs * k, self.flops * k)


ZERO = Count(0, 0)


def mac_count(macs: int, extra_flops: int = 0) -> Count:
    """A MAC op: ``flops = 2 * macs + extra_flops`` (bias adds, softmax, ...)."""
    return Count(int(macs), 2 * int(macs) + int(extra_flops))


def prod(xs: Sequence[int]) -> int:
    return math.prod(map(int, xs))  # (map: no generator frame per call)


def static(shape: Shape | None, what: str) -> StaticShape:
    """``shape`` as ints, or :class:`Uncountable` naming the unknown / symbolic dimension."""
    if shape is None:
        raise Uncountable(f"{what} shape unknown")
    for d in shape:
        if not isinstance(d, int):
            raise Uncountable(f"symbolic dimension {d!r} in {what} (give concrete input shapes)")
    return tuple(shape)  # type: ignore[arg-type]


class OpView:
    """One layer seen through its tensors' shapes.

    ``operands`` are the activation inputs in argument order followed by the weights in
    argument order (the IR keeps the two apart); handlers pick their operands by role and
    check shapes rather than trusting a position where a weight could sit in front.
    """

    def __init__(self, layer: Layer, tensors: dict[str, TensorInfo],
                 count_subgraph: Callable[[LayerGraph], Count] | None = None,
                 constant: Callable[[str], Any] | None = None,
                 node_inputs: Callable[[str], list[str] | None] | None = None) -> None:
        self.layer = layer
        self._tensors = tensors
        self._count_subgraph = count_subgraph
        self._constant = constant
        self._node_inputs = node_inputs

    # --- shapes ---------------------------------------------------------------------------
    def tensor_shape(self, name: str) -> Shape | None:
        info = self._tensors.get(name)
        return info.shape if info is not None else None

    def inp(self, i: int = 0) -> StaticShape:
        if i >= len(self.layer.inputs):
            raise Uncountable(f"expected an activation input #{i}")
        return static(self.tensor_shape(self.layer.inputs[i]), f"input {self.layer.inputs[i]!r}")

    def out(self, i: int = 0) -> StaticShape:
        if i >= len(self.layer.outputs):
            raise Uncountable(f"expected an output #{i}")
        return static(self.tensor_shape(self.layer.outputs[i]), f"output {self.layer.outputs[i]!r}")

    def out_or_none(self, i: int) -> StaticShape | None:
        try:
            return self.out(i)
        except Uncountable:
            return None

    def weight_shapes(self) -> list[StaticShape]:
        return [tuple(map(int, w.shape)) for w in self.layer.weights]

    def operands(self) -> list[StaticShape]:
        """Static shapes of activation inputs then weights; raises on any unknown one."""
        acts = [static(self.tensor_shape(t), f"input {t!r}") for t in self.layer.inputs]
        return acts + self.weight_shapes()

    def n_operands(self) -> int:
        return len(self.layer.inputs) + len(self.layer.weights)

    def out_numel(self, i: int = 0) -> int:
        return prod(self.out(i))

    def attr(self, name: str, default: Any = None) -> Any:
        v = self.layer.attributes.get(name, default)
        return default if v is None else v

    def constant(self, name: str) -> Any:
        """The value of a constant tensor (numpy), or None when it is not known statically."""
        return self._constant(name) if self._constant is not None else None

    def positional_inputs(self) -> list[str] | None:
        """The op's inputs by position ('' for an omitted optional one) when the model file keeps
        them (ONNX), else None."""
        return self._node_inputs(self.layer.name) if self._node_inputs is not None else None

    def subgraph(self, g: LayerGraph) -> Count:
        if self._count_subgraph is None:
            raise Uncountable("nested graphs are not counted here")
        return self._count_subgraph(g)


Handler = Callable[[OpView], Count]


# --- handler factories ----------------------------------------------------------------------
def zero(_: OpView) -> Count:
    """No arithmetic: shape / layout / indexing / copy ops.  Counted, as 0."""
    return ZERO


def per_output_element(k: float) -> Handler:
    """``k`` FLOPs for every element of output 0 (elementwise ops, activations)."""

    def handler(v: OpView) -> Count:
        return Count(0, round(k * v.out_numel(0)))

    handler.__doc__ = f"{k} FLOP(s) per output element"
    return handler


def per_input_element(k: float) -> Handler:
    """``k`` FLOPs for every element of activation input 0 (reductions)."""

    def handler(v: OpView) -> Count:
        return Count(0, round(k * prod(v.inp(0))))

    handler.__doc__ = f"{k} FLOP(s) per input element"
    return handler


# --- formulas shared by the ONNX and ATen handlers ------------------------------------------
def conv_macs(out: StaticShape, w: StaticShape) -> int:
    """Conv (any rank, any groups): every output element is a dot product over ``W[1:]``.

    ``W`` is ``[C_out, C_in / groups, *kernel]``, so grouped and depthwise convs need no
    special case: ``MACs = numel(Y) * C_in/groups * prod(kernel)``.
    """
    if len(w) not in (len(out), len(out) + 1):  # +1: an unbatched input (torch allows it)
        raise Uncountable(f"conv weight rank {len(w)} does not match output rank {len(out)}")
    return prod(out) * prod(w[1:])


def conv_transpose_macs(x: StaticShape, w: StaticShape) -> int:
    """Transposed conv: every input element is scattered to ``C_out/groups * prod(kernel)``
    outputs; ``W`` is ``[C_in, C_out / groups, *kernel]`` (fvcore / FlopCounterMode agree)."""
    if len(w) not in (len(x), len(x) + 1):
        raise Uncountable(f"conv-transpose weight rank {len(w)} does not match input rank {len(x)}")
    return prod(x) * prod(w[1:])


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise Uncountable(f"batch dimensions {tuple(a)} and {tuple(b)} do not broadcast")
        out.append(max(x, y))
    return tuple(out)


def _matmul_once(a: StaticShape, b: StaticShape) -> int | None:
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if len(a2) < 2 or len(b2) < 2 or a2[-1] != b2[-2]:
        return None
    batch = _broadcast(a2[:-2], b2[:-2])
    return prod(batch) * a2[-2] * a2[-1] * b2[-1]


def matmul_macs(a: StaticShape, b: StaticShape) -> int:
    """numpy-style matmul (1-D promotion, broadcast batch): ``prod(batch) * M * K * N``.

    If ``a @ b`` does not line up but ``b @ a`` does, the weight sat in front of the activation
    (the IR lists activations first), so the swapped product is counted.
    """
    n = _matmul_once(a, b)
    if n is None:
        n = _matmul_once(b, a)
    if n is None:
        raise Uncountable(f"matmul operands {a} and {b} do not line up")
    return n


def mm_macs_from_output(out: StaticShape, mats: Sequence[StaticShape]) -> int:
    """``M x N`` output (with optional leading batch) of a product of two operands among
    ``mats``: find the pair ``[.., M, K] @ [.., K, N]`` and return ``numel(out) * K``."""
    if len(out) < 2:
        raise Uncountable(f"product output {out} is not a matrix")
    m, n = out[-2], out[-1]
    for i, a in enumerate(mats):
        for j, b in enumerate(mats):
            if i != j and len(a) == len(out) == len(b) and a[-2] == m and b[-1] == n and a[-1] == b[-2]:
                return prod(out) * a[-1]
    raise Uncountable(f"no operand pair among {list(mats)} gives output {out}")


def attention_macs(batch_heads: int, q_len: int, kv_len: int, d_qk: int, d_v: int) -> int:
    """Scaled dot-product attention: ``Q K^T`` (L x S x E) plus ``P V`` (L x S x Ev) per head."""
    return batch_heads * q_len * kv_len * (d_qk + d_v)


# FLOPs per attention score (L x S element) besides the two products:
# scale 1 + softmax 5 (see SOFTMAX_PER_ELEMENT), + 1 when a mask is added.
ATTENTION_SCORE_FLOPS = 6
SOFTMAX_PER_ELEMENT = 5  # max, subtract, exp, sum, divide


def attention_count(batch_heads: int, q_len: int, kv_len: int, d_qk: int, d_v: int, masked: bool) -> Count:
    scores = batch_heads * q_len * kv_len
    return mac_count(attention_macs(batch_heads, q_len, kv_len, d_qk, d_v),
                     scores * (ATTENTION_SCORE_FLOPS + (1 if masked else 0)))


# RNNs: MACs are the two matrix products per step, ``steps * batch * numel(W_ih + W_hh)``
# (summed over layers and directions, and projection matrices when present).  The elementwise
# work per hidden unit per step (gate sums, biases, activations at 1 FLOP each, cell update):
RNN_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
RNN_ELEMENTWISE_PER_UNIT = {
    # 4 gate sums (W x + R h) + 4 gate activations (3 sigmoid, 1 tanh)
    # + cell c = f*c + i*g (3) + h = o * tanh(c) (2)
    "lstm": 13,
    # 3 gate sums + 3 activations (2 sigmoid, 1 tanh) + r * (R h) (1) + h = (1-z)*n + z*h (3)
    "gru": 10,
    # 1 sum + 1 activation
    "rnn": 2,
}
RNN_BIAS_PER_UNIT = {"lstm": 8, "gru": 6, "rnn": 2}  # two bias vectors per gate


def rnn_count(kind: str, steps: int, batch: int, matrix_numel: int, hidden: int, units: int,
              bias: bool) -> Count:
    """``units`` = layers x directions; ``matrix_numel`` = all weight-matrix elements."""
    per_unit = RNN_ELEMENTWISE_PER_UNIT[kind] + (RNN_BIAS_PER_UNIT[kind] if bias else 0)
    return mac_count(steps * batch * matrix_numel, steps * batch * hidden * units * per_unit)


def einsum_count(equation: str, shapes: Sequence[StaticShape]) -> Count:
    """Einsum evaluated naively: ``(n_operands - 1) * prod(size of every index)`` MACs; a
    one-operand einsum (sum / trace / transpose) is ``prod(sizes)`` adds (0 if pure permute)."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise Uncountable(f"einsum {equation!r} has {len(terms)} terms but {len(shapes)} operands")
    sizes: dict[str, int] = {}
    ell: tuple[int, ...] = ()
    for term, shape in zip(terms, shapes, strict=True):
        if "..." in term:
            pre, post = term.split("...")
            n_ell = len(shape) - len(pre) - len(post)
            part = tuple(shape[len(pre):len(pre) + n_ell])
            ell = _broadcast(ell, part) if ell else part
            letters = list(pre) + list(post)
            dims = list(shape[:len(pre)]) + list(shape[len(shape) - len(post):])
        else:
            letters, dims = list(term), list(shape)
        if len(letters) != len(dims):
            raise Uncountable(f"einsum term {term!r} does not match shape {shape}")
        for c, d in zip(letters, dims, strict=True):
            sizes[c] = max(sizes.get(c, 1), int(d))
    total = prod(list(sizes.values())) * prod(ell)
    if len(shapes) >= 2:
        return mac_count((len(shapes) - 1) * total)
    out_letters = rhs if "->" in eq else "".join(sorted(c for c in terms[0] if terms[0].count(c) == 1))
    if sorted(out_letters.replace("...", "")) == sorted(terms[0].replace("...", "")):
        return ZERO  # a pure transpose
    return Count(0, total)


# Resize / upsample: nearest copies (0); linear interpolation is 3 FLOPs per lerp
# (a + t*(b-a)) and 2^d - 1 lerps per output element over d resized axes; cubic uses
# 4^d weights per output element at 2 FLOPs (multiply, add) each.
def resize_count(mode: str, x: StaticShape, y: StaticShape) -> Count:
    mode = mode.lower()
    d = sum(1 for a, b in zip(x, y, strict=False) if a != b)
    if "nearest" in mode or d == 0:
        return ZERO
    n = prod(y)
    if "cubic" in mode:
        return Count(0, n * 2 * 4 ** d)
    if "linear" in mode or "area" in mode:
        return Count(0, n * 3 * (2 ** d - 1))
    raise Uncountable(f"resize mode {mode!r} not counted")


def pool_count(out: StaticShape, kernel: Sequence[int], average: bool) -> Count:
    """Window pooling: ``prod(kernel)`` compares (max) or adds (+1 divide for average) per output."""
    n = prod(out)
    return Count(0, n * prod(kernel) + (n if average else 0))

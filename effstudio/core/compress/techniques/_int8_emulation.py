"""What onnxruntime's dynamic int8 MatMul computes, reproduced in numpy to judge choices before making them.

``quantize_dynamic`` turns ``X @ W`` into DynamicQuantizeLinear(X) (one uint8 scale and zero point
per call, range including 0) times symmetric int8 weights (range ±127, or ±64 with
``reduce_range``; one scale per output column or per tensor), rescaled to float.  On x86 CPUs
without int8 dot-product instructions (AVX2, AVX-512 without VNNI) MLAS multiplies u8 by s8 with
``vpmaddubsw``, which adds each *pair* of neighbouring products along the reduction axis into an
int16 with saturation: |a_k·b_k + a_k+1·b_k+1| is clipped to 32767.  Activations sit around their
zero point (~128..210 as uint8), so full-range weights overflow there; measured on MiniLM-L6's
first attention output projection, per-channel weights, it is most of the error (relative output
error 0.30 with saturation, 0.025 without).  :func:`int8_matmul` models it exactly (checked
against onnxruntime's output to float rounding, ``tests/core/test_smoothing.py``), so a choice of
weight format or smoothing can be scored on calibration activations without building and running
a model per candidate.
"""

from __future__ import annotations

import numpy as np

_I16 = 32767
_SLICE = 512  # K per float32 product: 512·255·127 < 2**24, so float32 sums of integers stay exact


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """DynamicQuantizeLinear: (uint8 values as float32, scale, zero point) of one call's activation."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.float32), scale, zp


def quantize_weight(w: np.ndarray, per_channel: bool, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's symmetric int8 weight quantization of a float32 ``[K, N]`` matrix: (integer values as
    float32, scale per column)."""
    qmax = 64 if reduce_range else 127
    absmax = np.abs(w).max(0) if per_channel else np.full(w.shape[1], np.abs(w).max())
    scale = (absmax.astype(np.float64) / qmax).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    return np.clip(np.rint(w / scale), -qmax, qmax), scale


class QuantizedWeight:
    """A weight as onnxruntime's dynamic quantizer stores it, with what the emulation reuses per call.

    ``pairs``: the (row pair, column) cells whose two weights could overflow int16 with some uint8
    activations (|b_2p| + |b_2p+1| > 32767 / 255); saturation can only happen there (never with
    ``reduce_range``), so only those are computed exactly."""

    def __init__(self, w: np.ndarray, per_channel: bool, reduce_range: bool) -> None:
        self.q, self.scale = quantize_weight(np.asarray(w, np.float32), per_channel, reduce_range)
        self.colsum = self.q.sum(0, dtype=np.float64).astype(np.int64)
        b = self.q if self.q.shape[0] % 2 == 0 else np.pad(self.q, ((0, 1), (0, 0)))
        even, odd = b[0::2], b[1::2]
        n, p = np.nonzero((np.abs(even) + np.abs(odd) > _I16 / 255).T)  # sorted by column
        cols, starts = np.unique(n, return_index=True)
        self.pairs = (p, even[p, n].astype(np.int64), odd[p, n].astype(np.int64), cols, starts)


def quantize_calls(calls: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each call's activation through DynamicQuantizeLinear (its own scale), stacked: (uint8 values as
    float32 ``[rows, K]``, scale per row, zero point per row)."""
    qs = [dynamic_quantize(x) for x in calls]
    a = np.concatenate([q for q, _, _ in qs])
    sa = np.concatenate([np.full(len(q), s, np.float32) for q, s, _ in qs])
    za = np.concatenate([np.full(len(q), z, np.int64) for q, _, z in qs])
    return a, sa, za


def _int_product(a: np.ndarray, w: QuantizedWeight) -> np.ndarray:
    """Exact ``a @ q`` as int64, through float32 BLAS in slices of K (each slice's sums are exact)."""
    k = a.shape[1]
    if k <= _SLICE:
        return (a @ w.q).astype(np.int64)
    acc = np.zeros((a.shape[0], w.q.shape[1]), np.int64)
    for s in range(0, k, _SLICE):
        acc += (a[:, s:s + _SLICE] @ w.q[s:s + _SLICE]).astype(np.int64)
    return acc


def _saturation_excess(a: np.ndarray, w: QuantizedWeight) -> np.ndarray:
    """sum over k-pairs of (clip(pair, int16) - pair): what vpmaddubsw's saturation takes off ``a @ q``."""
    out = np.zeros((a.shape[0], w.q.shape[1]), np.int64)
    p, even, odd, cols, starts = w.pairs
    if not len(p):
        return out
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
    ai = a.astype(np.int64)
    step = max(1, (1 << 22) // len(p))  # rows per slice: ~4M cells at a time
    for r in range(0, a.shape[0], step):
        ar = ai[r:r + step]
        pair = ar[:, 2 * p] * even + ar[:, 2 * p + 1] * odd  # [rows, cells], cells grouped by column
        excess = np.clip(pair, -_I16 - 1, _I16) - pair
        out[r:r + step, cols] = np.add.reduceat(excess, starts, axis=1)
    return out


def int8_matmul_calls(quantized: tuple[np.ndarray, np.ndarray, np.ndarray], w: QuantizedWeight, *,
                      saturate: bool, stats: dict | None = None) -> np.ndarray:
    """float32 results of onnxruntime's dynamic int8 product for the calls of :func:`quantize_calls`;
    ``stats["saturated"]`` is set true when some pair overflowed int16."""
    a, sa, za = quantized
    acc = _int_product(a, w)
    if saturate:
        excess = _saturation_excess(a, w)
        acc += excess
        if stats is not None and excess.any():
            stats["saturated"] = True
    acc -= za[:, None] * w.colsum[None, :]
    return acc.astype(np.float32) * (sa[:, None] * w.scale[None, :])


def int8_matmul(x: np.ndarray, w: np.ndarray | QuantizedWeight, *, per_channel: bool = True,
                reduce_range: bool = False, saturate: bool) -> np.ndarray:
    """float32 result of onnxruntime's dynamic int8 ``x @ w`` for one call (``x`` ``[M, K]``); ``w`` a float
    matrix (quantized here with ``per_channel`` / ``reduce_range``) or a :class:`QuantizedWeight`."""
    qw = w if isinstance(w, QuantizedWeight) else QuantizedWeight(w, per_channel, reduce_range)
    return int8_matmul_calls(quantize_calls([x]), qw, saturate=saturate)


def relative_error(calls: list[np.ndarray], weights: list[np.ndarray], *, per_channel: bool, reduce_range: bool,
                   saturate: bool, scale: np.ndarray | None = None, reference: list[np.ndarray] | None = None,
                   quantized: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   stats: dict | None = None) -> float:
    """sqrt(sum |Yq - Y|² / sum |Y|²) over the calls (one activation matrix each) and the weights that
    read them; with ``scale`` (smoothing), each call's activation is divided by it and each weight's
    rows multiplied by it first (the float product is the same).  ``reference[i]``: the float
    product of weight i and the stacked calls; ``quantized``: :func:`quantize_calls` of the
    (scaled) calls, if already computed; ``stats``: see :func:`int8_matmul_calls`."""
    if quantized is None:
        quantized = quantize_calls([x / scale for x in calls] if scale is not None else calls)
    stacked = None
    num = den = 0.0
    for i, w in enumerate(weights):
        if reference is not None:
            y = reference[i]
        else:
            stacked = np.concatenate(calls).astype(np.float64) if stacked is None else stacked
            y = stacked @ w.astype(np.float64)
        qw = QuantizedWeight(w * scale[:, None] if scale is not None else w, per_channel, reduce_range)
        d = int8_matmul_calls(quantized, qw, saturate=saturate, stats=stats) - y
        num += float(np.einsum("ij,ij->", d, d))
        den += float(np.einsum("ij,ij->", y, y))
    return (num / den) ** 0.5 if den > 0 else 0.0

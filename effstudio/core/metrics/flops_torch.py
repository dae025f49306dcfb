"""FLOP handlers for ATen ops (torch.export graphs): ``ATEN_HANDLERS[op_type] -> handler``.

The layer graph of a torch model keeps ATen overload-packet names (``conv2d``, ``linear``,
``scaled_dot_product_attention``, ``lstm`` ...) with the schema's non-tensor arguments as
attributes.  Every handler calls the same formulas as its ONNX twin
(:mod:`~effstudio.core.metrics.counting`), so the two forms of one model agree.

:func:`flop_counter_check` runs ``torch.utils.flop_counter.FlopCounterMode`` over the live
module as an independent check of the MAC ops.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

from effstudio.core.metrics.counting import (
    RNN_GATES,
    SOFTMAX_PER_ELEMENT,
    Count,
    Handler,
    OpView,
    StaticShape,
    Uncountable,
    attention_count,
    conv_macs,
    conv_transpose_macs,
    einsum_count,
    mac_count,
    matmul_macs,
    mm_macs_from_output,
    per_input_element,
    per_output_element,
    pool_count,
    prod,
    resize_count,
    rnn_count,
    zero,
)
from effstudio.core.metrics.flops_onnx import (
    AFFINE_PER_ELEMENT,
    BATCHNORM_PER_ELEMENT,
    COMPOSITE,
    NORM_PER_ELEMENT,
    RMSNORM_PER_ELEMENT,
)

if TYPE_CHECKING:
    from effstudio.core.graph import LayerGraph
    from effstudio.core.model import LoadedModel


# --- convolution --------------------------------------------------------------------------------
def _conv_weight(v: OpView, x: StaticShape) -> StaticShape:
    ops = v.operands()
    w = next((s for s in ops[1:] if len(s) in (len(x), len(x) + 1) and len(s) >= 3), None)
    if w is None:
        raise Uncountable("conv weight missing")
    return w


def _has_bias(v: OpView) -> bool:
    return any(len(s) == 1 for s in v.operands()[1:])


def conv(v: OpView) -> Count:
    """conv1d/2d/3d, convolution (transposed flag honoured): see ``counting.conv_macs``;
    the bias adds 1 FLOP per output element."""
    x, y = v.inp(0), v.out(0)
    w = _conv_weight(v, x)
    if v.attr("transposed", False):
        macs = conv_transpose_macs(x, w)
    else:
        macs = conv_macs(y, w)
    return mac_count(macs, prod(y) if _has_bias(v) else 0)


def conv_transpose(v: OpView) -> Count:
    x, y = v.inp(0), v.out(0)
    return mac_count(conv_transpose_macs(x, _conv_weight(v, x)), prod(y) if _has_bias(v) else 0)


# --- matrix products ----------------------------------------------------------------------------
def linear(v: OpView) -> Count:
    """linear(x [.., K], W [N, K], b): ``numel(Y) * K`` MACs, +1 FLOP per output for the bias."""
    ops, y = v.operands(), v.out(0)
    x = ops[0]
    w = next((s for s in ops[1:] if len(s) == 2 and s[1] == x[-1]), None)
    if w is None:
        raise Uncountable(f"linear weight for input {x} missing")
    bias = len(ops) >= 3
    return mac_count(prod(y) * w[1], prod(y) if bias else 0)


def mm_like(bias: bool) -> Handler:
    """mm / bmm (and addmm / baddbmm with ``bias``): the operand pair that gives the output."""

    def handler(v: OpView) -> Count:
        y = v.out(0)
        macs = mm_macs_from_output(y, v.operands())
        add_bias = bias and float(v.attr("beta", 1)) != 0
        return mac_count(macs, prod(y) if add_bias else 0)

    return handler


def matmul(v: OpView) -> Count:
    ops = v.operands()
    if len(ops) < 2:
        raise Uncountable("matmul needs two operands")
    return mac_count(matmul_macs(ops[0], ops[1]))


def mv(v: OpView) -> Count:
    ops = v.operands()
    return mac_count(matmul_macs(ops[0], ops[1]))


def einsum(v: OpView) -> Count:
    eq = v.attr("equation")
    if not eq:
        raise Uncountable("einsum without an equation")
    return einsum_count(str(eq), v.operands())


# --- attention ------------------------------------------------------------------------------------
def sdpa(v: OpView) -> Count:
    """scaled_dot_product_attention(q [.., Hq, L, E], k [.., Hkv, S, E], v [.., Hkv, S, Ev]):
    ``prod(q batch) * L * S * (E + Ev)`` MACs (GQA counts per query head) + 6 FLOPs per score
    (scale, softmax), +1 with a mask or causal mask."""
    ops = v.operands()
    if len(ops) < 3:
        raise Uncountable("attention needs q, k, v")
    q, k, val = ops[0], ops[1], ops[2]
    if len(q) < 2 or len(k) < 2 or len(val) < 2:
        raise Uncountable("attention inputs must be at least 2-D")
    masked = len(ops) > 3 or bool(v.attr("is_causal", False))
    return attention_count(prod(q[:-2]), q[-2], k[-2], q[-1], val[-1], masked)


def native_mha(v: OpView) -> Count:
    """_native_multi_head_attention (the fast path): in-projections, attention, out-projection."""
    ops = v.operands()
    q, k = ops[0], ops[1]
    e = int(v.attr("embed_dim", q[-1]))
    nh = int(v.attr("num_head", 0))
    if not nh or len(q) != 3:
        raise Uncountable("multi-head attention shapes unknown")
    b, lq, s = q[0], q[1], k[1]
    proj = mac_count(b * lq * e * e + 2 * b * s * e * e + b * lq * e * e,  # q, k, v and out projections
                     2 * b * lq * e + 2 * b * s * e)  # their bias adds
    return proj + attention_count(b * nh, lq, s, e // nh, e // nh, len(ops) > 7)


# --- recurrent --------------------------------------------------------------------------------------
def _rnn(kind: str, cell: bool = False) -> Handler:
    gates = RNN_GATES[kind]

    def handler(v: OpView) -> Count:
        x = v.inp(0)
        mats = [s for s in v.weight_shapes() if len(s) == 2]
        if not mats:
            raise Uncountable(f"{kind} weights are computed in the graph")
        hidden = mats[0][0] // gates
        if cell:
            batch = x[0] if len(x) == 2 else 1
            bias = any(len(s) == 1 for s in v.weight_shapes())
            return rnn_count(kind, 1, batch, sum(prod(m) for m in mats), hidden, 1, bias)
        layers = int(v.attr("num_layers", 1))
        dirs = 2 if v.attr("bidirectional", False) else 1
        # packed sequence (lstm.data, no batch_first) or unbatched input: x is [tokens, I]
        if "batch_first" not in v.layer.attributes or len(x) == 2:
            tokens = x[0]
        else:
            tokens = x[0] * x[1]
        bias = bool(v.attr("has_biases", True))
        return rnn_count(kind, tokens, 1, sum(prod(m) for m in mats), hidden, layers * dirs, bias)

    handler.__doc__ = f"{kind}: tokens * numel(all weight matrices) MACs + gate elementwise work"
    return handler


# --- normalisation, pooling, resize ------------------------------------------------------------------
def _affine(v: OpView) -> int:
    return AFFINE_PER_ELEMENT if v.weight_shapes() or v.n_operands() > 1 else 0


def norm(v: OpView) -> Count:
    """layer_norm / group_norm / instance_norm: 5 FLOPs per element + 2 with an affine."""
    return Count(0, (NORM_PER_ELEMENT + _affine(v)) * v.out_numel(0))


def rms_norm(v: OpView) -> Count:
    return Count(0, (RMSNORM_PER_ELEMENT + (1 if v.n_operands() > 1 else 0)) * v.out_numel(0))


def _spatial_rank(op_type: str) -> int:
    m = re.search(r"(\d)d", op_type)
    return int(m.group(1)) if m else 2


def _pool(average: bool) -> Handler:
    def handler(v: OpView) -> Count:
        k = v.attr("kernel_size")
        if k is None:
            raise Uncountable("pool without kernel_size")
        k = [int(k)] if isinstance(k, int) else [int(z) for z in k]
        nd = _spatial_rank(v.layer.op_type)
        if len(k) == 1 and nd > 1:
            k = k * nd
        return pool_count(v.out(0), k, average)

    return handler


def adaptive_pool(average: bool) -> Handler:
    """Adaptive pools: each input element enters one window when the size divides evenly
    (1 FLOP per input element, + 1 divide per output for average)."""

    def handler(v: OpView) -> Count:
        return Count(0, prod(v.inp(0)) + (v.out_numel(0) if average else 0))

    return handler


def upsample(v: OpView) -> Count:
    op = v.layer.op_type
    mode = ("nearest" if "nearest" in op else "cubic" if "bicubic" in op else "linear")
    return resize_count(mode, v.inp(0), v.out(0))


def gelu(v: OpView) -> Count:
    approx = str(v.attr("approximate", "none"))
    return Count(0, (8 if approx == "tanh" else COMPOSITE["Gelu"]) * v.out_numel(0))


# --- the table ------------------------------------------------------------------------------------------
ZERO_OPS = (
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "expand_as",
    "unsqueeze", "squeeze", "flatten", "unflatten", "contiguous", "clone", "select", "slice",
    "narrow", "cat", "concat", "stack", "hstack", "vstack", "split", "split_with_sizes", "chunk",
    "unbind", "index_select", "index", "gather", "embedding", "embedding_byte", "zeros", "ones", "full", "empty",
    "arange", "linspace", "zeros_like", "ones_like", "full_like", "empty_like", "new_zeros",
    "new_ones", "new_full", "new_empty", "scalar_tensor", "detach", "alias", "lift_fresh_copy",
    "dropout", "feature_dropout", "alpha_dropout", "native_dropout", "_to_copy", "to", "type_as",
    "repeat", "tile", "repeat_interleave", "pad", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d",
    "replication_pad3d", "flip", "roll", "copy", "copy_", "fill", "fill_", "index_put",
    "index_put_", "scatter", "as_strided", "view_as", "movedim", "swapaxes", "diagonal", "tril",
    "triu", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "one_hot", "select_scatter",
    "slice_scatter", "nonzero", "getitem", "_assert_tensor_metadata", "rand", "randn",
    "rand_like", "randn_like", "masked_select", "meshgrid", "broadcast_to", "unfold",
    "im2col", "col2im", "lift_fresh", "bernoulli",
)
ELEMENTWISE_1 = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide",
    "floor_divide", "neg", "abs", "reciprocal", "sqrt", "rsqrt", "exp", "exp2", "expm1", "log",
    "log2", "log10", "log1p", "erf", "tanh", "sigmoid", "relu", "relu_", "relu6", "leaky_relu",
    "prelu", "elu", "selu", "celu", "hardtanh", "hardtanh_", "hardsigmoid", "threshold", "clamp",
    "clamp_", "clamp_min", "clamp_max", "clip", "ceil", "floor", "round", "trunc", "sign", "sin",
    "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "pow", "square", "fmod", "remainder",
    "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and",
    "logical_or", "logical_xor", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor",
    "where", "masked_fill", "masked_fill_", "isnan", "isinf", "softsign", "cumsum", "atan2",
    "__and__", "__or__", "__xor__", "__invert__", "__lshift__", "__rshift__", "bitwise_left_shift",
    "bitwise_right_shift",
)
REDUCE_1 = ("sum", "mean", "amax", "amin", "max", "min", "prod", "argmax", "argmin", "any", "all",
            "aminmax")
REDUCE_2 = ("logsumexp", "norm", "linalg_vector_norm", "frobenius_norm")  # square/exp + sum
REDUCE_4 = ("var", "std", "var_mean", "std_mean")  # mean (1), subtract (1), square (1), sum (1)


def _build() -> dict[str, Handler]:
    t: dict[str, Handler] = {}
    for op in ZERO_OPS:
        t[op] = zero
    for op in ELEMENTWISE_1:
        t[op] = per_output_element(1)
    for op in REDUCE_1:
        t[op] = per_input_element(1)
    for op in REDUCE_2:
        t[op] = per_input_element(2)
    for op in REDUCE_4:
        t[op] = per_input_element(4)
    for op in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_tbc"):
        t[op] = conv
    for op in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        t[op] = conv_transpose
    for op in ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
               "max_pool3d_with_indices"):
        t[op] = _pool(average=False)
    for op in ("avg_pool1d", "avg_pool2d", "avg_pool3d", "lp_pool1d", "lp_pool2d"):
        t[op] = _pool(average=True)
    for op in ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d"):
        t[op] = adaptive_pool(average=True)
    for op in ("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"):
        t[op] = adaptive_pool(average=False)
    for op in ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
               "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d",
               "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bilinear2d_aa",
               "_upsample_bicubic2d_aa"):
        t[op] = upsample
    for op in ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
               "native_batch_norm", "_batch_norm_with_update", "_batch_norm_no_update"):
        t[op] = per_output_element(BATCHNORM_PER_ELEMENT)
    for op in ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "instance_norm"):
        t[op] = norm
    for op in ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"):
        t[op] = per_output_element(SOFTMAX_PER_ELEMENT)
    for op in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
               "_scaled_dot_product_attention_math", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
        t[op] = sdpa
    t.update({
        "linear": linear,
        "mm": mm_like(bias=False),
        "bmm": mm_like(bias=False),
        "addmm": mm_like(bias=True),
        "baddbmm": mm_like(bias=True),
        "matmul": matmul,
        "mv": mv,
        "addmv": mv,
        "dot": mv,
        "einsum": einsum,
        "_native_multi_head_attention": native_mha,
        "lstm": _rnn("lstm"),
        "gru": _rnn("gru"),
        "rnn_tanh": _rnn("rnn"),
        "rnn_relu": _rnn("rnn"),
        "lstm_cell": _rnn("lstm", cell=True),
        "gru_cell": _rnn("gru", cell=True),
        "rnn_tanh_cell": _rnn("rnn", cell=True),
        "rnn_relu_cell": _rnn("rnn", cell=True),
        "rms_norm": rms_norm,
        "gelu": gelu,
        "silu": per_output_element(COMPOSITE["Swish"]),
        "hardswish": per_output_element(COMPOSITE["HardSwish"]),
        "mish": per_output_element(COMPOSITE["Mish"]),
        "softplus": per_output_element(COMPOSITE["Softplus"]),
        "addcmul": per_output_element(2),
        "addcdiv": per_output_element(2),
        "lerp": per_output_element(3),
        # torch.ao dynamic quantization (int8 weights, same products as the float op)
        "linear_dynamic": linear,
        "quantized_lstm": _rnn("lstm"),
        "quantized_gru": _rnn("gru"),
    })
    return t


ATEN_HANDLERS: dict[str, Handler] = _build()


def aten_handler(op_type: str) -> Handler | None:
    return ATEN_HANDLERS.get(op_type.split(".")[0])


# --- the independent check: FlopCounterMode over the live module ------------------------------------
def _run_flop_counter(loaded: LoadedModel) -> dict[str, int]:
    """Per-module FLOPs from ``FlopCounterMode`` (module path -> FLOPs, root ``""``).

    The MHA fast path and fused CPU kernels (mkldnn RNNs, flash SDPA) are switched off for the
    run, since FlopCounterMode counts only the ATen products it sees (a TransformerEncoder in
    eval would otherwise count ~0 for attention, an LSTM 0).  The forward runs on fake tensors
    (shapes only, no arithmetic: ~1 s for ResNet-50 instead of seconds of slow unfused kernels);
    a module that fake tensors cannot run is run for real.
    """
    import numpy as np
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    module = loaded.torch_module
    real = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in loaded.example_inputs.items()}

    def run(kwargs: dict[str, Any]) -> FlopCounterMode:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(enabled=False), \
                FlopCounterMode(display=False) as counter:
            try:
                module(**kwargs)
            except TypeError:
                module(*kwargs.values())
        return counter

    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with FakeTensorMode(allow_non_fake_inputs=True) as fake:
                    counter = run({k: fake.from_tensor(v) for k, v in real.items()})
            except Exception:  # data-dependent control flow, ops without a fake kernel, ...
                counter = run(real)
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
    out: dict[str, int] = {}
    for name, per_op in counter.get_flop_counts().items():
        if name == "Global":
            continue
        path = name.split(".", 1)[1] if "." in name else ""  # drop the root module's class name
        out[path] = int(sum(per_op.values()))
    out.setdefault("", int(counter.get_total_flops()))
    return out


def flop_counter_check(loaded: LoadedModel, macs: dict[str, float]) -> dict[str, Any]:
    """Compare ``2 * MACs`` of our counted layers with FlopCounterMode, in total and per module.

    Returns ``{"flop_counter_flops", "ours_mac_flops", "ratio", "mismatched_scopes"}`` where
    ``mismatched_scopes`` lists modules whose two numbers differ by more than 1 %.
    """
    theirs = _run_flop_counter(loaded)
    graph: LayerGraph = loaded.graph
    ours_total = int(2 * sum(macs.values()))
    mismatched = []
    for scope, t in theirs.items():
        if not scope:
            continue
        o = int(2 * sum(macs.get(lay.name, 0) for lay in graph.layers_in_scope(scope)))
        if abs(o - t) > 0.01 * max(o, t, 1):
            mismatched.append({"scope": scope, "flop_counter_flops": t, "ours_mac_flops": o})
    mismatched.sort(key=lambda m: -abs(m["flop_counter_flops"] - m["ours_mac_flops"]))
    total = theirs.get("", 0)
    return {"flop_counter_flops": total, "ours_mac_flops": ours_total,
            "ratio": (ours_total / total) if total else None, "mismatched_scopes": mismatched[:20]}

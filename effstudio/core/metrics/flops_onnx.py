"""FLOP handlers for ONNX ops: ``ONNX_HANDLERS[(domain, op_type)] -> handler(OpView) -> Count``.

One function per op (fvcore style); replace or add entries to change a count.  Domain ``""``
is ai.onnx, ``"com.microsoft"`` onnxruntime's contrib ops.  An op missing from the table is
reported as uncounted, never as 0; ops that truly do no arithmetic are listed with
:func:`~effstudio.core.metrics.counting.zero`.
"""

from __future__ import annotations

from effstudio.core.metrics.counting import (
    SOFTMAX_PER_ELEMENT,
    ZERO,
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
    per_input_element,
    per_output_element,
    pool_count,
    prod,
    resize_count,
    rnn_count,
    zero,
)

MS = "com.microsoft"


# --- convolution ---------------------------------------------------------------------------
def _conv_like(v: OpView, has_bias: bool, operands: list[StaticShape] | None = None) -> Count:
    """X and W are the first two operands of the output's rank; bias adds 1 FLOP per output.
    ``operands``: ``v.operands()`` when the caller has them."""
    y = v.out(0)
    ops = [s for s in (v.operands() if operands is None else operands) if len(s) == len(y)]
    if len(ops) < 2:
        raise Uncountable("conv input or weight missing")
    macs = conv_macs(y, ops[1])
    return mac_count(macs, prod(y) if has_bias else 0)


def conv(v: OpView) -> Count:
    """Conv / ConvInteger: ``numel(Y) * C_in/groups * prod(kernel)`` MACs (1-3D, grouped, depthwise)."""
    ops = v.operands()
    return _conv_like(v, has_bias=len(ops) >= 3 and len(ops[2]) == 1, operands=ops)


def conv_integer(v: OpView) -> Count:
    return _conv_like(v, has_bias=False)


def qlinear_conv(v: OpView) -> Count:
    """QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, B])."""
    return _conv_like(v, has_bias=v.n_operands() >= 9)


def conv_transpose(v: OpView) -> Count:
    x = v.inp(0)
    ops = [s for s in v.operands() if len(s) == len(x)]
    if len(ops) < 2:
        raise Uncountable("conv-transpose weight missing")
    y = v.out(0)
    bias = any(len(s) == 1 for s in v.operands()[2:])
    return mac_count(conv_transpose_macs(x, ops[1]), prod(y) if bias else 0)


# --- matrix products -------------------------------------------------------------------------
def _two_matrices(v: OpView) -> tuple[StaticShape, StaticShape]:
    """The two matrix operands (rank >= 2; 1-D only when nothing else is left)."""
    ops = v.operands()
    mats = [s for s in ops if len(s) >= 2]
    if len(mats) >= 2:
        return mats[0], mats[1]
    if len(ops) >= 2:
        return ops[0], ops[1]
    raise Uncountable("matmul needs two operands")


def matmul(v: OpView) -> Count:
    """MatMul (batched, broadcast): ``prod(batch) * M * K * N`` MACs."""
    ops = v.operands()
    if len(ops) < 2:
        raise Uncountable("matmul needs two operands")
    return mac_count(matmul_macs(ops[0], ops[1]))


def matmul_quantized(v: OpView) -> Count:
    """MatMulInteger / QLinearMatMul / MatMulIntegerToFloat: the integer product's MACs
    (scales and zero points are rank 0-1 and skipped)."""
    a, b = _two_matrices(v)
    return mac_count(matmul_macs(a, b))


def gemm(v: OpView) -> Count:
    """Gemm: ``M * N * K`` MACs; +1 FLOP per output for C (bias), +1 for alpha != 1."""
    ops = v.operands()
    if len(ops) < 2:
        raise Uncountable("gemm needs A and B")
    ta, tb = int(v.attr("transA", 0)), int(v.attr("transB", 0))
    a, b = ops[0], ops[1]

    def k_of(a: StaticShape, b: StaticShape) -> int | None:
        if len(a) != 2 or len(b) != 2:
            return None
        ka = a[0] if ta else a[1]
        kb = b[1] if tb else b[0]
        return ka if ka == kb else None

    k = k_of(a, b)
    if k is None:
        a, b = b, a
        k = k_of(a, b)
    if k is None:
        raise Uncountable(f"gemm operands {ops[0]} and {ops[1]} do not line up")
    m = a[1] if ta else a[0]
    n = b[0] if tb else b[1]
    extra = m * n * ((1 if len(ops) >= 3 else 0) + (1 if float(v.attr("alpha", 1.0)) != 1.0 else 0))
    return mac_count(m * n * k, extra)


def fused_matmul(v: OpView) -> Count:
    """com.microsoft FusedMatMul: MatMul with transposes; the transposes do not change M*K*N."""
    ops = v.operands()
    a, b = list(ops[0]), list(ops[1])
    if int(v.attr("transA", 0)) and len(a) >= 2:
        a[-1], a[-2] = a[-2], a[-1]
    if int(v.attr("transB", 0)) and len(b) >= 2:
        b[-1], b[-2] = b[-2], b[-1]
    return mac_count(matmul_macs(tuple(a), tuple(b)))


def matmul_nbits(v: OpView) -> Count:
    """com.microsoft MatMulNBits: A [.., K] times a block-quantized [K, N]: ``numel(A) * N`` MACs.
    The on-the-fly dequantization of B is not counted (it is per weight, not per token)."""
    a = v.inp(0)
    n = int(v.attr("N", 0))
    k = int(v.attr("K", a[-1]))
    if not n or a[-1] != k:
        raise Uncountable("MatMulNBits without N/K attributes matching its input")
    return mac_count(prod(a) * n)


def einsum(v: OpView) -> Count:
    eq = v.attr("equation")
    if not eq:
        raise Uncountable("einsum without an equation")
    return einsum_count(str(eq.decode() if isinstance(eq, bytes) else eq), v.operands())


# --- attention --------------------------------------------------------------------------------
def attention_onnx23(v: OpView) -> Count:
    """ai.onnx Attention (opset 23): Q [B, Hq, L, E] or [B, L, Hq*E]; K/V [B, Hkv, S, E|Ev] or
    3-D; the attended length includes a past cache (taken from the present_key output)."""
    q, k, val = v.operands()[:3]
    if len(q) == 4:
        b, hq, lq, e = q
    elif len(q) == 3:
        hq = int(v.attr("q_num_heads", 0))
        if not hq:
            raise Uncountable("3-D attention input without q_num_heads")
        b, lq, e = q[0], q[1], q[2] // hq
    else:
        raise Uncountable(f"attention query of rank {len(q)}")
    if len(val) == 4:
        ev = val[3]
    else:
        hkv = int(v.attr("kv_num_heads", 0)) or hq
        ev = val[2] // hkv
    s = k[2] if len(k) == 4 else k[1]
    present = v.out_or_none(1)
    if present is not None and len(present) == 4:
        s = present[2]
    masked = v.n_operands() >= 4 or bool(v.attr("is_causal", 0))
    return attention_count(b * hq, lq, s, e, ev, masked)


def attention_ms(v: OpView) -> Count:
    """com.microsoft Attention: packed QKV projection ``input [B,S,D] x W [D, Dq+Dk+Dv]`` then
    attention over ``num_heads``; a past state lengthens the keys (present output [2,B,N,T,H])."""
    x = v.inp(0)
    if len(x) != 3:
        raise Uncountable(f"attention input of rank {len(x)}")
    b, s, d = x
    w = next((sh for sh in v.weight_shapes() if len(sh) == 2), None)
    if w is None:
        mats = [sh for sh in v.operands()[1:] if len(sh) == 2 and sh[0] == d]
        w = mats[0] if mats else None
    if w is None:
        raise Uncountable("attention weight missing")
    nh = int(v.attr("num_heads", 0))
    if not nh:
        raise Uncountable("attention without num_heads")
    sizes = v.attr("qkv_hidden_sizes") or [w[1] // 3] * 3
    dq, _, dv = (int(z) for z in sizes)
    t = s
    present = v.out_or_none(1)
    if present is not None and len(present) == 5:
        t = present[3]
    proj = mac_count(b * s * d * w[1], b * s * w[1])  # + bias add on the packed projection
    masked = v.n_operands() >= 4 or bool(v.attr("unidirectional", 0))
    return proj + attention_count(b * nh, s, t, dq // nh, dv // nh, masked)


def multihead_attention_ms(v: OpView) -> Count:
    """com.microsoft MultiHeadAttention: query [B,S,D] (or packed QKV [B,S,N,3,H]), key [B,L,D]
    / [B,N,L,H] / packed KV [B,L,N,2,H], value [B,L,Dv]; output [B,S,Dv]."""
    ops = v.operands()
    q = ops[0]
    nh = int(v.attr("num_heads", 0))
    if not nh:
        raise Uncountable("attention without num_heads")
    y = v.out(0)
    if len(q) == 5:  # packed QKV, self-attention
        b, s, _, _, h = q
        return attention_count(b * nh, s, s, h, h, v.n_operands() > 1)
    if len(q) != 3:
        raise Uncountable(f"attention query of rank {len(q)}")
    b, s, d = q
    k = ops[1] if len(ops) > 1 else None
    if k is None:
        raise Uncountable("attention key missing")
    if len(k) == 5:
        kv_len = k[1]
    elif len(k) == 4:
        kv_len = k[2]
    else:
        kv_len = k[1]
    present = v.out_or_none(1)
    if present is not None and len(present) == 4:
        kv_len = present[2]
    return attention_count(b * nh, s, kv_len, d // nh, y[-1] // nh, v.n_operands() > 3)


# --- recurrent ----------------------------------------------------------------------------------
def _rnn(kind: str) -> Handler:
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[kind]

    def handler(v: OpView) -> Count:
        x = v.inp(0)
        if len(x) != 3:
            raise Uncountable(f"{kind} input of rank {len(x)}")
        steps, batch = (x[1], x[0]) if int(v.attr("layout", 0)) else (x[0], x[1])
        hidden = int(v.attr("hidden_size", 0))
        if not hidden:
            y = v.out_or_none(0) or v.out_or_none(1)
            hidden = y[-1] if y else 0
        if not hidden:
            raise Uncountable(f"{kind} hidden size unknown")
        # W [dirs, G*H, I] and R [dirs, G*H, H]; prefer initializers, then activations
        cands = [s for s in v.weight_shapes() if len(s) == 3 and s[1] == gates * hidden]
        if len(cands) < 2:
            acts = v.operands()[1:len(v.layer.inputs)]
            cands += [s for s in acts if len(s) == 3 and s[1] == gates * hidden]
        if len(cands) < 2:
            raise Uncountable(f"{kind} W/R weights not found")
        w, r = cands[0], cands[1]
        bias = any(len(s) == 2 and s[1] == 2 * gates * hidden for s in v.operands())
        return rnn_count(kind, steps, batch, prod(w) + prod(r), hidden, w[0], bias)

    handler.__doc__ = f"{kind.upper()}: steps * batch * numel(W + R) MACs plus gate elementwise work"
    return handler


# --- normalisation ----------------------------------------------------------------------------
# BatchNorm at inference folds to a per-channel scale and shift: 2 FLOPs per element.
BATCHNORM_PER_ELEMENT = 2
# Layer / group / instance norm: mean (1), subtract (1), square (1), variance sum (1),
# normalise (1) = 5, plus the affine scale and shift (2).
NORM_PER_ELEMENT = 5
AFFINE_PER_ELEMENT = 2
# RMS norm: square (1), sum (1), scale by 1/rms (1) = 3, plus the scale (1).
RMSNORM_PER_ELEMENT = 3


def layer_norm(v: OpView) -> Count:
    affine = AFFINE_PER_ELEMENT if v.n_operands() >= 2 else 0
    return Count(0, (NORM_PER_ELEMENT + affine) * v.out_numel(0))


def rms_norm(v: OpView) -> Count:
    return Count(0, (RMSNORM_PER_ELEMENT + (1 if v.n_operands() >= 2 else 0)) * v.out_numel(0))


def skip_layer_norm(v: OpView) -> Count:
    """com.microsoft SkipLayerNormalization(input, skip, gamma, beta, bias): the skip add (1),
    the optional bias add (1), then layer norm with affine."""
    bias = 1 if v.n_operands() >= 5 else 0
    return Count(0, (1 + bias + NORM_PER_ELEMENT + AFFINE_PER_ELEMENT) * v.out_numel(0))


def skip_rms_norm(v: OpView) -> Count:
    bias = 1 if v.n_operands() >= 4 else 0
    return Count(0, (1 + bias + RMSNORM_PER_ELEMENT + 1) * v.out_numel(0))


def embed_layer_norm(v: OpView) -> Count:
    """com.microsoft EmbedLayerNormalization: three lookups (0), two adds, layer norm + affine."""
    return Count(0, (2 + NORM_PER_ELEMENT + AFFINE_PER_ELEMENT) * v.out_numel(0))


# --- pooling / resize ---------------------------------------------------------------------------
def _pool(average: bool) -> Handler:
    def handler(v: OpView) -> Count:
        kernel = v.attr("kernel_shape")
        if not kernel:
            raise Uncountable("pool without kernel_shape")
        return pool_count(v.out(0), [int(k) for k in kernel], average)

    handler.__doc__ = "prod(kernel) FLOPs per output element" + (" + 1 divide" if average else "")
    return handler


def global_pool(average: bool) -> Handler:
    def handler(v: OpView) -> Count:
        return Count(0, prod(v.inp(0)) + (v.out_numel(0) if average else 0))

    handler.__doc__ = "1 FLOP per input element" + (" + 1 divide per output" if average else "")
    return handler


def resize(v: OpView) -> Count:
    return resize_count(str(v.attr("mode", "nearest")), v.inp(0), v.out(0))


# --- variadic elementwise ------------------------------------------------------------------------
def variadic(extra_per_output: int = 0) -> Handler:
    """Sum / Max / Min / Mean of n inputs: n-1 FLOPs per output element (+1 divide for Mean)."""

    def handler(v: OpView) -> Count:
        n = max(v.n_operands(), 1)
        return Count(0, (n - 1 + extra_per_output) * v.out_numel(0))

    return handler


# --- quantisation --------------------------------------------------------------------------------
# QuantizeLinear: divide by scale, round, add zero point, saturate = 2 FLOPs (round and
# saturate are free); DequantizeLinear: subtract zero point, multiply = 2.
# DynamicQuantizeLinear: min and max reductions (2) + quantize (2) = 4 per element.
QUANTIZE_PER_ELEMENT = 2
DYNAMIC_QUANTIZE_PER_ELEMENT = 4


def qlinear_binary(v: OpView) -> Count:
    """QLinearAdd / QLinearMul: dequantize both (2 + 2), op (1), requantize (2)."""
    return Count(0, 7 * v.out_numel(0))


def qlinear_unary(v: OpView) -> Count:
    """QLinearSigmoid / QLinearLeakyRelu: dequantize (2), op (1), requantize (2)."""
    return Count(0, 5 * v.out_numel(0))


# --- control flow ------------------------------------------------------------------------------
def if_op(v: OpView) -> Count:
    """If: the larger branch (the condition is known only at run time)."""
    branches = [v.subgraph(g) for g in v.layer.subgraphs.values()]
    if not branches:
        raise Uncountable("If without branches")
    return max(branches, key=lambda c: (c.flops, c.macs))


def loop(v: OpView) -> Count:
    """Loop: body x the trip count M when M is a constant (an initializer or Constant); an
    upper bound when the loop condition can stop it early."""
    names = v.positional_inputs()
    m_name = names[0] if names else None
    trips = v.constant(m_name) if m_name else None
    if trips is None or getattr(trips, "size", 0) != 1 or getattr(trips, "dtype", None) is None \
            or trips.dtype.kind not in "iu":  # M is an int64 scalar (cond is bool)
        raise Uncountable("loop trip count known only at run time")
    body = v.layer.subgraphs.get("body")
    if body is None:
        raise Uncountable("Loop without body")
    return v.subgraph(body).scaled(int(trips.reshape(())))


def scan(v: OpView) -> Count:
    """Scan: body x the scan axis length of the first scan input."""
    body = v.layer.subgraphs.get("body")
    if body is None:
        raise Uncountable("Scan without body")
    n_scan = int(v.attr("num_scan_inputs", 0))
    n_state = len(v.layer.inputs) - n_scan
    if n_scan <= 0 or n_state < 0:
        raise Uncountable("Scan inputs unknown")
    axes = v.attr("scan_input_axes") or [0] * n_scan
    x = v.inp(n_state)
    return v.subgraph(body).scaled(x[int(axes[0]) % len(x)])


# --- the table ----------------------------------------------------------------------------------
ZERO_OPS = (
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size",
    "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Split", "SplitToSequence",
    "Expand", "Tile", "Pad", "Constant", "ConstantOfShape", "Cast", "CastLike", "Dropout",
    "Range", "ScatterND", "ScatterElements", "Scatter", "DepthToSpace", "SpaceToDepth",
    "Compress", "OneHot", "Trilu", "EyeLike", "ReverseSequence", "NonZero", "Optional",
    "OptionalGetElement", "OptionalHasElement", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceInsert", "SequenceLength", "ConcatFromSequence", "MaxUnpool",
    "CenterCropPad",
)
# 1 FLOP per output element: arithmetic, comparisons, logic, and one evaluation of a
# primitive function (exp, log, erf, tanh, sigmoid, sqrt, ...), which counts as 1 FLOP.
UNARY_BINARY_1 = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt", "Exp", "Log",
    "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
    "ThresholdedRelu", "Clip", "Ceil", "Floor", "Round", "Sign", "Sin", "Cos", "Tan", "Asin",
    "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "And", "Or", "Xor",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Where", "IsNaN", "IsInf",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Shrink", "Softsign",
    "HardSigmoid", "Hardmax", "CumSum",
)
# composite activations: the elementwise ops of their defining formula
COMPOSITE = {
    "Gelu": 5,  # x * 0.5 * (1 + erf(x / sqrt 2)): divide, erf, add, multiply, multiply
    "HardSwish": 4,  # x * relu6(x + 3) / 6: add, clip, multiply, divide
    "Softplus": 3,  # log(1 + exp(x))
    "Mish": 5,  # x * tanh(log(1 + exp(x))): exp, add, log, tanh, multiply
    "Swish": 2,  # x * sigmoid(x)
}
REDUCE_1 = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
            "ReduceLogSum", "ArgMax", "ArgMin")
REDUCE_2 = ("ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")  # square/exp + sum


def _build() -> dict[tuple[str, str], Handler]:
    t: dict[tuple[str, str], Handler] = {}
    for op in ZERO_OPS:
        t[("", op)] = zero
    for op in UNARY_BINARY_1:
        t[("", op)] = per_output_element(1)
    for op, k in COMPOSITE.items():
        t[("", op)] = per_output_element(k)
    for op in REDUCE_1:
        t[("", op)] = per_input_element(1)
    for op in REDUCE_2:
        t[("", op)] = per_input_element(2)
    t.update({
        ("", "Conv"): conv,
        ("", "ConvInteger"): conv_integer,
        ("", "QLinearConv"): qlinear_conv,
        ("", "ConvTranspose"): conv_transpose,
        ("", "Gemm"): gemm,
        ("", "MatMul"): matmul,
        ("", "MatMulInteger"): matmul_quantized,
        ("", "QLinearMatMul"): matmul_quantized,
        ("", "Einsum"): einsum,
        ("", "Attention"): attention_onnx23,
        ("", "LSTM"): _rnn("lstm"),
        ("", "GRU"): _rnn("gru"),
        ("", "RNN"): _rnn("rnn"),
        ("", "BatchNormalization"): per_output_element(BATCHNORM_PER_ELEMENT),
        ("", "LayerNormalization"): layer_norm,
        ("", "GroupNormalization"): layer_norm,
        ("", "InstanceNormalization"): layer_norm,
        ("", "MeanVarianceNormalization"): per_output_element(NORM_PER_ELEMENT),
        ("", "LpNormalization"): per_output_element(RMSNORM_PER_ELEMENT),
        ("", "RMSNormalization"): rms_norm,
        ("", "SimplifiedLayerNormalization"): rms_norm,  # onnxruntime contrib op in the ONNX domain
        ("", "SkipSimplifiedLayerNormalization"): skip_rms_norm,
        ("", "Softmax"): per_output_element(SOFTMAX_PER_ELEMENT),
        ("", "LogSoftmax"): per_output_element(SOFTMAX_PER_ELEMENT),
        ("", "MaxPool"): _pool(average=False),
        ("", "AveragePool"): _pool(average=True),
        ("", "LpPool"): _pool(average=True),
        ("", "GlobalMaxPool"): global_pool(average=False),
        ("", "GlobalAveragePool"): global_pool(average=True),
        ("", "GlobalLpPool"): global_pool(average=True),
        ("", "Resize"): resize,
        ("", "Upsample"): resize,
        ("", "Sum"): variadic(),
        ("", "Max"): variadic(),
        ("", "Min"): variadic(),
        ("", "Mean"): variadic(extra_per_output=1),
        ("", "QuantizeLinear"): per_output_element(QUANTIZE_PER_ELEMENT),
        ("", "DequantizeLinear"): per_output_element(QUANTIZE_PER_ELEMENT),
        ("", "DynamicQuantizeLinear"): per_input_element(DYNAMIC_QUANTIZE_PER_ELEMENT),
        ("", "If"): if_op,
        ("", "Loop"): loop,
        ("", "Scan"): scan,
        # onnxruntime contrib ops
        (MS, "Attention"): attention_ms,
        (MS, "MultiHeadAttention"): multihead_attention_ms,
        (MS, "SkipLayerNormalization"): skip_layer_norm,
        (MS, "SkipSimplifiedLayerNormalization"): skip_rms_norm,
        (MS, "EmbedLayerNormalization"): embed_layer_norm,
        (MS, "FusedMatMul"): fused_matmul,
        (MS, "MatMulNBits"): matmul_nbits,
        (MS, "MatMulIntegerToFloat"): matmul_quantized,
        (MS, "DynamicQuantizeMatMul"): matmul_quantized,
        (MS, "FusedConv"): conv,  # Conv + activation: the activation's 1 FLOP/element is not added
        (MS, "Gelu"): per_output_element(COMPOSITE["Gelu"]),
        (MS, "BiasGelu"): per_output_element(COMPOSITE["Gelu"] + 1),
        (MS, "FastGelu"): per_output_element(8),  # tanh form: 0.5x(1+tanh(√(2/π)(x+0.044715x³)))
        (MS, "QuickGelu"): per_output_element(3),  # x * sigmoid(1.702 x)
        (MS, "BiasAdd"): per_output_element(2),
        (MS, "QuantizeLinear"): per_output_element(QUANTIZE_PER_ELEMENT),
        (MS, "DequantizeLinear"): per_output_element(QUANTIZE_PER_ELEMENT),
        (MS, "QLinearAdd"): qlinear_binary,
        (MS, "QLinearMul"): qlinear_binary,
        (MS, "QLinearSigmoid"): qlinear_unary,
        (MS, "QLinearLeakyRelu"): qlinear_unary,
        (MS, "QLinearConcat"): zero,
        (MS, "QLinearGlobalAveragePool"): global_pool(average=True),
    })
    return t


ONNX_HANDLERS: dict[tuple[str, str], Handler] = _build()


def onnx_handler(domain: str, op_type: str) -> Handler | None:
    d = "" if domain in ("", "ai.onnx") else domain
    return ONNX_HANDLERS.get((d, op_type))


__all__ = ["ONNX_HANDLERS", "ZERO", "onnx_handler"]

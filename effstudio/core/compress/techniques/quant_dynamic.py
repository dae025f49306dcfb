"""``quant.int8_dynamic``: int8 weights, activations quantized on the fly at every call.

- ONNX: onnxruntime's ``quantize_dynamic`` on the selected MatMul / Gemm layers only
  (MatMulInteger + DynamicQuantizeLinear; see ``_onnx_quant_util`` for how the selection is
  kept exact despite the quantizer rewriting Gemms), and on selected embedding lookups (a
  Gather from a constant float table: the table is stored as uint8 with one scale, the looked-up
  rows are dequantized).
- torch: ``torch.ao.quantization.quantize_dynamic`` on the selected ``nn.Linear`` / ``nn.LSTM``
  / ``nn.GRU`` modules (fbgemm kernels) and ``nn.Embedding`` tables (uint8 rows with a float
  scale and offset per row).  torch.export cannot trace the resulting modules (their
  packed weights are TorchScript objects), so the new version keeps the quantized module to run
  and its layer graph is the parent's with the changed layers' weights and ops replaced by what
  the module now stores (int8 weights + scales); see :func:`_torch_graph`.

Convolutions are refused: dynamic int8 Conv runs as ConvInteger, measured 5–6× slower on CPUs
without VNNI; static int8 (QDQ) is the technique for them.

ONNX only, chosen per input from calibration data (see ``_smoothing``): ``smooth`` (SmoothQuant
activation smoothing folded into the graph), ``per_channel: auto`` and ``reduce_range: auto``
(each group of MatMuls reading one activation gets the weight format with the least error of
onnxruntime's int8 product, emulated on the calibration activations for this CPU).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.compress.techniques import _onnx_quant_util as U
from effstudio.core.compress.techniques.calibration import calibration_feeds, check_source
from effstudio.core.graph import Layer, LayerGraph, Weight
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

CONV_REASON = ("dynamic int8 Conv runs as ConvInteger, measured 5–6× slower (demo CNN) on CPUs without VNNI; "
               "use quant.int8_static")
_ONNX_OPS = ("MatMul", "Gemm", "Gather")
_TORCH_OPS = {"linear": "Linear", "lstm": "LSTM", "gru": "GRU", "embedding": "Embedding"}
_QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _one_of(value, *allowed) -> bool:
    """``value`` equals one of ``allowed`` and has its type (1 is not true, "True" is not true)."""
    return any(type(value) is type(a) and value == a for a in allowed)


@dataclass
class Int8DynamicConfig(TechniqueConfig):
    """per_channel: one scale per output channel (more accurate than one per tensor), or "auto"
    (ONNX: per input, see below); reduce_range (ONNX only): 7-bit weights (null, the default: off;
    measured less accurate here), or "auto".
    smooth (ONNX only): SmoothQuant activation smoothing, alpha in (0, 1) for every input that can
    be smoothed, "auto" (per input: one of 0.3…0.9 or none), or null (off); smooth_mul: where the
    scale cannot be folded into the op that makes the activation, insert a Mul (costs an
    elementwise op each) instead of leaving that input unsmoothed.
    "auto" choices take the cheapest option whose emulated error on the calibration inputs is at most
    (1 + tolerance) times the least: first without an inserted Mul, then with per-tensor weights
    (onnxruntime's int8 MatMul with one scale per column measured 3–4.5 % slower on an AVX2 CPU);
    tolerance 0 takes the least-error option.
    calibration / samples: as quant.int8_static (used only by these choices)."""

    technique = "quant.int8_dynamic"
    version = 1
    per_channel: bool | str = True
    reduce_range: bool | str | None = None
    smooth: float | str | None = None
    smooth_mul: bool = True
    tolerance: float = 0.0
    calibration: str = "auto"
    samples: int = 16

    def validate(self) -> None:
        if not _one_of(self.per_channel, True, False, "auto"):
            raise CompressError(f"{self.technique}: per_channel must be true, false or auto")
        if not _one_of(self.reduce_range, None, True, False, "auto"):
            raise CompressError(f"{self.technique}: reduce_range must be true, false, null or auto")
        sm = self.smooth
        if sm is not None and sm != "auto" and (isinstance(sm, bool) or not isinstance(sm, int | float)
                                                or not 0.0 < float(sm) < 1.0):
            raise CompressError(f"{self.technique}: smooth must be null, auto or an alpha between 0 and 1, got {sm!r}")
        if not isinstance(self.smooth_mul, bool):
            raise CompressError(f"{self.technique}: smooth_mul must be true or false")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, int | float) \
                or not 0.0 <= float(self.tolerance) <= 100.0:
            raise CompressError(f"{self.technique}: tolerance must be a number in 0..100, got {self.tolerance!r}")
        check_source(self.calibration, self.technique)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 1 <= self.samples <= 100_000:
            raise CompressError(f"{self.technique}: samples must be an integer in 1..100000, got {self.samples!r}")

    def layerwise(self) -> bool:
        """Whether the step chooses per input from calibration data (ONNX only)."""
        return self.per_channel == "auto" or self.reduce_range == "auto" or self.smooth is not None


def _torch_module_of(layer: Layer, loaded: LoadedModel):
    try:
        return loaded.torch_module.get_submodule(layer.scope) if layer.scope else None
    except AttributeError:
        return None


@register
class Int8Dynamic(Technique):
    name = "quant.int8_dynamic"
    title = "Dynamic int8 quantization (weights int8, activations at run time)"
    config_cls = Int8DynamicConfig

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        op = layer.op_type
        if loaded.backend == "onnx":
            if op in ("Conv", "ConvTranspose"):
                return CONV_REASON
            if op not in _ONNX_OPS:
                return f"{op} is not a MatMul/Gemm/Gather (dynamic int8 quantizes matrix products and embeddings)"
            w = U.main_weight(layer)
            if w is None:
                return ("not a lookup in a constant float table" if op == "Gather"
                        else "no constant float weight matrix (a product of two activations)")
            if op == "Gemm" and not (float(layer.attributes.get("alpha", 1.0)) == 1.0
                                     and float(layer.attributes.get("beta", 1.0)) == 1.0
                                     and int(layer.attributes.get("transA", 0)) == 0):
                return "Gemm with alpha/beta other than 1 or transA (onnxruntime does not quantize it)"
            return None
        if op in U.TORCH_CONV_OPS:
            return CONV_REASON
        if op not in _TORCH_OPS:
            return f"{op} is not a Linear/LSTM/GRU"
        import torch.nn as nn

        mod = _torch_module_of(layer, loaded)
        want = getattr(nn, _TORCH_OPS[op])
        if mod is None or type(mod) is not want:
            kind = type(mod).__name__ if mod is not None else "no module"
            return (f"computed inside {kind}, not by an nn.{want.__name__} module (torch's dynamic "
                    "quantization converts nn.Linear/nn.LSTM/nn.GRU/nn.Embedding modules)")
        return None

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        if loaded.backend == "onnx":
            return Expectation("faster-and-smaller", "int8 weights (~4× smaller); MatMulInteger is faster for "
                               "large matrix products, slower for small ones (quantizing activations at "
                               "every call has a cost): measured 1.8× on MiniLM-L6 sentence embeddings, one "
                               "sentence at a time, one thread of a 2-core AVX2 CPU; re-measured after the step")
        return Expectation("faster-and-smaller", "int8 weights (~4× smaller); fbgemm's dynamic int8 Linear measured "
                           "1.3× (batch 1) to 2.3× (batch 32) on a 1024×1024 Linear and 1.0–2.0× on 384→1536, "
                           "one thread of a 2-core AVX2 CPU: small layers and batch 1 gain least")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, Int8DynamicConfig)
        if loaded.backend != "onnx" and config.layerwise():
            raise CompressError(f"{self.name}: smooth and per_channel/reduce_range auto work on ONNX models (they "
                                "emulate onnxruntime's int8 kernels); use fixed settings for torch models")
        self.check_selection(loaded, config, selection)
        if loaded.backend == "onnx":
            return _apply_onnx(self, loaded, config, selection, progress)
        return _apply_torch(self, loaded, config, selection, progress)


# --- ONNX ------------------------------------------------------------------------------------
def _apply_onnx(tech: Int8Dynamic, loaded: LoadedModel, config: Int8DynamicConfig, selection: list[str],
                progress: Progress) -> StepResult:
    from effstudio.core.compress.materialize import loaded_from_onnx_proto

    progress.update(0.05, "preparing the ONNX graph")
    proto = U.prepare_proto(loaded)
    selected = set(selection)
    sel_gemms = [n for n in selection if loaded.graph.layer(n).op_type == "Gemm"]
    mapping = U.gemms_to_matmul(proto, sel_gemms)
    targets = [mapping.get(n, n) for n in selection]
    other_gemms = [n.name for n in loaded.onnx_model.graph.node
                   if n.op_type == "Gemm" and n.name not in selected and U.gemm_rewritable(n)]

    per_channel = config.per_channel if isinstance(config.per_channel, bool) else True
    reduce_range, why = U.resolve_reduce_range(None if config.reduce_range == "auto" else config.reduce_range,
                                               "dynamic")
    formats = {t: (per_channel, reduce_range) for t in targets}
    layerwise_notes: list[str] = []
    extra: dict = {}
    coupled: list[str] = []
    if config.layerwise():
        back = {v: k for k, v in mapping.items()}
        proto, chosen, layerwise_notes, extra, coupled = _layerwise(
            loaded, proto, config, targets, (per_channel, reduce_range), back, progress.sub(0.05, 0.5))
        formats.update(chosen)
        coupled = [n for n in coupled if n not in selected]
    progress.update(0.5, f"quantizing {len(targets)} layer(s) with onnxruntime (dynamic int8)")
    result = _quantize(proto, formats, reduce_range)
    restored = U.restore_gemms(result, loaded.onnx_model, other_gemms)
    dropped = U.drop_zero_weight_zero_points(result)

    progress.update(0.7, "checking which layers were quantized")
    changed, left, stored = _verify_onnx(loaded, result, selection)
    n_gather = sum(1 for n in changed if loaded.graph.layer(n).op_type == "Gather")
    kinds = sorted({"per-channel" if pc else "per-tensor" for pc, _ in formats.values()})
    seven = sum(1 for n in changed if formats.get(mapping.get(n, n), (0, False))[1])
    seven_text = "" if not seven else ", 7-bit range" if seven == len(changed) else f", 7-bit range on {seven}"
    notes = [f"onnxruntime dynamic int8 ({' and '.join(kinds)} weights{seven_text}): {len(changed) - n_gather} "
             "layer(s) now run as MatMulInteger with activations quantized at every call"]
    notes += layerwise_notes
    if n_gather:
        notes.append(f"{n_gather} embedding table(s) stored as 8-bit (one scale each); looked-up rows are dequantized")
    if dropped:
        notes.append(f"all-zero weight zero points removed from {dropped} MatMulInteger node(s) (symmetric weights: "
                     "same result, onnxruntime's faster kernel path)")
    if config.reduce_range is None:
        notes.append(f"reduce_range {'on' if reduce_range else 'off'}: {why}")
    if mapping:
        notes.append(f"{len(mapping)} selected Gemm(s) became MatMul + Add to be quantized (the bias stays float32)")
    if restored:
        notes.append(f"onnxruntime's quantizer rewrites every Gemm as MatMul+Add; {len(restored)} unselected "
                     "Gemm(s) were restored unchanged")
    if left:
        notes.append(f"onnxruntime left {len(left)} selected layer(s) float: {', '.join(left[:8])}")
    new = loaded_from_onnx_proto(result, loaded, name="int8_dynamic", progress=progress.sub(0.8, 1.0))
    return StepResult(new, changed, coupled=coupled, notes=notes, expectation=tech.expectation(loaded, config),
                      extra={"quantized": stored, "left_float": left, "reduce_range": reduce_range, **extra,
                             "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                             "weight_bytes_after": new.graph.totals()["weight_bytes"]})


def _quantize(proto, formats: dict[str, tuple[bool, bool]], reduce_range: bool):
    """onnxruntime's ``quantize_dynamic`` on the nodes of ``formats`` (node -> (per_channel,
    reduce_range)): one run per weight granularity (onnxruntime takes it per run), a node whose
    reduce_range differs from the run's through ``TensorQuantOverrides`` on its weight."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    inits = {t.name: t for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    model = proto
    for pc in sorted({pc for pc, _ in formats.values()}, reverse=True):
        names = [n for n, (p, _) in formats.items() if p == pc]
        overrides = {}
        for n in names:
            rr = formats[n][1]
            node = nodes.get(n)
            if rr != reduce_range and node is not None and node.op_type == "MatMul" and node.input[1] in inits:
                overrides[node.input[1]] = [{"axis": 1, "reduce_range": rr} if pc else {"reduce_range": rr}]
        with tempfile.TemporaryDirectory(prefix="effstudio-q-") as tmp:
            out = Path(tmp) / "q.onnx"
            big = model.ByteSize() > (1 << 30)
            try:
                with U.quiet():
                    quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=pc,
                                     reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Gather"],
                                     nodes_to_quantize=names, use_external_data_format=big,
                                     extra_options={"MatMulConstBOnly": True, "TensorQuantOverrides": overrides})
            except Exception as e:  # onnxruntime raises assorted errors on graphs it cannot handle
                raise CompressError(f"onnxruntime quantize_dynamic failed: {type(e).__name__}: {e}") from e
            model = onnx.load(str(out))
    return model


def _layerwise(loaded: LoadedModel, proto, config: Int8DynamicConfig, targets: list[str],
               default: tuple[bool, bool], back: dict[str, str], progress: Progress):
    """Smoothing and per-input weight formats chosen on calibration data (``_smoothing``): (smoothed
    proto, node -> (per_channel, reduce_range), notes, extra, layers whose constants took the scale)."""
    from effstudio.core.compress.techniques import _smoothing as S

    progress.update(0.0, "running the calibration inputs")
    feeds, info = calibration_feeds(loaded, config.calibration, config.samples)
    matmul_nodes = {n.name for n in proto.graph.node if n.op_type == "MatMul"}
    matmuls = [t for t in targets if t in matmul_nodes]
    pcs = [True, False] if config.per_channel == "auto" else [default[0]]
    rrs = [False, True] if config.reduce_range == "auto" else [default[1]]
    sm = config.smooth
    saturate = not U.cpu_has_vnni()
    opts = S.Options(alphas=S.ALPHAS if sm == "auto" else (() if sm is None else (float(sm),)),
                     formats=[(p, r) for p in pcs for r in rrs], allow_mul=config.smooth_mul,
                     tolerance=float(config.tolerance), saturate=saturate,
                     only_smoothed=sm is not None and sm != "auto")
    smoothed, choices = S.layerwise(proto, matmuls, feeds, opts, (True, False), progress.sub(0.05, 1.0))
    formats = {n: (c.per_channel, c.reduce_range) for c in choices for n in c.group.nodes}

    def name(node: str) -> str:  # the parent's layer name of a result node (a Gemm became <gemm>_MatMul)
        return back.get(node, node)

    notes = [f"chosen per input ({len(choices)} group(s) of MatMuls reading one activation) by the error of "
             "onnxruntime's int8 product emulated on the calibration activations"
             + (" (this CPU has no VNNI: the u8×s8 pair saturation of its kernels is part of the emulation)"
                if saturate else ""), info.note()]
    done = [c for c in choices if c.alpha is not None]
    if sm is not None:
        folded = sum(1 for c in done if c.how != "Mul inserted")
        alphas = sorted({c.alpha for c in done})
        notes.append(f"SmoothQuant smoothing on {len(done)} of {len(choices)} input(s) (alpha "
                     f"{', '.join(f'{a:g}' for a in alphas) or '-'}): {folded} folded into the op that makes the "
                     f"activation (LayerNorm scale/bias, a constant factor, a MatMul's columns), "
                     f"{len(done) - folded} through an inserted Mul (one elementwise op per call each)"
                     + ("" if config.smooth_mul else "; inputs that cannot be folded are left unsmoothed"))
    if len(opts.formats) > 1:
        n_pc = sum(1 for c in choices if c.per_channel)
        n_rr = sum(1 for c in choices if c.reduce_range)
        notes.append(f"weights: {n_pc} input(s) per-channel, {len(choices) - n_pc} per-tensor; {n_rr} with 7-bit range")
    if choices:
        err = float(np.mean([c.error for c in choices]))
        base = float(np.mean([c.error_default for c in choices]))
        notes.append(f"emulated relative error of the MatMul outputs, mean over inputs: {err:.4f} (per-channel 8-bit "
                     f"weights without smoothing: {base:.4f})")
    extra = {"layerwise": [{"layers": [name(n) for n in c.group.nodes], "input": c.group.tensor, "alpha": c.alpha,
                            "per_channel": c.per_channel, "reduce_range": c.reduce_range,
                            "error": round(c.error, 6), "error_unsmoothed": round(c.error_plain, 6),
                            "error_per_channel_8bit": round(c.error_default, 6), "how": c.how} for c in choices],
             "calibration": {"source": info.source, "samples": info.samples, "poor": info.poor}}
    coupled = [name(n) for c in choices for n in c.folded if name(n) in loaded.graph]
    return smoothed, formats, notes, extra, list(dict.fromkeys(coupled))


def _verify_onnx(loaded: LoadedModel, result, selection: list[str]
                 ) -> tuple[list[str], list[str], dict[str, str]]:
    """(selected layers now 8-bit, selected layers left float, layer -> stored dtype); raises if an
    unselected layer changed or none of the selected did."""
    def int8_layers(model) -> dict[str, str]:
        by_layer = U.storage_by_layer(model, loaded.graph.names())
        return {name: s.dtype for name, stored in by_layer.items() for s in stored
                if (s.op_type in _QUANTIZED_OPS or s.op_type == "Gather") and s.dtype in ("int8", "uint8")}

    dtype_of = int8_layers(result)
    quantized = set(dtype_of)
    already = set(int8_layers(loaded.onnx_model))  # quantized by an earlier step: not this step's doing
    stray = sorted(quantized - set(selection) - already)
    if stray:
        raise CompressError(f"onnxruntime quantized {len(stray)} layer(s) outside the selection: "
                            f"{', '.join(stray[:8])}; the step was not applied")
    changed = [n for n in selection if n in quantized]
    left = [n for n in selection if n not in quantized]
    if not changed:
        raise CompressError(f"onnxruntime quantized none of the {len(selection)} selected layer(s)")
    return changed, left, {n: str(dtype_of[n]) for n in changed}


# --- torch -----------------------------------------------------------------------------------
def _apply_torch(tech: Int8Dynamic, loaded: LoadedModel, config: Int8DynamicConfig, selection: list[str],
                 progress: Progress) -> StepResult:
    import warnings

    import torch
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    from effstudio.core.compress.materialize import loaded_from_torch_module
    from effstudio.core.errors import ModelLoadError

    graph = loaded.graph
    paths = {n: graph.layer(n).scope for n in selection}
    spec = {}
    for n, path in paths.items():
        op = graph.layer(n).op_type
        if op == "embedding":
            spec[path] = float_qparams_weight_only_qconfig
        else:
            spec[path] = per_channel_dynamic_qconfig if (op == "linear" and config.per_channel) \
                else default_dynamic_qconfig
    progress.update(0.1, f"quantizing {len(spec)} module(s) with torch.ao (dynamic int8)")
    module = copy.deepcopy(loaded.torch_module).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)

    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

    kinds = (nnqd.Linear, nnqd.LSTM, nnqd.GRU, nnq.Embedding)
    changed = [n for n in selection if isinstance(module.get_submodule(paths[n]), kinds)]
    left = [n for n in selection if n not in changed]
    if not changed:
        raise CompressError(f"torch quantized none of the {len(selection)} selected layer(s)")
    progress.update(0.6, "building the new version's layer graph")
    notes = [f"torch.ao dynamic int8 ({'per-channel' if config.per_channel else 'per-tensor'} Linear weights, "
             f"per-tensor LSTM/GRU weights, per-row uint8 embeddings): {len(changed)} layer(s) changed"]
    try:
        new = loaded_from_torch_module(module, loaded, progress=progress.sub(0.6, 1.0))
    except ModelLoadError:
        new = LoadedModel(graph=_torch_graph(graph, module, {n: paths[n] for n in changed}),
                          format=loaded.format, path=loaded.path, torch_module=module, exported=None,
                          example_inputs=dict(loaded.example_inputs))
        notes.append("torch.export cannot trace torch.ao's dynamic-quantized modules (their packed weights "
                     "are TorchScript objects): the layer graph is the parent's with the changed layers' "
                     "weights and ops replaced by what the module stores; this version runs in torch but "
                     "cannot be saved as .pt2")
    if left:
        notes.append(f"torch left {len(left)} selected layer(s) float: {', '.join(left[:8])}")
    stored = {n: _module_weights(paths[n], module.get_submodule(paths[n]))[0][0].dtype for n in changed}
    return StepResult(new, changed, notes=notes, expectation=tech.expectation(loaded, config),
                      extra={"quantized": stored, "left_float": left,
                             "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                             "weight_bytes_after": new.graph.totals()["weight_bytes"]})


def _qtensor_weights(prefix: str, q) -> list[Weight]:
    """Weight entries for a quantized torch tensor: int8 data, then its scales and zero points."""
    import torch

    from effstudio.core import dtypes

    out = [Weight(prefix, tuple(int(d) for d in q.shape), dtypes.from_torch(q.dtype))]
    if q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        s, z = q.q_per_channel_scales(), q.q_per_channel_zero_points()
        out += [Weight(f"{prefix}_scale", tuple(s.shape), dtypes.from_torch(s.dtype)),
                Weight(f"{prefix}_zero_point", tuple(z.shape), dtypes.from_torch(z.dtype))]
    else:  # one float64 scale and one int64 zero point
        out += [Weight(f"{prefix}_scale", (), "float64"), Weight(f"{prefix}_zero_point", (), "int64")]
    return out


def _module_weights(path: str, mod) -> tuple[list[Weight], str, str]:
    """(weights, op_type, domain) of a torch.ao dynamic-quantized module as it now stores them."""
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

    from effstudio.core import dtypes

    if isinstance(mod, nnq.Embedding):
        return _qtensor_weights(f"{path}.weight", mod.weight()), "embedding_byte", "quantized"
    if isinstance(mod, nnqd.Linear):
        ws = _qtensor_weights(f"{path}.weight", mod.weight())
        b = mod.bias()
        if b is not None:
            ws.append(Weight(f"{path}.bias", tuple(b.shape), dtypes.from_torch(b.dtype)))
        return ws, "linear_dynamic", "quantized"
    ws = []
    for key, t in mod.get_weight().items():  # weight_ih_l0, weight_hh_l0, ... as nn.LSTM names them
        ws += _qtensor_weights(f"{path}.{key}", t)
    for key, t in mod.get_bias().items():
        ws.append(Weight(f"{path}.{key}", tuple(int(d) for d in t.shape), dtypes.from_torch(t.dtype)))
    return ws, "quantized_lstm" if isinstance(mod, nnqd.LSTM) else "quantized_gru", "aten"


def _torch_graph(parent: LayerGraph, module, changed: dict[str, str]) -> LayerGraph:
    """The parent's layer graph with each changed layer's weights and op replaced by the quantized
    module's storage (names ``<module>.weight`` int8, ``<module>.weight_scale``, ...)."""
    g = copy.deepcopy(parent)
    for name, path in changed.items():
        lay = g.layer(name)
        weights, op, domain = _module_weights(path, module.get_submodule(path))
        lay.weights = weights
        lay.op_type, lay.domain = op, domain
        lay.flags = [*lay.flags, "graph-from-parent"]
    g.mark_shared_weights()
    if g.model is not None:
        g.model.extra = {**g.model.extra, "graph_note": "parent graph with quantized layers replaced "
                         "(torch.export cannot trace torch.ao dynamic-quantized modules)"}
    return g

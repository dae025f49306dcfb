"""``quant.int8_static``: int8 weights *and* activations with ranges calibrated ahead of time.

onnxruntime's ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear pairs around
the selected nodes; onnxruntime fuses them into QLinearConv / QLinearMatMul / QGemm kernels when
it loads the model), restricted to the selection with ``nodes_to_quantize``.  Calibration data:
see :mod:`.calibration`.  ``quant_pre_process`` is not run: its graph optimizations rename and
fuse nodes, which would break the mapping from the selection to the result.

A torch model goes through its ONNX form (torch.onnx dynamo export, as the demo zoo's ``.onnx``
copies): the new version is an ONNX model run by onnxruntime; the selected torch layers are
found in the export by weight name or by the exporter's module-scope metadata.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.compress.techniques import _onnx_quant_util as U
from effstudio.core.compress.techniques.calibration import calibration_feeds, check_source
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

_ONNX_OPS = frozenset({"Conv", "MatMul", "Gemm"})
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass
class Int8StaticConfig(TechniqueConfig):
    """per_channel: one weight scale per output channel; calibration: "auto" | "digits" | "random" |
    path to an .npz of inputs; method: how activation ranges are chosen from the calibration
    data (minmax | entropy | percentile); samples: how many calibration samples to run;
    reduce_range: 7-bit weights, which avoid int16 saturation in onnxruntime's u8×s8 kernels on
    CPUs without VNNI; null (the default) turns it on exactly there."""

    technique = "quant.int8_static"
    version = 1
    per_channel: bool = True
    calibration: str = "auto"
    method: str = "minmax"
    samples: int = 128
    percentile: float = 99.999
    reduce_range: bool | None = None

    def validate(self) -> None:
        if not isinstance(self.per_channel, bool):
            raise CompressError(f"{self.technique}: per_channel must be true or false")
        if self.reduce_range is not None and not isinstance(self.reduce_range, bool):
            raise CompressError(f"{self.technique}: reduce_range must be true, false or null (auto)")
        check_source(self.calibration, self.technique)
        if self.method not in _METHODS:
            raise CompressError(f"{self.technique}: method must be one of {', '.join(_METHODS)}, got {self.method!r}")
        if not isinstance(self.samples, int) or not 1 <= self.samples <= 100_000:
            raise CompressError(f"{self.technique}: samples must be an integer in 1..100000, got {self.samples!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise CompressError(f"{self.technique}: percentile must be in (50, 100], got {self.percentile}")


@register
class Int8Static(Technique):
    name = "quant.int8_static"
    title = "Static int8 quantization (QDQ, calibrated)"
    config_cls = Int8StaticConfig

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        op = layer.op_type
        if loaded.backend == "onnx":
            if op not in _ONNX_OPS:
                return f"{op} is not a Conv/MatMul/Gemm"
            if op in ("Conv", "Gemm") and U.main_weight(layer) is None:
                return "its weight is not a constant"
            return None
        if op in U.TORCH_CONV_OPS or op in U.TORCH_LINEAR_OPS:
            if op in U.TORCH_CONV_OPS | {"linear", "addmm"} and U.main_weight(layer) is None:
                return "no float weight"
            return None
        return f"{op} is not a convolution or matrix product"

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        text = ("int8 weights and activations (~4× smaller weights); onnxruntime fuses the QDQ pairs into "
                "int8 kernels: measured 1.35–1.47× faster on the demo CNN (one image at a time, one thread of a "
                "2-core AVX2 CPU without VNNI); small layers can get slower from the extra quantize/dequantize steps")
        if loaded.backend == "torch":
            text += "; the new version is the model's ONNX form, run by onnxruntime"
        return Expectation("faster-and-smaller", text)

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, Int8StaticConfig)
        self.check_selection(loaded, config, selection)
        notes: list[str] = []
        target, names = loaded, {n: n for n in selection}
        if loaded.backend == "torch":
            target = U.onnx_form(loaded, progress.sub(0.0, 0.2))
            names = U.map_torch_layers(loaded.graph, target, selection, frozenset({"Conv", "MatMul", "Gemm"}))
            notes.append("the torch model was exported to ONNX (torch.onnx, dynamo, opset 18) and quantized "
                         "there: this version is an ONNX model run by onnxruntime")
            if any(lay.op_type == "batch_norm" for lay in loaded.graph.layers):
                notes.append("the exporter folds BatchNorm into the preceding convolution")
        reduce_range, why = U.resolve_reduce_range(config.reduce_range)
        quantized, left, result, info = quantize_static_onnx(target, config, list(names.values()),
                                                             progress.sub(0.2, 0.85), reduce_range=reduce_range)
        back = {v: k for k, v in names.items()}
        changed = [back[n] for n in quantized]
        left = [back[n] for n in left]
        notes.insert(0, f"onnxruntime static int8 (QDQ, {'per-channel' if config.per_channel else 'per-tensor'} "
                        f"weights, {config.method} activation ranges): {len(changed)} layer(s) quantized; "
                        "layers outside the selection stay float")
        notes.append(info.note())
        if config.reduce_range is None:
            notes.append(f"reduce_range {'on' if reduce_range else 'off'}: {why}")
        if left:
            notes.append(f"onnxruntime left {len(left)} selected layer(s) float: {', '.join(left[:8])}")
        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        new = loaded_from_onnx_proto(result, loaded, name="int8_static", progress=progress.sub(0.85, 1.0))
        return StepResult(new, changed, notes=notes, expectation=self.expectation(loaded, config),
                          extra={"quantized": {n: "int8" for n in changed}, "left_float": left,
                                 "calibration": {"source": info.source, "samples": info.samples,
                                                 "poor": info.poor},
                                 "onnx_nodes": {k: names[k] for k in changed} if loaded.backend == "torch" else {},
                                 "reduce_range": reduce_range,
                                 "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                                 "weight_bytes_after": new.graph.totals()["weight_bytes"]})


def quantize_static_onnx(loaded: LoadedModel, config: Int8StaticConfig, selection: list[str], progress: Progress,
                         *, reduce_range: bool):
    """Run onnxruntime's QDQ quantizer on the named nodes of an ONNX model.

    Returns (quantized node names, selected names left float, result ModelProto, CalibrationInfo);
    raises CompressError if a node outside the selection was quantized or none inside was."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from effstudio.core.compress.techniques.calibration import FeedReader

    progress.update(0.0, "preparing calibration data")
    feeds, info = calibration_feeds(loaded, config.calibration, config.samples)
    proto = U.prepare_proto(loaded)
    method = getattr(CalibrationMethod, _METHODS[config.method])
    extra = {"CalibPercentile": float(config.percentile)} if config.method == "percentile" else {}
    progress.update(0.1, f"calibrating and quantizing {len(selection)} layer(s) (onnxruntime, QDQ)")
    with tempfile.TemporaryDirectory(prefix="effstudio-q-") as tmp:
        out = Path(tmp) / "q.onnx"
        reader = FeedReader(feeds, progress.sub(0.1, 0.9))
        cache = None
        try:
            with U.quiet():
                if config.method == "entropy":
                    cache = _entropy_ranges(proto, reader, Path(tmp))
                quantize_static(proto, out, reader, quant_format=QuantFormat.QDQ, calibration_cache_path=cache,
                                per_channel=config.per_channel, reduce_range=reduce_range,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                nodes_to_quantize=list(selection), op_types_to_quantize=sorted(_ONNX_OPS),
                                calibrate_method=method, use_external_data_format=proto.ByteSize() > (1 << 30),
                                extra_options=extra)
        except CompressError:
            raise
        except Exception as e:  # onnxruntime raises assorted errors on graphs it cannot handle
            raise CompressError(f"onnxruntime quantize_static failed: {type(e).__name__}: {e}") from e
        result = onnx.load(str(out))
    progress.update(0.95, "checking which layers were quantized")
    quantized, left = verify_qdq(loaded, result, selection)
    return quantized, left, result, info


def _entropy_ranges(proto, reader, folder: Path) -> Path:
    """Entropy (KL) activation ranges with a 2048-bin histogram, written as onnxruntime's
    calibration cache.  ``quantize_static`` cannot pass histogram sizes to its entropy calibrator,
    whose defaults (128 bins, 128 quantized bins) leave a single candidate threshold: the
    min/max range (measured: identical scales to MinMax).  Its own ``create_calibrator`` takes them."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    src = folder / "calib_input.onnx"
    onnx.save_model(proto, str(src), save_as_external_data=proto.ByteSize() > (1 << 30))
    calibrator = create_calibrator(src, sorted(_ONNX_OPS), augmented_model_path=str(folder / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    reader.rewind()
    cache = folder / "ranges.json"
    save_tensors_data(ranges, cache)
    return cache


def verify_qdq(loaded: LoadedModel, result, selection: list[str]) -> tuple[list[str], list[str]]:
    """Which selected nodes compute on int8 weights (or, weightless, on dequantized inputs) in the
    QDQ result; raises if an unselected layer's weight became int8 or none was quantized."""
    storage = U.weight_storage(result)
    int8 = {n for n, s in storage.items() if s.dequantized and s.dtype in ("int8", "uint8")}
    selected = set(selection)
    stray = sorted(n for n in int8 if n not in selected)
    if stray:
        raise CompressError(f"onnxruntime quantized {len(stray)} layer(s) outside the selection: "
                            f"{', '.join(stray[:8])}; the step was not applied")
    quantized = []
    for n in selection:
        has_weight = U.main_weight(loaded.graph.layer(n)) is not None
        if (n in int8 if has_weight else U.activation_from_dq(result, n)) and U.activation_from_dq(result, n):
            quantized.append(n)
    left = [n for n in selection if n not in quantized]
    if not quantized:
        raise CompressError(f"onnxruntime quantized none of the {len(selection)} selected layer(s)")
    return quantized, left

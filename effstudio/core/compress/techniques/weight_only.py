"""``quant.weight_only``: 8- or 4-bit weights in blocks, activations stay float.

- ONNX: onnxruntime's ``MatMulNBitsQuantizer`` (the ``MatMulNBits`` contrib op; 4 and 8 bits)
  on the selected MatMuls; a selected Gemm is first rewritten as MatMul + Add (only that one).
  The quantizer quantizes every MatMul whose op type it targets *or* whose name it is given,
  so the unselected MatMuls are passed as ``nodes_to_exclude``; the result is checked.
  ``accuracy_level=4`` lets the kernel quantize activations to int8 per block at run time,
  which is what makes it fast on CPUs.
- torch: no weight-only kernel is fast on CPUs like the development machine, so a selected
  ``nn.Linear`` becomes a ``WeightOnlyLinear`` (:func:`weight_only_linear_cls`), which stores
  int8 (or two 4-bit values per byte) plus one float32 scale per block and dequantizes at every
  call: smaller, not faster.
  Measured on a 2-core AVX2 CPU without VNNI (torch 2.13, one thread, Linear 1024×1024 and
  384→1536, batch 1–128): dequantize-per-call 0.19–1.0× the float32 speed;
  ``torch._weight_int8pack_mm`` 0.03–0.13×; ``torch._weight_int4pack_mm_for_cpu`` 0.02–0.09×;
  torchao int8 weight-only 0.84× (its int4 needs the missing ``mslk`` package).  For speed on
  torch use ``quant.int8_dynamic``.  The dequantize ops run inside the module, so its layer is
  named ``<module>.linear`` in the new graph (``StepResult.extra["renamed"]``).
"""

from __future__ import annotations

import copy
import functools
import tempfile
from dataclasses import dataclass

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.compress.techniques import _onnx_quant_util as U
from effstudio.core.graph import Layer
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclass
class WeightOnlyConfig(TechniqueConfig):
    """bits: 8 | 4; block_size: weights per scale along the input dimension; symmetric: no zero
    points; accuracy_level (ONNX MatMulNBits): 0 = float activations, 4 = int8 activations in
    the kernel (much faster on CPUs, slightly less accurate)."""

    technique = "quant.weight_only"
    version = 1
    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise CompressError(f"{self.technique}: bits must be 4 or 8, got {self.bits!r}")
        if self.block_size not in BLOCK_SIZES:
            raise CompressError(f"{self.technique}: block_size must be one of "
                                f"{', '.join(map(str, BLOCK_SIZES))}, got {self.block_size!r}")
        if not isinstance(self.symmetric, bool):
            raise CompressError(f"{self.technique}: symmetric must be true or false")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise CompressError(f"{self.technique}: accuracy_level must be 0..4, got {self.accuracy_level!r}")


@register
class WeightOnly(Technique):
    name = "quant.weight_only"
    title = "Weight-only quantization (8/4-bit blocks)"
    config_cls = WeightOnlyConfig

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        assert isinstance(config, WeightOnlyConfig)
        if loaded.backend == "onnx":
            if layer.op_type not in ("MatMul", "Gemm"):
                return f"{layer.op_type} is not a MatMul/Gemm"
            w = U.main_weight(layer)
            if w is None or len(w.shape) != 2:
                return "no constant 2-D float weight matrix"
            if layer.op_type == "Gemm" and not (float(layer.attributes.get("alpha", 1.0)) == 1.0
                                                and float(layer.attributes.get("beta", 1.0)) == 1.0
                                                and int(layer.attributes.get("transA", 0)) == 0):
                return "Gemm with alpha/beta other than 1 or transA"
            return None
        if layer.op_type != "linear":
            return f"{layer.op_type} is not a Linear"
        import torch.nn as nn

        try:
            mod = loaded.torch_module.get_submodule(layer.scope) if layer.scope else None
        except AttributeError:
            mod = None
        if type(mod) is not nn.Linear:
            return "not computed by an nn.Linear module"
        if mod.in_features % config.block_size:
            return f"in_features {mod.in_features} is not a multiple of block_size {config.block_size}"
        return None

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        assert isinstance(config, WeightOnlyConfig)
        ratio = 32 / (config.bits + 32 / config.block_size)
        if loaded.backend == "onnx":
            if config.accuracy_level == 4:
                return Expectation("faster-and-smaller", f"~{ratio:.1f}× smaller weights; MatMulNBits with int8 "
                                   "activations measured 1.3–5× faster at batch 1 and 0.65–1.1× at batch 32–128 "
                                   "on a 2-core AVX2 CPU (onnxruntime 1.32)")
            return Expectation("smaller-only", f"~{ratio:.1f}× smaller weights; MatMulNBits with float "
                               "activations measured 0.03–0.2× (8-bit) and 0.6–1.0× (4-bit) the float32 speed "
                               "on a 2-core AVX2 CPU: use accuracy_level 4 for speed")
        return Expectation("smaller-only", f"~{ratio:.1f}× smaller weights; dequantized at every call: measured "
                           "0.2–1.0× the float32 speed on a 2-core AVX2 CPU (use quant.int8_dynamic for speed)")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, WeightOnlyConfig)
        self.check_selection(loaded, config, selection)
        if loaded.backend == "onnx":
            return self._apply_onnx(loaded, config, selection, progress)
        return self._apply_torch(loaded, config, selection, progress)

    # --- ONNX ------------------------------------------------------------------------------
    def _apply_onnx(self, loaded, config: WeightOnlyConfig, selection, progress) -> StepResult:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        proto = U.prepare_proto(loaded)
        gemms = [n for n in selection if loaded.graph.layer(n).op_type == "Gemm"]
        mapping = U.gemms_to_matmul(proto, gemms)
        targets = {mapping.get(n, n) for n in selection}
        others = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in targets]
        progress.update(0.2, f"quantizing {len(targets)} MatMul(s) to {config.bits}-bit blocks (MatMulNBits)")
        try:
            with U.quiet(), tempfile.TemporaryDirectory():
                q = MatMulNBitsQuantizer(proto, bits=config.bits, block_size=config.block_size,
                                         is_symmetric=config.symmetric,
                                         accuracy_level=config.accuracy_level or None,
                                         nodes_to_exclude=others, op_types_to_quantize=("MatMul",))
                q.process()
                result = q.model.model
        except Exception as e:  # onnxruntime raises assorted errors on graphs it cannot handle
            raise CompressError(f"onnxruntime MatMulNBitsQuantizer failed: {type(e).__name__}: {e}") from e
        by_layer = U.storage_by_layer(result, loaded.graph.names())
        done = {n for n, st in by_layer.items() if any(s.op_type == "MatMulNBits" for s in st)}
        stray = sorted(done - set(selection))
        if stray:
            raise CompressError(f"onnxruntime quantized {len(stray)} layer(s) outside the selection: "
                                f"{', '.join(stray[:8])}; the step was not applied")
        changed = [n for n in selection if n in done]
        left = [n for n in selection if n not in done]
        if not changed:
            raise CompressError(f"onnxruntime quantized none of the {len(selection)} selected layer(s)")
        new = loaded_from_onnx_proto(result, loaded, name=f"weight_only_{config.bits}bit",
                                     progress=progress.sub(0.7, 1.0))
        notes = [f"{len(changed)} layer(s) now run as MatMulNBits ({config.bits}-bit, blocks of {config.block_size}, "
                 f"{'symmetric' if config.symmetric else 'with zero points'}, "
                 f"{'int8' if config.accuracy_level == 4 else 'float'} activations in the kernel)"]
        if mapping:
            notes.append(f"{len(mapping)} selected Gemm(s) became MatMul + Add first (the bias stays float32)")
        if left:
            notes.append(f"onnxruntime left {len(left)} selected layer(s) float: {', '.join(left[:8])}")
        return StepResult(new, changed, notes=notes, expectation=self.expectation(loaded, config),
                          extra={"bits": config.bits, "block_size": config.block_size, "left_float": left,
                                 "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                                 "weight_bytes_after": new.graph.totals()["weight_bytes"]})

    # --- torch -----------------------------------------------------------------------------
    def _apply_torch(self, loaded, config: WeightOnlyConfig, selection, progress) -> StepResult:
        from effstudio.core.compress.materialize import loaded_from_torch_module

        module = copy.deepcopy(loaded.torch_module).eval()
        paths = {n: loaded.graph.layer(n).scope for n in selection}
        progress.update(0.1, f"quantizing {len(paths)} Linear module(s) to {config.bits}-bit blocks")
        for path in sorted(set(paths.values())):
            parent_path, _, attr = path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            setattr(parent, attr, weight_only_linear_cls().from_linear(getattr(parent, attr), config.bits,
                                                               config.block_size, config.symmetric))
        new = loaded_from_torch_module(module, loaded, progress=progress.sub(0.3, 1.0))
        dtype = "int8" if config.bits == 8 else "uint8"
        changed, renamed = [], {}
        for n, path in paths.items():
            hits = [lay for lay in new.graph.layers if any(w.name == f"{path}.weight_q" and w.dtype == dtype
                                                           for w in lay.weights)]
            if hits:
                changed.append(n)
                compute = [lay for lay in new.graph.layers if lay.scope == path and lay.op_type == "linear"]
                if compute and compute[0].name != n:
                    renamed[n] = compute[0].name
        if not changed:
            raise CompressError("none of the selected layers stores quantized weights after the step")
        notes = [f"{len(changed)} Linear layer(s) store {config.bits}-bit weights (blocks of {config.block_size}, "
                 "float32 scales) and dequantize them at every call: smaller, not faster on this kind of CPU",
                 "measured on a 2-core AVX2 CPU: dequantize-per-call 0.19–1.0× the float32 speed; torch's "
                 "_weight_int8pack_mm 0.03–0.13× and _weight_int4pack_mm_for_cpu 0.02–0.09× (so not used)"]
        if renamed:
            notes.append(f"{len(renamed)} layer(s) have new names (the dequantize ops run inside their module): "
                         "see extra['renamed']")
        return StepResult(new, changed, notes=notes, expectation=self.expectation(loaded, config),
                          extra={"bits": config.bits, "block_size": config.block_size, "renamed": renamed,
                                 "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                                 "weight_bytes_after": new.graph.totals()["weight_bytes"]})


@functools.cache
def weight_only_linear_cls():
    """The ``WeightOnlyLinear`` module class (built on first use: importing this module does not import torch)."""
    import torch
    from torch import nn

    class WeightOnlyLinear(nn.Module):
        """A Linear whose weight is stored as int8 (``bits=8``) or two 4-bit values per uint8
        (``bits=4``, low nibble first) with one float32 scale per ``block_size`` inputs
        (symmetric, or with a float zero offset per block), dequantized at every call."""

        def __init__(self, out_features: int, in_features: int, bits: int, block_size: int, symmetric: bool,
                     bias: bool) -> None:
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.bits, self.block_size, self.symmetric = bits, block_size, symmetric
            cols = in_features if bits == 8 else in_features // 2
            self.register_buffer("weight_q", torch.zeros(out_features, cols,
                                                         dtype=torch.int8 if bits == 8 else torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, in_features // block_size))
            self.register_buffer("zeros", None if symmetric else torch.zeros(out_features, in_features // block_size))
            self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

        @classmethod
        def from_linear(cls, lin: nn.Linear, bits: int, block_size: int, symmetric: bool) -> nn.Module:
            w = lin.weight.detach().float()
            out_f, in_f = w.shape
            m = cls(out_f, in_f, bits, block_size, symmetric, lin.bias is not None)
            blocks = w.reshape(out_f, in_f // block_size, block_size)
            qmax = 2 ** (bits - 1) - 1  # 127 / 7
            if symmetric:
                scale = (blocks.abs().amax(-1) / qmax).clamp(min=1e-12)
                q = torch.round(blocks / scale[..., None]).clamp(-qmax - 1, qmax)
                zero = None
            else:
                lo, hi = blocks.amin(-1), blocks.amax(-1)
                scale = ((hi - lo) / (2 * qmax + 1)).clamp(min=1e-12)
                zero = lo + (qmax + 1) * scale  # value of the code 0 after re-centering
                q = torch.round((blocks - zero[..., None]) / scale[..., None]).clamp(-qmax - 1, qmax)
            q = q.reshape(out_f, in_f).to(torch.int8)
            if bits == 4:
                u = (q + 8).to(torch.uint8)
                q = u[:, 0::2] | (u[:, 1::2] << 4)
            m.weight_q.copy_(q)
            m.scales.copy_(scale)
            if zero is not None:
                m.zeros.copy_(zero)
            if lin.bias is not None:
                m.bias.data.copy_(lin.bias.detach())
            return m

        def dequantized(self) -> torch.Tensor:
            if self.bits == 4:
                lo = (self.weight_q & 15).to(torch.int8) - 8
                hi = (self.weight_q >> 4).to(torch.int8) - 8
                q = torch.stack([lo, hi], dim=-1).reshape(self.out_features, self.in_features)
            else:
                q = self.weight_q
            w = q.reshape(self.out_features, -1, self.block_size).float() * self.scales[..., None]
            if self.zeros is not None:
                w = w + self.zeros[..., None]
            return w.reshape(self.out_features, self.in_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.dequantized().to(x.dtype), self.bias)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                    f"block_size={self.block_size}, symmetric={self.symmetric}")

    return WeightOnlyLinear

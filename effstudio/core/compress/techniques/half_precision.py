"""``quant.fp16``: selected layers in float16 (or bfloat16 on torch), float32 at their boundaries.

- ONNX: the selected nodes' float weights are stored as float16 and their float activations
  are cast to float16 on the way in and back to float32 on the way out (:func:`nodes_to_half`).
  We convert with our own small pass rather than ``onnxconverter_common`` /
  ``onnxruntime.transformers.float16.convert_float_to_float16``: that converter, given a block
  list, still turns every intermediate tensor into float16 and casts back and forth around the
  blocked nodes, so activations *between unselected layers* get rounded to float16 (and it adds
  no-op fp32->fp32 weight casts).  Here layers outside the selection see exactly what they saw.
  bfloat16 is refused for ONNX: onnxruntime's CPU provider has no bfloat16 kernels for
  MatMul/Gemm/Conv/Add/Relu/Softmax (measured with onnxruntime 1.32: the session does not load).
- torch: the selected leaf modules' parameters and buffers are converted with ``.to(dtype)``;
  forward hooks cast float inputs to it and float outputs back to float32.  The casts run inside
  the module, so its layer is named ``<module>.<op>`` in the new graph when it was ``<module>``
  (``StepResult.extra["renamed"]`` maps them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from effstudio.core.compress.base import CompressError, Expectation, StepResult, Technique, TechniqueConfig
from effstudio.core.compress.registry import register
from effstudio.core.compress.techniques import _onnx_quant_util as U
from effstudio.core.graph import Layer, LayerGraph
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

DTYPES = ("float16", "bfloat16")
# ONNX ops whose float inputs and (first) output share one type T, with float16 CPU kernels or
# casts inserted by onnxruntime; anything else keeps float32
HALF_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid",
    "Tanh", "Softmax", "LogSoftmax", "Gelu", "Erf", "Sqrt", "Neg", "Abs", "Max", "Min", "Clip", "MaxPool",
    "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "BatchNormalization",
    "LayerNormalization", "InstanceNormalization", "Flatten", "Reshape", "Transpose", "Concat", "Identity",
    "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "HardSigmoid", "HardSwish", "Elu", "Selu",
})
_FLOAT = 1  # onnx TensorProto.FLOAT


@dataclass
class HalfConfig(TechniqueConfig):
    """dtype: float16 | bfloat16 (bfloat16 on torch models only); keep_io_fp32: the model's inputs
    and outputs stay float32 (ONNX; torch modules always return float32 at their boundaries)."""

    technique = "quant.fp16"
    version = 1
    dtype: str = "float16"
    keep_io_fp32: bool = True

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise CompressError(f"{self.technique}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.keep_io_fp32, bool):
            raise CompressError(f"{self.technique}: keep_io_fp32 must be true or false")


def _leaf_module(layer: Layer, loaded: LoadedModel):
    if not layer.scope:
        return None
    try:
        mod = loaded.torch_module.get_submodule(layer.scope)
    except AttributeError:
        return None
    return mod if not list(mod.children()) else None


@register
class Half(Technique):
    name = "quant.fp16"
    title = "Half precision (float16 / bfloat16)"
    config_cls = HalfConfig

    def applies_to(self, layer: Layer, loaded: LoadedModel, config: TechniqueConfig) -> str | None:
        assert isinstance(config, HalfConfig)
        if loaded.backend == "onnx":
            if config.dtype == "bfloat16":
                return "onnxruntime's CPU provider has no bfloat16 kernels for MatMul/Conv/Add (use float16)"
            if layer.op_type not in HALF_OPS or layer.domain not in ("", "ai.onnx"):
                return f"{layer.op_type} is not converted to half precision (not an op with same-type float inputs)"
            return None
        mod = _leaf_module(layer, loaded)
        if mod is None:
            return "not computed by a leaf module (only whole leaf modules are converted)"
        if not any(p.is_floating_point() for p in list(mod.parameters()) + list(mod.buffers())):
            return f"its module ({type(mod).__name__}) has no float weights"
        return None

    def expectation(self, loaded: LoadedModel, config: TechniqueConfig) -> Expectation:
        assert isinstance(config, HalfConfig)
        if loaded.backend == "onnx":
            return Expectation("smaller-only", "float16 weights are 2× smaller on disk; onnxruntime's CPU provider "
                               "runs float16 models in float32 (it casts the weights back to float32 when it "
                               "loads the model), so expect no speedup, only cast overhead")
        return Expectation("smaller-only", f"{config.dtype} weights are 2× smaller; torch's CPU kernels for "
                           f"{config.dtype} are not faster than float32 on CPUs without native half-precision "
                           "arithmetic (AVX512-FP16 / AMX), and the boundary casts cost time")

    def apply(self, loaded: LoadedModel, config: TechniqueConfig, selection: list[str],
              progress: Progress) -> StepResult:
        assert isinstance(config, HalfConfig)
        self.check_selection(loaded, config, selection)
        if loaded.backend == "onnx":
            return self._apply_onnx(loaded, config, selection, progress)
        return self._apply_torch(loaded, config, selection, progress)

    # --- ONNX ------------------------------------------------------------------------------
    def _apply_onnx(self, loaded, config: HalfConfig, selection, progress) -> StepResult:
        from effstudio.core.compress.materialize import loaded_from_onnx_proto

        progress.update(0.1, f"converting {len(selection)} layer(s) to float16")
        proto = U.prepare_proto(loaded)
        casts = nodes_to_half(proto, set(selection), keep_io_fp32=config.keep_io_fp32)
        if config.keep_io_fp32:
            new = loaded_from_onnx_proto(proto, loaded, name="fp16", progress=progress.sub(0.5, 1.0))
        else:
            new = _load_with_half_io(proto, loaded, progress.sub(0.5, 1.0))
        changed = _verify_half_onnx(loaded, new, selection)
        notes = [f"{len(changed)} layer(s) store float16 weights and compute in float16; {casts} Cast node(s) "
                 "convert at the boundaries to the float32 layers",
                 "onnxruntime's CPU provider runs float16 models in float32 (it casts back when it loads them): "
                 "smaller file, no speedup"]
        if not config.keep_io_fp32:
            notes.append("model inputs/outputs read or written only by converted layers are now float16")
        return StepResult(new, changed, notes=notes, expectation=self.expectation(loaded, config),
                          extra={"dtype": "float16", "casts": casts,
                                 "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                                 "weight_bytes_after": new.graph.totals()["weight_bytes"]})

    # --- torch -----------------------------------------------------------------------------
    def _apply_torch(self, loaded, config: HalfConfig, selection, progress) -> StepResult:
        import numpy as np
        import torch

        from effstudio.core.compress.materialize import loaded_from_torch_module

        dtype = getattr(torch, config.dtype)
        module = copy.deepcopy(loaded.torch_module).eval()
        paths = sorted({loaded.graph.layer(n).scope for n in selection})
        progress.update(0.1, f"converting {len(paths)} module(s) to {config.dtype}")
        for path in paths:
            sub = module.get_submodule(path)
            sub.to(dtype)
            sub.register_forward_pre_hook(_cast_inputs(dtype), with_kwargs=True)
            sub.register_forward_hook(_cast_outputs())
        example = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in loaded.example_inputs.items()}
        progress.update(0.3, "checking the converted model runs")
        try:
            with torch.no_grad():
                module(**example)
        except (RuntimeError, NotImplementedError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CompressError(f"the {config.dtype} model does not run on this torch/CPU: {first}") from e
        new = loaded_from_torch_module(module, loaded, progress=progress.sub(0.4, 1.0))
        changed, renamed = _verify_half_torch(loaded.graph, new.graph, selection, config.dtype)
        notes = [f"{len(changed)} layer(s) in {len(paths)} module(s) store {config.dtype} weights; hooks cast "
                 "their float inputs in and their outputs back to float32"]
        if renamed:
            notes.append(f"{len(renamed)} layer(s) have new names in this version (the casts run inside their "
                         "module): see extra['renamed']")
        if not config.keep_io_fp32:
            notes.append("keep_io_fp32=false has no effect on torch models: converted modules return float32")
        return StepResult(new, changed, notes=notes, expectation=self.expectation(loaded, config),
                          extra={"dtype": config.dtype, "renamed": renamed,
                                 "weight_bytes_before": loaded.graph.totals()["weight_bytes"],
                                 "weight_bytes_after": new.graph.totals()["weight_bytes"]})


def _load_with_half_io(proto, parent: LoadedModel, progress: Progress) -> LoadedModel:
    """Like ``materialize.loaded_from_onnx_proto``, for a model whose inputs may now be float16:
    the parent's input shapes without their dtypes, and its example data cast to the new dtypes."""
    import numpy as np
    import onnx

    from effstudio.core.compress.materialize import parent_input_specs, work_dir
    from effstudio.core.inputs import InputSpec
    from effstudio.core.loaders.onnx_loader import load_onnx

    path = work_dir() / "fp16.onnx"
    onnx.save_model(proto, str(path))
    specs = {k: InputSpec(k, v.shape, None) for k, v in parent_input_specs(parent).items()}
    new = load_onnx(path, inputs=specs, progress=progress)
    types = {t.name: t.dtype for t in new.graph.inputs}
    if parent.example_inputs and set(parent.example_inputs) == set(types):
        new.example_inputs = {k: np.asarray(v).astype(types[k]) if types[k] == "float16" else v
                              for k, v in parent.example_inputs.items()}
    return new


def _cast_inputs(dtype):
    """Forward pre-hook (``with_kwargs=True``): float tensor arguments to ``dtype``."""
    import torch

    def conv(v):
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    def hook(_mod, args, kwargs):
        return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}

    return hook


def _cast_outputs():
    import torch

    def back(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32:
            return v.to(torch.float32)
        if isinstance(v, tuple):
            return tuple(back(x) for x in v)
        if isinstance(v, list):
            return [back(x) for x in v]
        return v

    def hook(_mod, _args, out):
        return back(out)

    return hook


def _verify_half_torch(parent: LayerGraph, new: LayerGraph, selection: list[str], dtype: str
                       ) -> tuple[list[str], dict[str, str]]:
    """Selected layers whose weights are now ``dtype`` (matched by weight name), and parent ->
    new names where they differ."""
    by_weight = {w.name: lay for lay in new.layers for w in lay.weights}
    changed, renamed = [], {}
    for n in selection:
        lay = parent.layer(n)
        hits = [by_weight[w.name] for w in lay.weights if w.name in by_weight]
        if lay.weights and hits and all(w.dtype == dtype for h in hits for w in h.weights
                                        if w.dtype in ("float32", "float16", "bfloat16")):
            changed.append(n)
            if hits[0].name != n:
                renamed[n] = hits[0].name
    if not changed:
        raise CompressError(f"none of the {len(selection)} selected layer(s) stores {dtype} weights after the step")
    return changed, renamed


def _verify_half_onnx(parent: LoadedModel, new: LoadedModel, selection: list[str]) -> list[str]:
    changed = []
    for n in selection:
        lay = new.graph.layer(n)
        floats = [w for w in lay.weights if w.dtype in ("float32", "float16")]
        outs = [new.graph.tensors[t].dtype for t in lay.outputs if t in new.graph.tensors]
        if all(w.dtype == "float16" for w in floats) and (floats or "float16" in outs):
            changed.append(n)
    stray = [lay.name for lay in new.graph.layers if lay.name in parent.graph and lay.name not in set(selection)
             and any(w.dtype == "float16" for w in lay.weights)
             and not any(w.dtype == "float16" for w in parent.graph.layer(lay.name).weights)]
    if stray:
        raise CompressError(f"float16 weights appeared in {len(stray)} unselected layer(s): {', '.join(stray[:8])}")
    if not changed:
        raise CompressError("none of the selected layers was converted to float16")
    return changed


def nodes_to_half(proto, selected: set[str], *, keep_io_fp32: bool = True) -> int:
    """Convert the named nodes of ``proto`` (in place) to float16; returns the Casts added.

    Float32 initializers read only by converted nodes become float16 in place (same name);
    ones also read by other nodes get a float16 copy (``<name>_fp16``).  A float32 activation
    entering a converted node is cast once (``<name>_fp16``); a converted node's float output
    is written as ``<name>_fp16`` and cast back under its own name for float32 readers and graph
    outputs, so unconverted nodes and the model's interface do not change (unless
    ``keep_io_fp32`` is false: then inputs/outputs touched only by converted nodes become float16).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    elem: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            elem[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for name, t in inits.items():
        elem[name] = t.data_type
    uses = U.consumers(g)
    graph_in = {vi.name: vi for vi in g.input}
    graph_out = {vi.name: vi for vi in g.output}

    def is_float(t: str) -> bool:
        if t not in elem:
            raise CompressError(f"float16 conversion: the type of tensor {t!r} is unknown (shape inference failed)")
        return elem[t] == _FLOAT

    half: dict[str, str] = {}  # float32 tensor -> its float16 version
    casts = 0
    new_nodes = []
    for node in g.node:
        if node.name not in selected:
            new_nodes.append(node)
            continue
        if node.op_type not in HALF_OPS:
            raise CompressError(f"{node.name}: {node.op_type} is not converted to float16")
        for i, t in enumerate(node.input):
            if not t or not is_float(t):
                continue
            if t not in half:
                if t in inits:
                    if all(c.name in selected for c in uses.get(t, [])) and t not in graph_out:
                        arr = numpy_helper.to_array(inits[t]).astype("float16")
                        inits[t].CopyFrom(numpy_helper.from_array(arr, t))
                        half[t] = t
                    else:
                        arr = numpy_helper.to_array(inits[t]).astype("float16")
                        g.initializer.append(numpy_helper.from_array(arr, f"{t}_fp16"))
                        half[t] = f"{t}_fp16"
                elif (t in graph_in and not keep_io_fp32 and all(c.name in selected for c in uses.get(t, []))):
                    graph_in[t].type.tensor_type.elem_type = TensorProto.FLOAT16
                    half[t] = t
                else:
                    new_nodes.append(helper.make_node("Cast", [t], [f"{t}_fp16"], name=f"{t}_cast_fp16",
                                                      to=TensorProto.FLOAT16))
                    casts += 1
                    half[t] = f"{t}_fp16"
            node.input[i] = half[t]
        back = []
        for i, o in enumerate(node.output):
            if not o or not is_float(o):
                continue
            if node.op_type == "LayerNormalization" and i > 0:
                continue  # mean / inverse std dev are of stash_type (float32)
            readers = [c for c in uses.get(o, []) if c.name not in selected]
            if o in graph_out and not keep_io_fp32 and not readers:
                graph_out[o].type.tensor_type.elem_type = TensorProto.FLOAT16
                half[o] = o
                continue
            node.output[i] = f"{o}_fp16"
            half[o] = f"{o}_fp16"
            if readers or o in graph_out:
                back.append(helper.make_node("Cast", [f"{o}_fp16"], [o], name=f"{o}_cast_fp32", to=TensorProto.FLOAT))
                casts += 1
        new_nodes.append(node)
        new_nodes.extend(back)
    del g.node[:]
    g.node.extend(new_nodes)
    # value_info entries of renamed or retyped tensors are stale: drop them (the loader re-infers)
    del g.value_info[:]
    return casts

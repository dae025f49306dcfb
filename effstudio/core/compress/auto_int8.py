"""Choose, per layer, which layers of an ONNX model get dynamic int8 and which stay float.

    policy = choose_int8_policy(loaded, eval_inputs, target_cosine=0.99, progress=p)
    policy.steps        # ordinary recipe steps (quant.int8_dynamic on policy.quantized)
    policy.model        # the result of applying them

Quality is the cosine between each input's float32 and quantized first output (flattened per
sample), judged by the worst input.  Every candidate layer is quantized first; when the worst
cosine is below the target, each layer is put back to float alone (leave-one-out: its gain in
worst cosine), and layers are then kept float in the order of gain per weight element (what a
float layer costs in bytes and, for a matrix product, in time), each re-measured with the ones
before it and kept float only if that helps.  The search stops at the target or when
``max_float_fraction`` of the candidates' weight elements would be float; the policy says which.
Nothing here is timed: the caller re-measures.

Embedding tables (Gather) are candidates only when they hold at least ``min_table_fraction`` of
the model's weight bytes: a quantized table costs a DequantizeLinear of the looked-up rows at
every call (~11 µs on MiniLM-L6, one thread of a 2-core AVX2 CPU), which a small table does not
repay in bytes (MiniLM's position and token-type tables: 0.9 % of its weights).  ``config``: the
``quant.int8_dynamic`` settings of every candidate step (default: per-channel, nothing chosen
from data); with ``smooth`` / ``auto`` settings the choices are made from its calibration inputs,
not from ``eval_inputs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from effstudio.core.compress.base import CompressError, TechniqueConfig
from effstudio.core.compress.recipe import Step
from effstudio.core.compress.registry import get_technique
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

TECHNIQUE = "quant.int8_dynamic"


@dataclass
class Int8Policy:
    """What :func:`choose_int8_policy` chose, and what it measured on the way."""

    quantized: list[str]  # layers given quant.int8_dynamic
    kept_float: list[str]  # candidates left float, in the order they were returned to float
    worst_cosine: float  # of the chosen model over the eval inputs
    mean_cosine: float
    reached: bool  # worst_cosine >= target
    all_quantized_worst: float  # every candidate quantized
    gains: dict[str, float] = field(default_factory=dict)  # last leave-one-out gain of each tried layer
    steps: list[Step] = field(default_factory=list)
    model: LoadedModel | None = None
    notes: list[str] = field(default_factory=list)


def _session(proto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _outputs(proto, eval_inputs: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    sess = _session(proto)
    return [np.asarray(sess.run(None, f)[0], dtype=np.float64).reshape(len(next(iter(f.values()))), -1)
            for f in eval_inputs]


def _cosines(ref: list[np.ndarray], out: list[np.ndarray]) -> np.ndarray:
    c = []
    for r, o in zip(ref, out, strict=True):
        nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
        cos = (r * o).sum(1) / np.maximum(nr * no, 1e-300)
        c.append(np.where((nr == 0) & (no == 0), 1.0, np.where((nr == 0) | (no == 0), 0.0, cos)))
    return np.concatenate(c)


def _discard(model: LoadedModel) -> None:
    """Delete the work folder of an intermediate model (the search makes dozens)."""
    import shutil
    from pathlib import Path

    from effstudio.core.paths import cache_dir

    folder = Path(model.onnx_path or "").parent
    if model.onnx_path and folder.parent == cache_dir("work"):
        shutil.rmtree(folder, ignore_errors=True)


def candidates(loaded: LoadedModel, config: TechniqueConfig, min_table_fraction: float = 0.05) -> list[str]:
    """The layers the policy may quantize: every MatMul/Gemm the technique applies to, and the
    embedding tables that hold at least ``min_table_fraction`` of the weight bytes."""
    tech = get_technique(TECHNIQUE)
    graph = loaded.graph
    total = max(1, graph.totals()["weight_bytes"])
    out = []
    for lay in graph.layers:
        if tech.applies_to(lay, loaded, config) is not None:
            continue
        if lay.op_type == "Gather" and sum(w.nbytes for w in lay.weights) < min_table_fraction * total:
            continue
        out.append(lay.name)
    return out


def choose_int8_policy(loaded: LoadedModel, eval_inputs: list[dict[str, np.ndarray]], target_cosine: float = 0.99,
                       progress: Progress | None = None, *, max_float_fraction: float = 0.25,
                       per_channel: bool = True, config: TechniqueConfig | None = None,
                       min_table_fraction: float = 0.05) -> Int8Policy:
    """Pick the layers to quantize with ``quant.int8_dynamic`` (see the module docstring)."""
    progress = progress or Progress()
    if loaded.backend != "onnx":
        raise CompressError("choose_int8_policy works on ONNX models (it runs them with onnxruntime)")
    if not eval_inputs:
        raise CompressError("choose_int8_policy needs at least one input to judge the quantized model on")
    tech = get_technique(TECHNIQUE)
    cfg = config if config is not None else tech.config_cls(per_channel=per_channel)
    cfg.validate()
    graph = loaded.graph
    cands = candidates(loaded, cfg, min_table_fraction)
    if not cands:
        raise CompressError(f"{TECHNIQUE} applies to no layer of this model")
    cost = {n: max(1, sum(w.numel for w in graph.layer(n).weights)) for n in cands}
    budget = max_float_fraction * sum(cost.values())
    ref = _outputs(loaded.onnx_model, eval_inputs)
    made: list[LoadedModel] = []

    def measure(float_set: set[str]) -> tuple[LoadedModel, np.ndarray]:
        sel = [n for n in cands if n not in float_set]
        model = tech.apply(loaded, cfg, sel, Progress()).model
        made.append(model)
        return model, _cosines(ref, _outputs(model.onnx_model, eval_inputs))

    progress.update(0.02, f"quantizing all {len(cands)} candidate layer(s)")
    best, cos = measure(set())
    all_worst = float(cos.min())
    kept: list[str] = []
    gains: dict[str, float] = {}
    if cos.min() < target_cosine:
        worst = float(cos.min())
        for i, n in enumerate(cands):
            progress.update(0.05 + 0.6 * i / len(cands), f"sensitivity: {n} back to float ({i + 1}/{len(cands)})")
            model, c = measure({n})
            gains[n] = float(c.min()) - worst
            _discard(model)
        order = sorted((n for n in cands if gains[n] > 0), key=lambda n: -gains[n] / cost[n])
        spent = 0
        for i, n in enumerate(order):
            if cos.min() >= target_cosine:
                break
            if spent + cost[n] > budget:
                continue
            progress.update(0.65 + 0.3 * i / len(order), f"trying {n} float with the {len(kept)} kept so far")
            model, c = measure({*kept, n})
            if c.min() <= cos.min():  # no better with the others already float: leave it quantized
                _discard(model)
                continue
            _discard(best)
            kept.append(n)
            spent += cost[n]
            best, cos = model, c
    for m in made:
        if m is not best:
            _discard(m)
    quantized = [n for n in cands if n not in kept]
    reached = bool(cos.min() >= target_cosine)
    notes = [f"{len(quantized)} of {len(cands)} candidate layer(s) quantized, {len(kept)} kept float; worst cosine "
             f"{cos.min():.4f} (all quantized: {all_worst:.4f}, target {target_cosine})"]
    if not reached:
        notes.append(f"target not reached within {max_float_fraction:.0%} of the weights kept float")
    progress.update(1.0, notes[0])
    return Int8Policy(quantized, kept, float(cos.min()), float(cos.mean()), reached, all_worst, gains,
                      [Step.of(cfg, quantized, layers=quantized)], best, notes)

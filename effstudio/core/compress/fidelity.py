"""Fidelity: how close a compressed model's outputs stay to the original's on the same inputs.

Both models run on the same samples with their own backend (:func:`.evaluate.run_outputs`):
the digits test split for the trained demos, the user's data when given, otherwise the
original's example inputs plus a few more seeded random draws of the same shape and range.
Per output (the first float output is also reported at the top level):

- ``cosine``: cosine similarity of the two outputs as flat vectors (float64);
  ``cosine_min``: the lowest per-sample cosine (the worst sample);
- ``rel_l2``: ``||candidate - original|| / ||original||``;
- ``max_abs``: the largest absolute difference;
- ``top1_agreement``: for class scores ([N, C]), the fraction of samples whose arg-max agrees.

Non-float outputs report ``exact``, the fraction of equal elements.  A value that cannot be
computed (non-finite outputs) is None, never a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from effstudio.core.compress.evaluate import EvalData, eval_data_for, looks_like_logits, run_outputs
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

RANDOM_DRAWS = 4  # samples when only the example inputs are known (the example + 3 seeded draws)


@dataclass
class FidelityInputs:
    data: EvalData
    batch: int | None = None  # run exactly this many samples per call (draws of the example shape)


def _draw(example: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if example.dtype == np.bool_ or example.size == 0:
        return example.copy()
    if np.issubdtype(example.dtype, np.integer):
        lo, hi = int(example.min()), int(example.max())
        return rng.integers(lo, hi + 1, size=example.shape).astype(example.dtype)
    if np.issubdtype(example.dtype, np.floating):
        std = float(example.std()) or 1.0
        return (rng.standard_normal(example.shape) * std + float(example.mean())).astype(example.dtype)
    return example.copy()


def fidelity_inputs(loaded: LoadedModel, data: EvalData | None = None, *, draws: int = RANDOM_DRAWS,
                    seed: int = 0) -> FidelityInputs:
    """The samples fidelity is measured on (see the module docstring)."""
    data = data or eval_data_for(loaded)
    if data is not None:
        return FidelityInputs(data)
    ex = loaded.example_inputs
    if not ex:
        from effstudio.core.errors import EffstudioError

        raise EffstudioError(f"{loaded.path}: no example inputs to compare outputs on (give the input "
                             "shapes with --input NAME=DIMS)")
    if any(np.asarray(v).ndim == 0 for v in ex.values()):
        return FidelityInputs(EvalData(dict(ex), None, "the example inputs"), batch=None)
    rng = np.random.default_rng(seed)
    arrays = {k: [np.asarray(v)] for k, v in ex.items()}
    for _ in range(draws - 1):
        for k, v in ex.items():
            arrays[k].append(_draw(np.asarray(v), rng))
    batch = int(np.asarray(next(iter(ex.values()))).shape[0])
    stacked = {k: np.concatenate(v, axis=0) for k, v in arrays.items()}
    return FidelityInputs(EvalData(stacked, None, f"the example inputs and {draws - 1} random draws like them"),
                          batch=batch)


def _f(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _compare(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    if ref.shape != cand.shape:
        return {"error": f"output shape changed from {list(ref.shape)} to {list(cand.shape)}"}
    if not (np.issubdtype(ref.dtype, np.floating) and np.issubdtype(cand.dtype, np.floating)):
        same = np.count_nonzero(ref == cand)
        return {"exact": same / max(ref.size, 1)}
    r = ref.astype(np.float64).ravel()
    c = cand.astype(np.float64).ravel()
    out: dict[str, Any] = {}
    nonfinite = int(np.count_nonzero(~np.isfinite(c)))
    if nonfinite:
        out["nonfinite"] = nonfinite
    with np.errstate(all="ignore"):
        rr, cc = float(r @ r), float(c @ c)
        nr, nc = math.sqrt(rr), math.sqrt(cc) if math.isfinite(cc) else math.inf
        diff = c - r
        if nr > 0 and nc > 0:
            # sqrt(rr * cc) keeps identical outputs at exactly 1
            cos = float(r @ c) / math.sqrt(rr * cc)
            out["cosine"] = min(1.0, max(-1.0, cos)) if math.isfinite(cos) else None
        elif nr == 0 and nc == 0:
            out["cosine"] = 1.0
        else:
            out["cosine"] = 0.0 if math.isfinite(nc) else None  # one side all zeros: no direction shared
        out["rel_l2"] = _f(float(np.linalg.norm(diff)) / nr) if nr > 0 else (0.0 if nc == 0 else None)
        out["max_abs"] = _f(float(np.max(np.abs(diff)))) if diff.size else 0.0
        if ref.ndim >= 2 and ref.shape[0] > 1:
            rs = ref.reshape(ref.shape[0], -1).astype(np.float64)
            cs = cand.reshape(cand.shape[0], -1).astype(np.float64)
            den = np.linalg.norm(rs, axis=1) * np.linalg.norm(cs, axis=1)
            per = np.where(den > 0, np.sum(rs * cs, axis=1) / np.where(den > 0, den, 1), np.nan)
            out["cosine_min"] = _f(float(np.nanmin(per))) if np.any(np.isfinite(per)) else None
    if looks_like_logits(ref):
        agree = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
        out["top1_agreement"] = float(np.count_nonzero(agree)) / ref.shape[0]
    return out


def compare_outputs(ref: list[np.ndarray], cand: list[np.ndarray], names: list[str] | None = None,
                    *, source: str = "") -> dict[str, Any]:
    """Fidelity numbers of ``cand`` against ``ref`` (lists of outputs, sample axis first)."""
    names = names or [f"output {i}" for i in range(len(ref))]
    per = []
    for i, (r, c) in enumerate(zip(ref, cand, strict=False)):
        per.append({"name": names[i] if i < len(names) else f"output {i}", **_compare(r, c)})
    result: dict[str, Any] = {}
    first = next((p for p in per if "cosine" in p), per[0] if per else {})
    for key in ("cosine", "cosine_min", "rel_l2", "max_abs", "top1_agreement", "exact", "nonfinite", "error"):
        if key in first:
            result[key] = first[key]
    if len(ref) != len(cand):
        result["error"] = f"the model has {len(cand)} outputs; the original has {len(ref)}"
    result["n_samples"] = int(ref[0].shape[0]) if ref and ref[0].ndim else 1
    result["inputs"] = source
    result["outputs"] = per
    return result


def model_outputs(loaded: LoadedModel, inputs: FidelityInputs, progress: Progress | None = None) -> list[np.ndarray]:
    kw = {"batch": inputs.batch} if inputs.batch else {}
    return run_outputs(loaded, inputs.data.inputs, progress=progress, **kw)


def output_names(loaded: LoadedModel) -> list[str]:
    return [t.name for t in loaded.graph.outputs]


def fidelity(original: LoadedModel, candidate: LoadedModel, inputs: Mapping[str, np.ndarray] | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Compare ``candidate``'s outputs with ``original``'s on ``inputs`` (arrays, sample axis first)
    or, without them, on :func:`fidelity_inputs` of the original."""
    progress = progress or Progress()
    if inputs is not None:
        fin = FidelityInputs(EvalData(dict(inputs), None, "the given inputs"))
    else:
        fin = fidelity_inputs(original)
    ref = model_outputs(original, fin, progress.sub(0.0, 0.5))
    cand = model_outputs(candidate, fin, progress.sub(0.5, 1.0))
    return compare_outputs(ref, cand, output_names(original), source=fin.data.source)

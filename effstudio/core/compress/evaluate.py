"""Running a model on many samples, and its accuracy on labelled data.

``run_outputs(loaded, inputs)`` runs a model on N samples (arrays whose first axis is the
sample axis) with its own backend — an onnxruntime session for ONNX, the module under
``torch.no_grad`` for torch — in batches, and returns every output concatenated over the
samples.  A model whose inputs have a fixed batch size (an exported ONNX or ``.pt2``) is fed
batches of exactly that size (the last one padded with repeats, whose outputs are dropped).

``eval_data_for(loaded)`` finds the labelled data of a model: the digits test split for the
trained demo models (``demo:cnn``, ``demo:cnn.onnx`` ...), or a user ``.npz`` with ``x`` and
``y`` (or one array per model input plus ``y``).  ``accuracy(loaded, data)`` is the top-1
accuracy of the first output on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

BATCH = 64
_DEMO_EXPORT = re.compile(r"^(?P<name>[A-Za-z0-9_]+)-[0-9a-f]{16}\.(?P<ext>onnx|pt2)$")


@dataclass
class EvalData:
    """Labelled (or unlabelled) samples: input name -> array with the sample axis first."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str  # e.g. "digits test split (270 images)"

    @property
    def n(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0


# --- which demo is this ---------------------------------------------------------------------
def demo_name(loaded: LoadedModel) -> str | None:
    """The demo a model is (``"cnn"``), or None: ``demo:NAME`` models, and the exported copies
    (``demo:NAME.onnx`` / ``.pt2``) that live in the cache as ``NAME-<key>.<ext>``."""
    from effstudio.core.zoo import DEMOS

    info = loaded.graph.model
    if info is not None and info.extra.get("demo") in DEMOS:
        return str(info.extra["demo"])
    path = loaded.path or ""
    if path.startswith("demo:"):
        base = path[5:].split(".")[0]
        return base if base in DEMOS else None
    from effstudio.core.paths import cache_dir

    p = Path(path)
    m = _DEMO_EXPORT.match(p.name)
    if m and m.group("name") in DEMOS:
        try:
            if p.resolve().parent == cache_dir("demo-exports", create=False).resolve():
                return m.group("name")
        except OSError:
            return None
    return None


def eval_data_for(loaded: LoadedModel, npz: str | Path | None = None, *, demo: str | None = None
                  ) -> EvalData | None:
    """The labelled data to judge ``loaded`` on: ``npz`` when given, else the digits test split for
    a trained demo (``demo`` names it when ``loaded`` no longer shows it), else None."""
    if npz is not None:
        return load_npz_data(npz, loaded)
    from effstudio.core.zoo import DEMOS, digits

    name = demo or demo_name(loaded)
    spec = DEMOS.get(name) if name else None
    if spec is None or not spec.trained or len(loaded.graph.inputs) != 1:
        return None
    x, y = digits("test", size=spec.input_shape[-1])
    inp = loaded.graph.inputs[0]
    return EvalData({inp.name: np.ascontiguousarray(x)}, np.asarray(y), f"digits test split ({len(y)} images)")


def load_npz_data(path: str | Path, loaded: LoadedModel) -> EvalData:
    """A user's ``.npz``: ``x`` (a one-input model) or one array per model input, and optionally
    ``y`` (integer class labels, one per sample).  Errors name the file and what is wrong."""
    import zipfile

    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise EffstudioError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EffstudioError(f"{path}: not a readable .npz file ({e})") from None
    names = [t.name for t in loaded.graph.inputs]
    if "x" in arrays and len(names) == 1 and names[0] not in arrays:
        inputs = {names[0]: arrays["x"]}
    else:
        missing = [n for n in names if n not in arrays]
        if missing:
            want = "'x'" if len(names) == 1 else ", ".join(repr(n) for n in names)
            raise EffstudioError(f"{path}: no input data: expected an array {want} (and 'y' for labels)")
        inputs = {n: arrays[n] for n in names}
    problems = []
    by_name = {t.name: t for t in loaded.graph.inputs}
    n = None
    for name, a in inputs.items():
        t = by_name[name]
        if a.ndim == 0:
            problems.append(f"{name!r} is a scalar; the first axis must be the samples")
            continue
        n = a.shape[0] if n is None else n
        if a.shape[0] != n:
            problems.append(f"{name!r} has {a.shape[0]} samples, another input {n}")
        if t.shape is not None and (len(t.shape) != a.ndim or any(
                isinstance(d, int) and d != s for d, s in zip(t.shape[1:], a.shape[1:], strict=True))):
            problems.append(f"{name!r} has shape {list(a.shape)}; the model wants {list(t.shape)} "
                            "(the first axis is the samples)")
        if t.dtype is not None and str(a.dtype) != t.dtype:
            if np.issubdtype(a.dtype, np.number) and np.can_cast(a.dtype, t.dtype, "same_kind"):
                inputs[name] = a.astype(t.dtype)
            else:
                problems.append(f"{name!r} has dtype {a.dtype}; the model wants {t.dtype}")
    labels = arrays.get("y")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            problems.append(f"'y' must be a 1-D array of integer class labels, got {labels.dtype} {list(labels.shape)}")
        elif n is not None and labels.shape[0] != n:
            problems.append(f"'y' has {labels.shape[0]} labels for {n} samples")
    if problems:
        raise EffstudioError(f"{path}: " + "; ".join(problems))
    what = f"{Path(path).name} ({n} samples{', labelled' if labels is not None else ''})"
    return EvalData(inputs, labels, what)


# --- running ----------------------------------------------------------------------------------
def _fixed_batch(loaded: LoadedModel) -> int | None:
    """The batch size the model's inputs are fixed to, or None when the first dim is free."""
    dims = {t.shape[0] for t in loaded.graph.inputs if t.shape}
    if len(dims) != 1:
        return None
    d = next(iter(dims))
    return d if isinstance(d, int) else None


class _OnnxRunner:
    def __init__(self, loaded: LoadedModel) -> None:
        import tempfile

        import onnxruntime as ort

        from effstudio.core.latency.ort_source import ort_source

        # onnxruntime reads the model's own file when it is unchanged, else a copy written tensor by
        # tensor: serializing a big proto in memory holds the GIL for seconds (freezes the GUI)
        self._tmp = tempfile.TemporaryDirectory(prefix="effstudio-eval-")
        source = ort_source(loaded, self._tmp.name)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        fixed = {i.name: i.shape[0] for i in self.session.get_inputs() if i.shape}
        vals = set(fixed.values())
        self.fixed = next(iter(vals)) if len(vals) == 1 and isinstance(next(iter(vals)), int) else None

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, feeds)]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class _TorchRunner:
    def __init__(self, loaded: LoadedModel) -> None:
        import torch

        self.module = loaded.torch_module
        # ExportedProgram.module() checks its inputs against the exported (fixed) shapes
        self.fixed = _fixed_batch(loaded) if isinstance(self.module, torch.fx.GraphModule) else None
        self.output_names: list[str] = [t.name for t in loaded.graph.outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        kwargs = {k: torch.from_numpy(np.array(v, copy=not v.flags.writeable, order="C")) for k, v in feeds.items()}
        with torch.no_grad():
            out = self.module(**kwargs)
        leaves = torch.utils._pytree.tree_leaves(out)
        if not leaves and hasattr(out, "to_tuple"):  # transformers ModelOutput
            leaves = [v for v in out.to_tuple() if isinstance(v, torch.Tensor)]
        res = []
        for t in leaves:
            if isinstance(t, torch.Tensor):
                t = t.detach().cpu()
                if t.is_quantized:
                    t = t.dequantize()
                if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
                    t = t.float()
                res.append(t.numpy())
        return res

    def close(self) -> None:
        pass


def _runner(loaded: LoadedModel):
    if loaded.onnx_model is not None:
        return _OnnxRunner(loaded)
    if loaded.torch_module is not None:
        return _TorchRunner(loaded)
    raise EffstudioError(f"{loaded.path}: nothing runnable was loaded (neither ONNX nor torch)")


def _concat(parts: list[list[np.ndarray]], keep: list[int]) -> list[np.ndarray]:
    outs = []
    for j in range(len(parts[0])):
        pieces = []
        for part, k in zip(parts, keep, strict=True):
            a = part[j]
            pieces.append(a[:k] if a.ndim else a[None])
        outs.append(np.concatenate(pieces, axis=0))
    return outs


def run_outputs(loaded: LoadedModel, inputs: Mapping[str, np.ndarray], *, batch: int = BATCH,
                progress: Progress | None = None) -> list[np.ndarray]:
    """Every output of ``loaded`` on the samples ``inputs`` (sample axis first), concatenated."""
    progress = progress or Progress()
    if not inputs:
        raise EffstudioError(f"{loaded.path}: no input data to run the model on")
    n = int(next(iter(inputs.values())).shape[0])
    runner = _runner(loaded)
    try:
        size = runner.fixed or batch
        try:
            return _run(runner, inputs, n, size, progress)
        except EffstudioError:
            raise
        except Exception as e:
            fixed = _fixed_batch(loaded)
            if runner.fixed is not None or fixed is None or fixed == size:
                raise EffstudioError(f"{loaded.path}: running the model failed: {type(e).__name__}: "
                                     f"{(str(e).strip().splitlines() or [''])[0]}") from e
            runner.fixed = fixed  # a module that only runs at its traced batch size
            return _run(runner, inputs, n, fixed, progress)
    finally:
        runner.close()


def _run(runner, inputs: Mapping[str, np.ndarray], n: int, size: int, progress: Progress) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = []
    keep: list[int] = []
    for start in range(0, n, size):
        progress.update(start / max(n, 1), f"running {n} samples")
        stop = min(n, start + size)
        feeds = {}
        for k, v in inputs.items():
            chunk = v[start:stop]
            if runner.fixed is not None and stop - start < size:  # pad to the fixed batch size
                reps = np.concatenate([chunk] + [chunk[-1:]] * (size - (stop - start)), axis=0)
                chunk = reps
            feeds[k] = np.ascontiguousarray(chunk)
        parts.append(runner(feeds))
        keep.append(stop - start)
    progress.update(1.0, f"ran {n} samples")
    return _concat(parts, keep)


# --- accuracy ---------------------------------------------------------------------------------
def looks_like_logits(a: np.ndarray, n: int | None = None) -> bool:
    """A 2-D float [N, C] array with C > 1 (and N samples when ``n`` is given)."""
    return a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating) and (n is None or a.shape[0] == n)


def accuracy_from_outputs(outputs: list[np.ndarray], data: EvalData) -> dict[str, Any] | None:
    """Top-1 accuracy of the first output against ``data.labels``; None without labels or logits."""
    if data.labels is None or not outputs:
        return None
    logits = outputs[0]
    if not looks_like_logits(logits, len(data.labels)):
        return None
    pred = np.argmax(logits, axis=1)
    correct = int(np.count_nonzero(pred == data.labels))
    n = len(data.labels)
    return {"top1": correct / n, "correct": correct, "n": n, "data": data.source}


def accuracy(loaded: LoadedModel, x: np.ndarray | Mapping[str, np.ndarray] | EvalData,
             y: np.ndarray | None = None, progress: Progress | None = None) -> dict[str, Any] | None:
    """Top-1 accuracy of ``loaded`` on ``x`` (an array for a one-input model, a dict of arrays, or
    EvalData) with labels ``y``; None when the model's first output is not [N, C] class scores."""
    if isinstance(x, EvalData):
        data = x
    else:
        inputs = dict(x) if isinstance(x, Mapping) else {loaded.graph.inputs[0].name: np.asarray(x)}
        data = EvalData(inputs, None if y is None else np.asarray(y), f"{len(y) if y is not None else 0} samples")
    return accuracy_from_outputs(run_outputs(loaded, data.inputs, progress=progress), data)

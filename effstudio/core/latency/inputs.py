"""User input data for timing: a ``.npz`` with one array per model input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from effstudio.core.errors import EffstudioError
from effstudio.core.graph import LayerGraph


def load_npz_inputs(path: str | Path, graph: LayerGraph) -> dict[str, np.ndarray]:
    """The arrays of ``path`` for ``graph``'s inputs, checked against their shapes and dtypes.

    Raises :class:`EffstudioError` (``"<path>: <problem>"``) naming every missing or mismatched
    array.  Arrays for names the model does not have are an error too (a typo would otherwise
    silently time random data).
    """
    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise EffstudioError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EffstudioError(f"{path}: not a readable .npz file ({e})") from None
    problems = []
    wanted = {t.name: t for t in graph.inputs}
    for name, t in wanted.items():
        if name not in arrays:
            problems.append(f"no array {name!r}")
            continue
        a = arrays[name]
        if t.shape is not None and (len(t.shape) != a.ndim or any(
                isinstance(d, int) and d != s for d, s in zip(t.shape, a.shape, strict=False))):
            problems.append(f"{name!r} has shape {list(a.shape)}, the model wants {list(t.shape)}")
        if t.dtype is not None and str(a.dtype) != t.dtype:
            problems.append(f"{name!r} has dtype {a.dtype!s}, the model wants {t.dtype}")
    extra = sorted(set(arrays) - set(wanted))
    if extra:
        problems.append(f"arrays the model has no input for: {', '.join(extra)} "
                        f"(inputs: {', '.join(wanted) or 'none'})")
    if problems:
        raise EffstudioError(f"{path}: " + "; ".join(problems))
    return {name: arrays[name] for name in wanted}

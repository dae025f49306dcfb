"""Calibration data for static quantization: the built-in digits, a user's ``.npz``, or random.

``calibration_feeds(loaded, source, samples)`` returns a list of input feeds (input name ->
array, each with the model's own batch size) and a :class:`CalibrationInfo` saying where they
came from.  Sources:
- ``"digits"``: the built-in digits' ``val`` split (the demo zoo's inputs: one float input of
  shape ``(N, 1, H, W)``, resized to ``H``×``W``);
- ``"random"``: standard-normal floats (integer inputs repeat the model's example data); a poor
  calibration, flagged in the step's notes;
- ``"auto"``: digits when the model's only input is a ``(N, 1, 32, 32)`` float image (the demo
  zoo), else random;
- a path to an ``.npz`` whose arrays are named like the model's inputs, samples on axis 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effstudio.core.compress.base import CompressError
from effstudio.core.model import LoadedModel

SOURCES = ("auto", "digits", "random")
DEMO_IMAGE = (1, 32, 32)


@dataclass
class CalibrationInfo:
    source: str  # "digits" | "random" | the .npz path
    samples: int
    poor: bool  # random data: activation ranges will not match real inputs

    def note(self) -> str:
        if self.poor:
            return (f"calibrated on {self.samples} random input(s): activation ranges may not match real "
                    "data, so accuracy can drop more than it would with real samples (give an .npz)")
        what = "the built-in digits (val split)" if self.source == "digits" else self.source
        return f"calibrated on {self.samples} sample(s) of {what}"


def _inputs(loaded: LoadedModel) -> list:
    return list(loaded.graph.inputs)


def _batch_of(t) -> int:
    if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0:
        return int(t.shape[0])
    return 1


def _is_digits_shaped(loaded: LoadedModel) -> bool:
    ins = _inputs(loaded)
    return (len(ins) == 1 and (ins[0].dtype or "float32").startswith("float") and ins[0].shape is not None
            and len(ins[0].shape) == 4 and tuple(ins[0].shape[1:]) == DEMO_IMAGE)


def _batched(loaded: LoadedModel, arrays: dict[str, np.ndarray], samples: int) -> list[dict[str, np.ndarray]]:
    """Cut per-input sample arrays into feeds of the model's batch size (whole batches only)."""
    ins = _inputs(loaded)
    batch = _batch_of(ins[0])
    n = min(len(a) for a in arrays.values())
    n = min(n, samples)
    feeds = []
    for start in range(0, n - batch + 1, batch):
        feeds.append({k: np.ascontiguousarray(v[start:start + batch]) for k, v in arrays.items()})
    if not feeds:
        raise CompressError(f"calibration needs at least {batch} sample(s) (the model's batch size), got {n}")
    return feeds


def _check_shapes(loaded: LoadedModel, arrays: dict[str, np.ndarray], where: str) -> None:
    for t in _inputs(loaded):
        a = arrays.get(t.name)
        if a is None:
            raise CompressError(f"{where}: no array named {t.name!r} (the model's inputs: "
                                f"{', '.join(x.name for x in _inputs(loaded))})")
        if t.shape is not None:
            want = tuple(t.shape[1:])
            got = tuple(a.shape[1:])
            if len(want) != len(got) or any(isinstance(w, int) and w != g for w, g in zip(want, got, strict=True)):
                raise CompressError(f"{where}: array {t.name!r} has samples of shape {got}, the model "
                                    f"wants {want}")


def _digits(loaded: LoadedModel) -> dict[str, np.ndarray]:
    from effstudio.core.zoo import digits

    ins = _inputs(loaded)
    shape = ins[0].shape if ins and ins[0].shape else None
    if (len(ins) != 1 or shape is None or len(shape) != 4 or shape[1] != 1 or not isinstance(shape[2], int)
            or shape[2] != shape[3]):
        raise CompressError("digits calibration needs a model with one float input of shape (N, 1, H, H); "
                            "give an .npz of real inputs instead")
    x, _ = digits("val", size=int(shape[2]))
    return {ins[0].name: np.asarray(x, dtype=np.float32)}


def _random(loaded: LoadedModel, samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in _inputs(loaded):
        if t.shape is None or not all(isinstance(d, int) for d in t.shape):
            raise CompressError(f"random calibration needs concrete input shapes; {t.name} has {t.shape}")
        shape = tuple(int(d) for d in t.shape[1:])
        dt = np.dtype(t.dtype or "float32") if (t.dtype or "float32") != "bfloat16" else np.dtype("float32")
        if dt.kind == "f":
            out[t.name] = rng.standard_normal((samples, *shape)).astype(dt)
        else:  # token ids, masks: the example data is in range, random integers may not be
            ex = loaded.example_inputs.get(t.name)
            if ex is None:
                raise CompressError(f"random calibration: no example data for integer input {t.name}")
            out[t.name] = np.repeat(np.asarray(ex)[:1], samples, axis=0).reshape((samples, *shape))
    return out


def _npz(loaded: LoadedModel, path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CompressError(f"{path}: calibration file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as e:
        raise CompressError(f"{path}: not a readable .npz of arrays: {e}") from None
    _check_shapes(loaded, arrays, str(path))
    out = {}
    for t in _inputs(loaded):
        a = arrays[t.name]
        want = np.dtype(t.dtype) if t.dtype and t.dtype != "bfloat16" else np.dtype("float32")
        out[t.name] = a.astype(want, copy=False)
    return out


def calibration_feeds(loaded: LoadedModel, source: str, samples: int, seed: int = 0
                      ) -> tuple[list[dict[str, np.ndarray]], CalibrationInfo]:
    """Feeds for ``loaded`` (its input names and batch size) from ``source`` (see the module doc)."""
    if source == "auto":
        source = "digits" if _is_digits_shaped(loaded) else "random"
    if source == "digits":
        arrays = _digits(loaded)
    elif source == "random":
        arrays = _random(loaded, samples, seed)
    else:
        arrays = _npz(loaded, Path(source))
    feeds = _batched(loaded, arrays, samples)
    n = sum(len(next(iter(f.values()))) for f in feeds)
    return feeds, CalibrationInfo(source, n, poor=source == "random")


def check_source(source: str, technique: str) -> None:
    """Config validation: one of SOURCES or a path ending in .npz."""
    if source not in SOURCES and not str(source).lower().endswith(".npz"):
        raise CompressError(f"{technique}: calibration must be one of {', '.join(SOURCES)} or a path to an "
                            f".npz file, got {source!r}")


class FeedReader:
    """An onnxruntime ``CalibrationDataReader`` over a list of feeds."""

    def __new__(cls, feeds: list[dict[str, np.ndarray]], progress=None):
        from onnxruntime.quantization import CalibrationDataReader

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._feeds = feeds
                self._i = 0

            def get_next(self):
                if self._i >= len(self._feeds):
                    return None
                if progress is not None and self._i % 8 == 0:
                    progress.update(min(1.0, self._i / max(1, len(self._feeds))), "calibrating")
                self._i += 1
                return self._feeds[self._i - 1]

            def rewind(self) -> None:
                self._i = 0

        return _Reader()

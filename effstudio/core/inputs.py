"""Parsing ``--input NAME=DIMS[:DTYPE]`` and making example input data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from effstudio.core.errors import EffstudioError, InputShapeError
from effstudio.core.graph import TensorInfo

if TYPE_CHECKING:
    import numpy as np

_SPEC = re.compile(r"^(?P<name>[^=]+)=(?P<dims>[0-9]+(?:[x,][0-9]+)*)?(?::(?P<dtype>[a-z0-9]+))?$")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...] | None
    dtype: str | None = None


def parse_input_spec(text: str) -> InputSpec:
    """``"images=1x3x640x640"`` or ``"ids=1x128:int64"`` -> :class:`InputSpec`."""
    m = _SPEC.match(text.strip())
    if not m or (m.group("dims") is None and m.group("dtype") is None):
        raise EffstudioError(
            f"--input {text!r}: expected NAME=DIMS[:DTYPE], e.g. images=1x3x224x224 or ids=1x128:int64")
    dims = m.group("dims")
    shape = tuple(int(d) for d in re.split(r"[x,]", dims)) if dims else None
    return InputSpec(m.group("name"), shape, m.group("dtype"))


def parse_input_specs(texts: list[str] | None) -> dict[str, InputSpec]:
    return {s.name: s for s in (parse_input_spec(t) for t in (texts or []))}


_ML_DTYPES = ("bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz", "int4", "uint4")


def _numpy_dtype(name: str):
    import numpy as np

    if name in _ML_DTYPES:
        import ml_dtypes  # numpy has no such dtypes; ml_dtypes (an onnx dependency) has

        return np.dtype(getattr(ml_dtypes, name.replace("float8", "float8_")))
    if name == "string":
        return np.dtype(object)
    return np.dtype(name)


def make_example_inputs(inputs: list[TensorInfo], *, seed: int = 0, int_high: int | None = None
                        ) -> dict[str, np.ndarray]:
    """Random data of each input's dtype and shape (integers in ``[0, int_high or 100)``).

    Raises :class:`InputShapeError` naming every input that still has a symbolic or unknown
    dim.  An input of unknown dtype gets float32.
    """
    import numpy as np

    dynamic = [t for t in inputs if t.shape is None or not all(isinstance(d, int) for d in t.shape)]
    if dynamic:
        def show(t: TensorInfo) -> str:
            return f"{t.name} (unknown shape)" if t.shape is None else \
                f"{t.name} ({'x'.join(str(d) for d in t.shape) or 'scalar'})"

        def example(t: TensorInfo) -> str:
            dims = "x".join(str(d) if isinstance(d, int) else f"<{d}>" for d in t.shape or ("<dims>",))
            return f"--input {t.name}={dims}"

        plural = "s" if len(dynamic) > 1 else ""
        raise InputShapeError(
            f"input{plural} with dynamic dims: {', '.join(show(t) for t in dynamic)}; "
            f"give concrete shapes with --input NAME=DIMS, e.g. {' '.join(example(t) for t in dynamic)}")
    rng = np.random.default_rng(seed)
    high = 100 if int_high is None else int(int_high)
    out: dict[str, np.ndarray] = {}
    for t in inputs:
        shape = tuple(int(d) for d in t.shape or ())
        dt = _numpy_dtype(t.dtype or "float32")
        if dt == np.dtype(object):
            arr = np.full(shape, "", dtype=object)
        elif dt == np.dtype(bool):
            arr = rng.integers(0, 2, size=shape).astype(bool)
        elif dt.kind in "iu":
            arr = rng.integers(0, high, size=shape, dtype=dt)
        elif dt.kind == "c":
            arr = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
        elif dt.kind == "f":
            arr = rng.standard_normal(shape).astype(dt)
        else:  # ml_dtypes (bfloat16, float8, int4): go through float32
            base = rng.integers(0, 8, size=shape) if "int" in (t.dtype or "") else rng.standard_normal(shape)
            arr = base.astype(np.float32).astype(dt)
        out[t.name] = arr
    return out

"""Data types by name, their storage size, and which of them count as parameters."""

from __future__ import annotations

# bits per element of each dtype name we use across ONNX and torch
_BITS = {
    "float64": 64, "float32": 32, "float16": 16, "bfloat16": 16,
    "float8e4m3fn": 8, "float8e4m3fnuz": 8, "float8e5m2": 8, "float8e5m2fnuz": 8,
    "int64": 64, "int32": 32, "int16": 16, "int8": 8, "int4": 4,
    "uint64": 64, "uint32": 32, "uint16": 16, "uint8": 8, "uint4": 4,
    "bool": 8, "complex64": 64, "complex128": 128, "string": 0,
}

# weights of these types count as parameters (float and quantized-integer storage);
# int32/int64 initializers are shape or index data and are not parameters.
PARAM_DTYPES = frozenset({
    "float64", "float32", "float16", "bfloat16",
    "float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz",
    "int8", "uint8", "int4", "uint4",
})


def bits(dtype: str) -> int:
    return _BITS.get(dtype, 0)


def nbytes(dtype: str, numel: int) -> int:
    """Bytes to store ``numel`` elements (sub-byte types rounded up per tensor)."""
    return (bits(dtype) * numel + 7) // 8


def is_param_dtype(dtype: str) -> bool:
    return dtype in PARAM_DTYPES


_ONNX_NAMES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
    14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
    19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
}


def from_onnx(elem_type: int) -> str:
    """ONNX ``TensorProto.DataType`` number to our dtype name."""
    name = _ONNX_NAMES.get(elem_type)  # (an int already, the usual case: no int() call, no default built)
    if name is None:
        name = _ONNX_NAMES.get(int(elem_type), f"onnx_type_{elem_type}")
    return name


def from_torch(dtype: object) -> str:
    """``torch.dtype`` (or its string) to our dtype name, e.g. ``torch.float32`` -> ``float32``."""
    name = str(dtype).replace("torch.", "")
    return {"qint8": "int8", "quint8": "uint8", "quint4x2": "uint4", "float8_e4m3fn": "float8e4m3fn",
            "float8_e5m2": "float8e5m2", "half": "float16", "float": "float32",
            "double": "float64", "long": "int64", "int": "int32"}.get(name, name)

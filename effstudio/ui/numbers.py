"""Human-readable numbers for the views (Qt-free): ``1.23 M``, ``4.7 MB``, ``0.84 ms``, ``—``."""

from __future__ import annotations

UNKNOWN = "—"

_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BYTES = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def _trim(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def si(value: float | None, unit: str = "") -> str:
    """``1234567`` -> ``1.23 M`` (+ unit); exact below 1000."""
    if value is None:
        return UNKNOWN
    v = float(value)
    sep = " " if unit else ""
    for scale, prefix in _SI:
        if abs(v) >= scale:
            return f"{_trim(v / scale)} {prefix}{unit}"
    if v == int(v):
        return f"{int(v)}{sep}{unit}"
    return f"{_trim(v)}{sep}{unit}"


def nbytes(value: float | None) -> str:
    """``4_900_000`` -> ``4.67 MiB`` (binary prefixes, as file managers on Linux show)."""
    if value is None:
        return UNKNOWN
    v = float(value)
    for scale, prefix in _BYTES:
        if abs(v) >= scale:
            return f"{_trim(v / scale)} {prefix}"
    return f"{int(v)} B"


def ms(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    v = float(value)
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v * 1000:.0f} µs"


def percent(fraction: float | None) -> str:
    return UNKNOWN if fraction is None else f"{fraction * 100:.1f} %"


def by_unit(value: float | None, unit: str) -> str:
    """Format a metric value by its ``MetricInfo.unit``."""
    if unit == "B":
        return nbytes(value)
    if unit == "ms":
        return ms(value)
    return si(value)  # counts (params, MACs, FLOPs): the column or axis title names the unit


def shape(s) -> str:
    return "?" if s is None else "×".join(str(d) for d in s) or "scalar"

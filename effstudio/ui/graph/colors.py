"""Metric values -> colors: a perceptual colormap (pyqtgraph's), linear or log, unknown apart."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor

COLORMAPS = ("viridis", "inferno", "magma", "plasma", "cividis")  # perceptually uniform
LUT_SIZE = 256
UNKNOWN_FILL = QColor("#c9ccd1")  # plus a hatch: unknown is never a colormap color
NEUTRAL_FILL = QColor("#e6ecf5")  # no metric chosen


def lookup_table(name: str) -> list[QColor]:
    """``LUT_SIZE`` colors of the named pyqtgraph colormap (low to high)."""
    cmap = pg.colormap.get(name)
    lut = cmap.getLookupTable(nPts=LUT_SIZE, alpha=False)
    return [QColor(int(r), int(g), int(b)) for r, g, b in lut]


def text_color(fill: QColor) -> QColor:
    """Black or white, whichever reads better on ``fill`` (relative luminance, WCAG)."""
    def lin(c: float) -> float:
        c /= 255.0
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(fill.red()) + 0.7152 * lin(fill.green()) + 0.0722 * lin(fill.blue())
    # contrast with black (lum + .05) / .05 against white 1.05 / (lum + .05)
    return QColor("#111111") if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else QColor("#ffffff")


class ColorScale:
    """Maps known values onto the colormap between the smallest and largest shown value.

    ``log``: log10 between the smallest positive and the largest value; zero (a known value)
    gets the lowest color.  ``None`` (unknown) has no color here: callers draw it hatched grey.
    """

    def __init__(self, colormap: str = "viridis") -> None:
        self.name = colormap
        self.lut = lookup_table(colormap)
        self.text_lut = [text_color(c) for c in self.lut]  # readable text on each color
        self.log = False
        self.vmin: float | None = None
        self.vmax: float | None = None
        self.clipped_low = False

    def set_colormap(self, name: str) -> None:
        self.lut = lookup_table(name)
        self.text_lut = [text_color(c) for c in self.lut]
        self.name = name

    def indices(self, values: list[float | None]) -> list[int | None]:
        """:meth:`index` of many values at once (numpy)."""
        if self.vmin is None or self.vmax is None:
            return [None] * len(values)
        v = np.array([np.nan if x is None else x for x in values], dtype=float)
        known = np.isfinite(v)
        lo, hi = self.vmin, self.vmax
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), -np.inf)
            lo, hi = math.log10(lo), math.log10(hi)
        t = np.full(len(v), 0.5) if hi <= lo else np.clip((v - lo) / (hi - lo), 0.0, 1.0)
        idx = np.rint(np.nan_to_num(t, nan=0.0) * (LUT_SIZE - 1)).astype(int)
        return [int(i) if k else None for i, k in zip(idx, known, strict=True)]

    def fit(self, values: Iterable[float | None], log: bool = False) -> None:
        self.log = log
        known = [float(v) for v in values if v is not None and math.isfinite(v)]
        self.clipped_low = False  # log scale: zero/negative values shown with the lowest color
        if log:
            pos = [v for v in known if v > 0]
            self.vmin = min(pos) if pos else None
            self.vmax = max(pos) if pos else None
            self.clipped_low = len(pos) < len(known)
        else:
            self.vmin = min(known) if known else None
            self.vmax = max(known) if known else None

    @property
    def empty(self) -> bool:
        return self.vmin is None

    def norm(self, v: float | None) -> float | None:
        """0..1 along the colormap, or None for unknown."""
        if v is None or not math.isfinite(v) or self.vmin is None or self.vmax is None:
            return None
        lo, hi = self.vmin, self.vmax
        if self.log:
            if v <= 0:
                return 0.0
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
        if hi <= lo:
            return 0.5
        return min(1.0, max(0.0, (v - lo) / (hi - lo)))

    def index(self, v: float | None) -> int | None:
        t = self.norm(v)
        return None if t is None else round(t * (LUT_SIZE - 1))

    def color(self, v: float | None) -> QColor | None:
        i = self.index(v)
        return None if i is None else self.lut[i]

    def value_at(self, t: float) -> float | None:
        """The value at position ``t`` (0..1) of the bar, for tick labels."""
        if self.vmin is None or self.vmax is None:
            return None
        if self.log:
            lo, hi = math.log10(self.vmin), math.log10(self.vmax)
            return 10 ** (lo + t * (hi - lo))
        return self.vmin + t * (self.vmax - self.vmin)

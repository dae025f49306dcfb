"""The built-in digits data: scikit-learn's 1797 8×8 handwritten digits (shipped with
scikit-learn, no download), upscaled to ``size``×``size``, with one fixed train/val/test split.

It trains the demo zoo and is the built-in evaluation and calibration set.  The split is
stratified 70/15/15 and made without any random number generator: within each class the
samples are ordered by a fixed integer hash of their index, so the split is identical on every
machine and every numpy / scikit-learn version (the shipped weights were trained on ``train``;
a split that drifted would leak test images into training).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
NUM_CLASSES = 10
RAW_SIZE = 8
RAW_MAX = 16.0  # pixel values of load_digits are integers 0..16
# mean / std of the training split's 8×8 pixels scaled to [0, 1] (fixed so that inputs are
# normalized the same way whatever split or size is asked for)
MEAN = 0.3050
STD = 0.3758


def _hash_key(index: int) -> int:
    return (index * 2654435761 + 12345) % (1 << 32)  # Knuth's multiplicative hash


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32) / RAW_MAX  # (N, 8, 8) in [0, 1]
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Split name -> sorted int64 sample indices into ``load_digits()``; disjoint and complete."""
    _, y = _raw()
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in range(NUM_CLASSES):
        members = sorted(np.flatnonzero(y == cls).tolist(), key=_hash_key)
        n = len(members)
        n_train = round(n * FRACTIONS[0])
        n_val = round(n * FRACTIONS[1])
        parts["train"] += members[:n_train]
        parts["val"] += members[n_train:n_train + n_val]
        parts["test"] += members[n_train + n_val:]
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in parts.items()}


def split_digest() -> str:
    """A short fingerprint of the split (stored with the trained weights' metrics)."""
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode())
        h.update(split_indices()[s].tobytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=8)
def _digits(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    x, y = _raw()
    idx = split_indices()[split]
    t = torch.from_numpy(x[idx]).unsqueeze(1)  # (N, 1, 8, 8)
    if size != RAW_SIZE:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    t = (t - MEAN) / STD
    xs = t.numpy().astype(np.float32)
    xs.setflags(write=False)
    ys = y[idx].copy()
    ys.setflags(write=False)
    return xs, ys


def digits(split: str, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one split: x float32 ``(N, 1, size, size)`` normalized, y int64 ``(N,)``.

    The arrays are read-only (they are cached); copy them before changing them in place.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {', '.join(SPLITS)}")
    if size < 1:
        raise ValueError(f"digits size must be positive, got {size}")
    return _digits(split, int(size))


def background_value() -> float:
    """The normalized value of a blank pixel (what padding should use)."""
    return (0.0 - MEAN) / STD

"""Validation of the arguments every kind shares: labels, number of classes, seed."""

from __future__ import annotations

import numbers

import numpy as np


def as_num_classes(num_classes: object) -> int:
    """``num_classes`` as an int >= 2, or ValueError."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def as_seed(seed: object) -> int:
    """``seed`` as a non-negative int (what ``numpy.random.default_rng`` accepts), or ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def as_labels(labels: object, num_classes: int, *, name: str = "labels") -> np.ndarray:
    """A fresh int64 copy of ``labels``, shape (N,), every value in [0, num_classes).

    Raises ValueError for a wrong shape, a non-integer dtype (floats are refused rather than
    truncated: 2.7 is not a class) or a value outside [0, num_classes), naming the first offender.
    """
    arr = np.asarray(labels)
    if arr.size == 0 and arr.ndim == 1:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers (class indices), got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name} must be in [0, num_classes) = [0, {num_classes}), got {arr[i]} at index {i} "
            f"({bad.size} of {arr.size} out of range)"
        )
    return arr.astype(np.int64, copy=True)

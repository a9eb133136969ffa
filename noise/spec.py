"""``NoiseSpec``: what label noise to apply, validated when it is built."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field

import numpy as np

from noise.checks import as_num_classes
from noise.cifar import LABEL_SETS
from noise.registry import get_kind

# Tolerance on the row sums of a user-given transition matrix.
ROW_SUM_TOL = 1e-6


@dataclass(frozen=True)
class NoiseSpec:
    """What label noise to apply; build it with keywords from the ``noise:`` config section.

    kind: one of ``noise.KINDS``.
    rate: nominal noise rate in [0, 1]. symmetric, pairflip, asymmetric: the share of each
        affected true class that is flipped (asymmetric affects only the mapped classes, so on
        CIFAR-10 the overall rate is rate / 2). uniform: the share relabelled to a uniformly random
        class, the true one included (flip rate ~ rate * (K-1) / K). instance: the mean per-sample
        flip rate. Ignored by none, matrix and human.
    dataset: for asymmetric, which class mapping: 'cifar10' or 'cifar100'. Other kinds ignore it,
        so a caller may always pass the data set's name.
    label_set, label_file: for human, the CIFAR-N label set (see ``noise.human.LABEL_SETS``) and
        the path of the official ``.pt`` file.
    matrix: for matrix, a K x K row-stochastic transition matrix (row = true class, column =
        observed label; rows sum to 1), given as nested lists or an ndarray. It is stored as a
        tuple of row tuples so that the spec stays hashable and comparable.

    Construction checks everything that needs neither the number of classes nor the disk;
    ``validate(num_classes)`` (which ``corrupt`` calls) checks the rest.
    """

    kind: str
    rate: float = 0.0
    dataset: str | None = field(default=None, kw_only=True)
    label_set: str | None = field(default=None, kw_only=True)
    label_file: str | os.PathLike[str] | None = field(default=None, kw_only=True)
    matrix: tuple[tuple[float, ...], ...] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        kind = get_kind(self.kind)
        object.__setattr__(self, "rate", _as_rate(self.rate))
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise ValueError(f"noise.dataset must be a string, got {self.dataset!r}")
        if self.label_set is not None and self.label_set not in LABEL_SETS:
            raise ValueError(
                f"noise.label_set must be one of {', '.join(LABEL_SETS)}; got {self.label_set!r}"
            )
        if self.label_file is not None and not isinstance(self.label_file, (str, os.PathLike)):
            raise ValueError(f"noise.label_file must be a path, got {self.label_file!r}")
        if self.matrix is not None:
            object.__setattr__(self, "matrix", _as_matrix(self.matrix))
        if kind.check is not None:
            kind.check(self, None, False)

    def validate(self, num_classes: int | None = None, *, check_files: bool = True) -> NoiseSpec:
        """Check the fields that depend on ``num_classes`` (K) and, if asked, that files exist.

        Returns ``self`` so that ``NoiseSpec(...).validate(10)`` reads as one expression.
        Raises ValueError (FileNotFoundError for a missing label file).
        """
        k = None if num_classes is None else as_num_classes(num_classes)
        kind = get_kind(self.kind)
        if kind.check is not None:
            kind.check(self, k, check_files)
        return self

    def matrix_array(self) -> np.ndarray:
        """``matrix`` as a float64 array of shape (K, K); ValueError when it is not set."""
        if self.matrix is None:
            raise ValueError(f"noise.matrix is required for kind {self.kind!r}, got None")
        return np.array(self.matrix, dtype=np.float64)


def _as_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ValueError(f"noise.rate must be a number in [0, 1], got {rate!r}")
    value = float(rate)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"noise.rate must be in [0, 1], got {rate!r}")
    return value


def _as_matrix(matrix: object) -> tuple[tuple[float, ...], ...]:
    """Check a transition matrix's shape, entries and row sums; return it as row tuples."""
    try:
        arr = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"noise.matrix must be a square matrix of numbers, got {matrix!r}") from err
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2:
        raise ValueError(f"noise.matrix must be a square K x K matrix (K >= 2), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("noise.matrix must hold finite numbers, got NaN or inf")
    neg = np.argwhere(arr < 0)
    if neg.size:
        i, j = (int(v) for v in neg[0])
        raise ValueError(
            f"noise.matrix entries must be >= 0, got a negative entry {arr[i, j]} at row {i}, column {j}"
        )
    sums = arr.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOL)
    if off.size:
        i = int(off[0])
        raise ValueError(
            f"noise.matrix rows must sum to 1 (row = true class, column = observed label), "
            f"got row {i} summing to {sums[i]:.8g}"
        )
    return tuple(tuple(float(v) for v in row) for row in arr)

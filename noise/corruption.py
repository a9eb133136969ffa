"""``corrupt``: apply a ``NoiseSpec`` to clean labels; ``NoisyLabels``: what it returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noise.checks import as_labels, as_num_classes, as_seed
from noise.registry import get_kind
from noise.spec import NoiseSpec
from noise.transition import realized_transition


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Noisy labels beside the clean ones they came from.

    labels: int64 (N,), the observed (possibly wrong) labels to train on.
    flipped: bool (N,), labels != clean.
    transition: float64 (K, K), the realized transition matrix (row = true class, column =
        observed label; rows sum to 1; a class without samples has 1 on the diagonal).
    rate: the realized share of flipped labels.
    clean: int64 (N,), the true labels that were corrupted (``corrupt`` and ``from_pair`` set it).
    """

    labels: np.ndarray
    flipped: np.ndarray
    transition: np.ndarray
    rate: float
    clean: np.ndarray | None = None

    @classmethod
    def from_pair(cls, clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> NoisyLabels:
        """Build from clean and noisy label arrays of the same length (e.g. a CIFAR-N subset)."""
        k = as_num_classes(num_classes)
        clean = as_labels(clean, k, name="clean labels")
        noisy = as_labels(noisy, k, name="noisy labels")
        transition = realized_transition(clean, noisy, k)
        flipped = noisy != clean
        rate = float(flipped.mean()) if flipped.size else 0.0
        return cls(labels=noisy, clean=clean, flipped=flipped, transition=transition, rate=rate)


def corrupt(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, seed: int, features: np.ndarray | None = None
) -> NoisyLabels:
    """Apply label noise ``spec`` to ``labels`` (int, shape (N,), values in [0, num_classes)).

    All randomness comes from ``numpy.random.default_rng(seed)``: the same inputs and seed give
    the same labels, and no global random state is read or changed. ``features`` (shape (N, ...))
    is needed by kind 'instance' only. The input array is not modified.
    """
    if not isinstance(spec, NoiseSpec):
        raise TypeError(
            f"spec must be a noise.NoiseSpec, got {type(spec).__name__}; build one with NoiseSpec(**cfg)"
        )
    k = as_num_classes(num_classes)
    clean = as_labels(labels, k)
    rng = np.random.default_rng(as_seed(seed))
    spec.validate(k)
    noisy = get_kind(spec.kind).generate(clean, spec, num_classes=k, rng=rng, features=features)
    return NoisyLabels.from_pair(clean, noisy, k)

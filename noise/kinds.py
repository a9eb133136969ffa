"""The class-conditional noise kinds: none, symmetric, uniform, pairflip, asymmetric, matrix.

Each flips exact counts per true class (see ``noise.transition.flip_exact``), except uniform,
whose new labels are drawn at random (so its realized flip rate is binomial around
rate * (K-1) / K).
"""

from __future__ import annotations

import numpy as np

from noise.cifar import ASYMMETRIC_MAPS
from noise.registry import register_kind
from noise.spec import NoiseSpec
from noise.transition import class_indices, flip_exact, largest_remainder, relabel_by_counts, round_half_up


@register_kind("none")
def none(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, rng: np.random.Generator, **_
) -> np.ndarray:
    """Clean labels (``rate`` is ignored)."""
    return labels.copy()


@register_kind("symmetric")
def symmetric(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, rng: np.random.Generator, **_
) -> np.ndarray:
    """Flip round(rate * n_c) samples of each class c to the other K-1 classes, spread evenly."""
    k = num_classes
    destinations = (1.0 - np.eye(k)) / (k - 1)
    return flip_exact(labels, np.full(k, spec.rate), destinations, rng)


@register_kind("uniform")
def uniform(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, rng: np.random.Generator, **_
) -> np.ndarray:
    """Relabel round(rate * n_c) samples of each class c to a uniformly random class.

    The true class is among the K choices, so a relabelled sample keeps its label with
    probability 1/K and the realized flip rate is about rate * (K-1) / K.
    """
    noisy = labels.copy()
    for idx in class_indices(labels, num_classes):
        picked = rng.permutation(idx)[: round_half_up(spec.rate * idx.size)]
        noisy[picked] = rng.integers(num_classes, size=picked.size)
    return noisy


@register_kind("pairflip")
def pairflip(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, rng: np.random.Generator, **_
) -> np.ndarray:
    """Flip round(rate * n_c) samples of each class c to class (c + 1) mod K."""
    k = num_classes
    destinations = np.roll(np.eye(k), 1, axis=1)
    return flip_exact(labels, np.full(k, spec.rate), destinations, rng)


def _check_asymmetric(spec: NoiseSpec, num_classes: int | None, check_files: bool) -> None:
    if spec.dataset not in ASYMMETRIC_MAPS:
        raise ValueError(
            f"noise.dataset must be one of {', '.join(ASYMMETRIC_MAPS)} for kind 'asymmetric', "
            f"got {spec.dataset!r}"
        )
    k = ASYMMETRIC_MAPS[spec.dataset][0]
    if num_classes is not None and num_classes != k:
        raise ValueError(
            f"noise kind 'asymmetric' with noise.dataset={spec.dataset!r} needs num_classes={k}, got {num_classes}"
        )


@register_kind("asymmetric", check=_check_asymmetric)
def asymmetric(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, rng: np.random.Generator, **_
) -> np.ndarray:
    """Flip round(rate * n_c) samples of each mapped class c to its partner class.

    CIFAR-10: truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog (the other five
    classes stay clean). CIFAR-100: each class -> the next class of its superclass.
    """
    k = num_classes
    rates = np.zeros(k)
    destinations = np.zeros((k, k))
    for src, dst in ASYMMETRIC_MAPS[spec.dataset][1].items():
        rates[src] = spec.rate
        destinations[src, dst] = 1.0
    return flip_exact(labels, rates, destinations, rng)


def _check_matrix(spec: NoiseSpec, num_classes: int | None, check_files: bool) -> None:
    matrix = spec.matrix_array()  # ValueError when absent; entries and rows checked in NoiseSpec
    if num_classes is not None and matrix.shape != (num_classes, num_classes):
        raise ValueError(
            f"noise.matrix must be {num_classes} x {num_classes} (num_classes={num_classes}), "
            f"got {matrix.shape[0]} x {matrix.shape[1]}"
        )


@register_kind("matrix", check=_check_matrix)
def matrix(
    labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, rng: np.random.Generator, **_
) -> np.ndarray:
    """Relabel so that the realized transition matches ``spec.matrix`` up to rounding.

    Row c's counts are matrix[c] * n_c rounded by largest remainder, so they sum to n_c and
    each is within 1 of its quota.
    """
    t = spec.matrix_array()
    t = t / t.sum(axis=1, keepdims=True)  # rows were checked to within 1e-6; make them exact
    sizes = np.bincount(labels, minlength=num_classes)
    counts = np.stack([largest_remainder(t[c] * sizes[c], int(sizes[c]), rng) for c in range(num_classes)])
    return relabel_by_counts(labels, counts, rng)

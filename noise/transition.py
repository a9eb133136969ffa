"""Transition matrices: the realized one of a corruption, and exact-count relabelling.

Convention throughout: a transition matrix has shape (K, K); row = true class, column =
observed label; rows sum to 1.
"""

from __future__ import annotations

import math

import numpy as np

from noise.checks import as_labels, as_num_classes


def realized_transition(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """The empirical transition matrix of a relabelling, float64 of shape (K, K).

    Entry [i, j] is the share of samples of true class i (in ``clean``) labelled j in ``noisy``.
    A class with no samples gets 1 on the diagonal, so every row sums to 1.
    """
    k = as_num_classes(num_classes)
    clean = as_labels(clean, k, name="clean labels")
    noisy = as_labels(noisy, k, name="noisy labels")
    if clean.shape != noisy.shape:
        raise ValueError(
            f"clean and noisy labels must have the same length, got {clean.size} and {noisy.size}"
        )
    counts = np.bincount(clean * k + noisy, minlength=k * k).reshape(k, k).astype(np.float64)
    totals = counts.sum(axis=1)
    empty = totals == 0
    counts[empty, empty] = 1.0
    totals[empty] = 1.0
    return counts / totals[:, None]


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up; the epsilon absorbs float error (0.35 * 10)."""
    return math.floor(x + 0.5 + 1e-9)


def largest_remainder(quotas: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer counts (int64, same shape as ``quotas``) that sum to ``total``.

    Each count is the floor or the ceiling of its quota (Hamilton's method); the units left
    after flooring go to the largest remainders, ties broken at random (not by index, which
    would always favour low class numbers). ``quotas`` must be >= 0 and sum to ``total``.
    """
    quotas = np.asarray(quotas, dtype=np.float64)
    counts = np.floor(quotas).astype(np.int64)
    short = int(total - counts.sum())
    if not 0 <= short <= quotas.size:
        raise ValueError(f"quotas sum to {quotas.sum()}, not to the total {total}")
    if short:
        remainders = quotas - counts
        # lexsort sorts by the last key first: largest remainder, then a random tie-break.
        order = np.lexsort((rng.random(quotas.size), -remainders))
        counts[order[:short]] += 1
    return counts


def class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """For each class c, the indices i with labels[i] == c, in increasing order."""
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=num_classes))
    return np.split(order, bounds[:-1])


def relabel_by_counts(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relabel so that exactly ``counts[c, j]`` samples of true class c end up labelled j.

    ``counts`` is an int (K, K) array whose row c sums to the number of samples of class c;
    which samples go where is a uniformly random assignment. Returns a new int64 array.
    """
    k = counts.shape[0]
    noisy = labels.copy()
    for c, idx in enumerate(class_indices(labels, k)):
        if counts[c].sum() != idx.size:
            raise ValueError(
                f"counts row {c} sums to {counts[c].sum()}, but class {c} has {idx.size} samples"
            )
        if counts[c, c] == idx.size:
            continue
        noisy[rng.permutation(idx)] = np.repeat(np.arange(k), counts[c])
    return noisy


def flip_exact(
    labels: np.ndarray, rates: np.ndarray, destinations: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Flip exactly round(rates[c] * n_c) samples of each true class c.

    rates: shape (K,), the share of each class to flip. destinations: shape (K, K), row c the
    distribution of a flipped sample's new label (zero on the diagonal where rates[c] > 0); the
    flipped samples are split over destinations by largest remainder, so per-destination counts
    are exact too. This is cleanlab's ``generate_noisy_labels`` with an explicit generator.
    """
    k = destinations.shape[0]
    sizes = np.bincount(labels, minlength=k)
    counts = np.zeros((k, k), dtype=np.int64)
    for c in range(k):
        flips = round_half_up(rates[c] * sizes[c])
        counts[c, c] = sizes[c] - flips
        if flips:
            counts[c] += largest_remainder(destinations[c] * flips, flips, rng)
    return relabel_by_counts(labels, counts, rng)

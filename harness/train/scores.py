"""Scores of a trained classifier beyond accuracy: calibration (ECE, NLL) and noise detection (AUROC,
precision and recall of the flagged samples).

Calibration is counted on the device, batch by batch, into a small tensor of per-bin sums
(`calibration_counts`), so an evaluation pass needs no host sync per batch and data-parallel
processes can add their counts; `ece_from_counts` turns the summed counts into the number. The
detection scores are computed once, at the end of training, on the host (`detection_metrics`): a
sort of N scores, N the training set's size.

Conventions: probabilities are (N, K) rows that sum to 1; labels are int64 class indices (N,);
a sample's *confidence* is its largest probability and its *prediction* the argmax.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Guo et al. (2017) and most label-noise papers: 15 equal-width confidence bins.
CALIBRATION_BINS = 15


def calibration_counts(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS
) -> torch.Tensor:
    """Per-bin sums for the expected calibration error, on ``probs``' device, no sync.

    ``probs``: (N, K) class probabilities; ``labels``: (N,) true classes. Bin b holds the samples
    whose confidence lies in (b / bins, (b + 1) / bins] (a confidence of 0 cannot occur with K >= 1
    rows summing to 1 other than by underflow; it falls into bin 0). Returns float64 (3, bins):
    row 0 the number of samples, row 1 the sum of their confidences, row 2 how many were predicted
    right. Counts of several batches (or processes) add up.
    """
    conf, pred = probs.max(dim=1)
    conf = conf.double()  # float32 confidences of 0.9 sum to 0.9 only approximately
    which = (conf * bins).ceil().long().clamp(1, bins) - 1
    values = torch.stack([torch.ones_like(conf), conf, (pred == labels).float()]).double()
    return torch.zeros(3, bins, dtype=torch.float64, device=probs.device).index_add_(1, which, values)


def ece_from_counts(counts: torch.Tensor) -> float:
    """Expected calibration error from `calibration_counts` (summed over batches): the sample-weighted
    mean over bins of |accuracy - mean confidence| = sum_b |right_b - confidence_sum_b| / N.
    NaN when no sample was counted. One host sync."""
    n = counts[0].sum()
    return float((counts[2] - counts[1]).abs().sum() / n) if n > 0 else math.nan


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS
) -> float:
    """ECE of ``probs`` (N, K) against ``labels`` (N,) with ``bins`` equal-width confidence bins, in [0, 1]."""
    return ece_from_counts(calibration_counts(probs, labels, bins))


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (N,) (higher = more likely positive) for the boolean
    ``positives`` (N,): the probability that a random positive scores above a random negative, ties
    counting one half (the Mann-Whitney U statistic over n_pos * n_neg). NaN when either class is
    empty: the area is undefined there, not 0 or 0.5."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and positives must be 1-d of the same length, got {scores.shape} and {positives.shape}"
        )
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks (scipy's rankdata 'average')."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # start of each run of equal values, and the mean rank of the run: (first + last) / 2, 1-based
    new_run = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], values.size]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def top_k_precision_recall(scores: np.ndarray, positives: np.ndarray, k: int) -> tuple[float, float]:
    """Precision and recall of flagging the ``k`` highest-scoring samples (ties broken by position).

    With k = the number of positives (flag as many samples as the realized noise rate says are
    flipped) precision equals recall: both are (true positives among the k) / k. NaN for k = 0 or
    when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    if k <= 0 or n_pos == 0:
        return math.nan, math.nan
    flagged = np.argsort(-scores, kind="stable")[:k]
    hits = int(positives[flagged].sum())
    return hits / min(k, scores.size), hits / n_pos


def detection_metrics(scores: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """How well ``scores`` (N,) (higher = more suspect) find the flipped labels ``flipped`` (N,).

    Returns {"auroc", "precision", "recall"}, the last two for flagging as many samples as are
    flipped (the realized noise rate; so they are equal). Empty when no label or every label is
    flipped: detection is undefined there, and a 0 would read as a measurement.
    """
    flipped = np.asarray(flipped, dtype=bool)
    n_flipped = int(flipped.sum())
    if n_flipped == 0 or n_flipped == flipped.size:
        return {}
    precision, recall = top_k_precision_recall(scores, flipped, n_flipped)
    return {"auroc": auroc(scores, flipped), "precision": precision, "recall": recall}

"""Calibration and noise-detection scores on constructed predictions with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from harness.train.scores import (
    auroc,
    calibration_counts,
    detection_metrics,
    ece_from_counts,
    expected_calibration_error,
    top_k_precision_recall,
)


def two_class(confidences: list[float], right: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) probabilities predicting class 0 with each confidence; label 0 where right, else 1."""
    conf = torch.tensor(confidences, dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], dim=1)
    labels = torch.tensor([0 if r else 1 for r in right])
    return probs, labels


def test_perfectly_calibrated_predictions_have_zero_ece():
    # 10 samples at 60 % confidence, 6 right; 10 at 90 %, 9 right; 4 at 100 %, all right
    conf = [0.6] * 10 + [0.9] * 10 + [1.0] * 4
    right = [i < 6 for i in range(10)] + [i < 9 for i in range(10)] + [True] * 4
    probs, labels = two_class(conf, right)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_always_certain_and_right_half_the_time_gives_ece_one_half():
    probs = torch.eye(10)[torch.zeros(8, dtype=torch.long)]  # always class 0 with probability 1
    labels = torch.tensor([0, 3, 0, 5, 0, 1, 0, 2])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5, abs=1e-12)


def test_ece_matches_a_loop_over_the_fifteen_bins_and_adds_up_over_batches():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=gen), dim=1)
    labels = torch.randint(0, 10, (500,), generator=gen)
    conf, pred = probs.max(1)
    expected = 0.0
    for b in range(15):
        inside = (conf > b / 15) & (conf <= (b + 1) / 15)
        if inside.any():
            gap = (pred[inside] == labels[inside]).double().mean() - conf[inside].double().mean()
            expected += inside.double().mean().item() * abs(gap.item())
    assert expected > 0.01  # random predictions are miscalibrated: the check can fail
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)
    halves = calibration_counts(probs[:200], labels[:200]) + calibration_counts(probs[200:], labels[200:])
    assert ece_from_counts(halves) == pytest.approx(expected, abs=1e-6)
    counts = calibration_counts(probs, labels)
    assert counts.shape == (3, 15) and counts.dtype == torch.float64 and counts[0].sum() == 500


def test_a_confidence_on_a_bin_edge_falls_into_the_lower_bin():
    probs, labels = two_class([2 / 3, 1.0], [True, True])  # (9/15, 10/15] is bin 9, (14/15, 1] bin 14
    counts = calibration_counts(probs, labels)
    assert counts[0].nonzero().flatten().tolist() == [9, 14]


def test_ece_of_nothing_is_nan():
    assert math.isnan(ece_from_counts(torch.zeros(3, 15, dtype=torch.float64)))


def test_auroc_of_perfect_reversed_and_constant_scores():
    flipped = np.array([False, True, False, True, True, False])
    perfect = np.where(flipped, 2.0, 1.0) + np.arange(6) * 0.01
    assert auroc(perfect, flipped) == 1.0
    assert auroc(-perfect, flipped) == 0.0
    assert auroc(np.zeros(6), flipped) == 0.5  # every pair tied


def test_auroc_counts_pairs_with_ties_as_one_half():
    gen = np.random.default_rng(1)
    scores = gen.integers(0, 5, size=60).astype(float)  # many ties
    positives = gen.random(60) < 0.3
    pos, neg = scores[positives], scores[~positives]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert auroc(scores, positives) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_auroc_is_undefined_without_positives_or_negatives():
    assert math.isnan(auroc(np.arange(4.0), np.zeros(4, bool)))
    assert math.isnan(auroc(np.arange(4.0), np.ones(4, bool)))
    with pytest.raises(ValueError, match="same length"):
        auroc(np.arange(4.0), np.ones(3, bool))


def test_precision_and_recall_of_the_top_k():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    flipped = np.array([True, False, True, False, False, True])
    # k = 3 (the realized rate): flags 0, 1, 2 -> two of them flipped, of three flipped
    assert top_k_precision_recall(scores, flipped, 3) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert top_k_precision_recall(scores, flipped, 1) == (1.0, pytest.approx(1 / 3))
    assert all(math.isnan(v) for v in top_k_precision_recall(scores, np.zeros(6, bool), 3))


def test_detection_metrics_are_absent_where_nothing_or_everything_is_flipped():
    scores = np.array([3.0, 1.0, 2.0, 0.5])
    assert detection_metrics(scores, np.zeros(4, bool)) == {}
    assert detection_metrics(scores, np.ones(4, bool)) == {}
    found = detection_metrics(scores, np.array([True, False, True, False]))
    assert found == {"auroc": 1.0, "precision": 1.0, "recall": 1.0}

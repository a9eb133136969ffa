"""Tests of the synthetic noise kinds, NoiseSpec validation and the realized transition."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import noise
from noise import KINDS, NoiseSpec, NoisyLabels, corrupt, realized_transition
from noise.cifar import CIFAR100_COARSE, cifar100_next_in_superclass
from noise.instance import instance_flip_probabilities
from noise.registry import register_kind
from noise.transition import largest_remainder

EYE = np.eye(10)
# Rows: keep 60 %, 20 % to c+1, 20 % to c+2; every quota is an integer on 100 samples per class.
NICE_MATRIX = 0.6 * EYE + 0.2 * np.roll(EYE, 1, axis=1) + 0.2 * np.roll(EYE, 2, axis=1)


def balanced(num_classes: int = 10, per_class: int = 100, seed: int = 0) -> np.ndarray:
    """Shuffled labels with exactly ``per_class`` samples of each class."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def unbalanced(num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Shuffled labels with 50 + 7c samples of class c (quotas are rarely integers)."""
    sizes = 50 + 7 * np.arange(num_classes)
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), sizes))


def features_for(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 100).normal(size=(labels.size, 16))


def half_up(rate: float, n: int) -> int:
    """round(rate * n) with halves up, in exact arithmetic."""
    return math.floor(Fraction(str(rate)) * n + Fraction(1, 2))


def four_sigma(n: int, p: float) -> float:
    """Four binomial standard deviations of a share over n trials."""
    return 4 * math.sqrt(p * (1 - p) / n)


# Every kind that needs no file: (spec, num_classes).
SYNTHETIC = {
    "none": (NoiseSpec("none", 0.4), 10),
    "symmetric": (NoiseSpec("symmetric", 0.3), 10),
    "uniform": (NoiseSpec("uniform", 0.3), 10),
    "pairflip": (NoiseSpec("pairflip", 0.3), 10),
    "asymmetric-cifar10": (NoiseSpec("asymmetric", 0.4, dataset="cifar10"), 10),
    "asymmetric-cifar100": (NoiseSpec("asymmetric", 0.4, dataset="cifar100"), 100),
    "matrix": (NoiseSpec("matrix", matrix=NICE_MATRIX), 10),
    "instance": (NoiseSpec("instance", 0.3), 10),
}
RANDOM = [name for name in SYNTHETIC if name != "none"]


def run(name: str, seed: int = 0, labels: np.ndarray | None = None) -> tuple[np.ndarray, NoisyLabels]:
    spec, k = SYNTHETIC[name]
    if labels is None:
        labels = balanced(k, 2000 // k)
    return labels, corrupt(labels, spec, num_classes=k, seed=seed, features=features_for(labels))


def test_kinds_lists_every_kind_in_order():
    assert KINDS == ("none", "symmetric", "uniform", "pairflip", "asymmetric", "matrix", "instance", "human")


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_result_contract(name):
    labels, res = run(name)
    before = labels.copy()
    k = SYNTHETIC[name][1]
    assert res.labels.dtype == np.int64 and res.labels.shape == labels.shape
    assert res.flipped.dtype == np.bool_
    np.testing.assert_array_equal(res.flipped, res.labels != labels)
    np.testing.assert_array_equal(res.clean, labels)
    np.testing.assert_array_equal(labels, before)  # the input is not modified
    assert res.transition.shape == (k, k)
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(res.transition, realized_transition(labels, res.labels, k))
    assert res.rate == pytest.approx(res.flipped.mean())
    assert ((res.labels >= 0) & (res.labels < k)).all()


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_same_seed_same_labels(name):
    labels, a = run(name, seed=7)
    _, b = run(name, seed=7, labels=labels)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("name", RANDOM)
def test_different_seeds_differ(name):
    labels, a = run(name, seed=1)
    _, b = run(name, seed=2, labels=labels)
    assert (a.labels != b.labels).any()


@pytest.mark.parametrize("name", [n for n in SYNTHETIC if n != "matrix"])
def test_rate_zero_is_identity(name):
    spec, k = SYNTHETIC[name]
    labels = balanced(k, 2000 // k)
    res = corrupt(
        labels, dataclasses.replace(spec, rate=0.0), num_classes=k, seed=3, features=features_for(labels)
    )
    np.testing.assert_array_equal(res.labels, labels)
    np.testing.assert_array_equal(res.transition, np.eye(k))
    assert res.rate == 0.0 and not res.flipped.any()


def test_identity_matrix_is_identity():
    labels = unbalanced()
    res = corrupt(labels, NoiseSpec("matrix", matrix=np.eye(10)), num_classes=10, seed=0)
    np.testing.assert_array_equal(res.labels, labels)


def test_corrupt_leaves_global_random_state_alone():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    for name in RANDOM:
        run(name, seed=5)
    np.testing.assert_array_equal(np.random.random(3), expected)


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.3, 0.45, 0.8, 1.0])
def test_exact_flip_count_per_class(kind, rate):
    labels = unbalanced()
    res = corrupt(labels, NoiseSpec(kind, rate), num_classes=10, seed=0)
    for c in range(10):
        n_c = int((labels == c).sum())
        assert res.flipped[labels == c].sum() == half_up(rate, n_c), f"class {c}"


def test_symmetric_spreads_flips_evenly_and_never_to_true_class():
    labels = balanced(per_class=100)
    res = corrupt(labels, NoiseSpec("symmetric", 0.3), num_classes=10, seed=0)
    assert res.rate == 0.3
    np.testing.assert_allclose(np.diag(res.transition), 0.7)
    counts = np.round(res.transition * 100).astype(int)
    off = counts[~np.eye(10, dtype=bool)]
    # 30 flips over 9 destinations: each gets 3 or 4 (largest remainder), none of them the true class.
    assert set(off.tolist()) <= {3, 4}
    np.testing.assert_array_equal(counts.sum(axis=1) - np.diag(counts), 30)


def test_symmetric_ties_are_broken_at_random():
    """30 flips over 9 destinations leave 3 extra flips; which classes get them depends on the seed."""
    labels = balanced(per_class=100)
    extra = set()
    for seed in range(5):
        t = corrupt(labels, NoiseSpec("symmetric", 0.3), num_classes=10, seed=seed).transition
        extra.add(tuple(np.flatnonzero(np.round(t[5] * 100) == 4)))
    assert len(extra) > 1


def test_pairflip_only_to_next_class():
    labels = balanced(per_class=100)
    res = corrupt(labels, NoiseSpec("pairflip", 0.45), num_classes=10, seed=0)
    allowed = EYE + np.roll(EYE, 1, axis=1)
    assert (res.transition[allowed == 0] == 0).all()
    np.testing.assert_allclose(np.diag(res.transition), 0.55)
    np.testing.assert_allclose(res.transition[np.arange(10), (np.arange(10) + 1) % 10], 0.45)
    assert res.rate == 0.45


def test_asymmetric_cifar10_only_the_listed_pairs():
    labels = balanced(per_class=100)
    res = corrupt(labels, NoiseSpec("asymmetric", 0.4, dataset="cifar10"), num_classes=10, seed=0)
    off = res.transition * (1 - EYE)
    pairs = {(int(i), int(j)) for i, j in np.argwhere(off > 0)}
    # truck->automobile, bird->airplane, deer->horse, cat<->dog
    assert pairs == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    for i, j in pairs:
        assert res.transition[i, j] == pytest.approx(0.4)
    assert res.rate == pytest.approx(0.2)  # half of the classes are mapped


def test_cifar100_superclass_table():
    coarse = np.array(CIFAR100_COARSE)
    assert coarse.shape == (100,)
    np.testing.assert_array_equal(np.bincount(coarse), np.full(20, 5))
    mapping = cifar100_next_in_superclass()
    assert sorted(mapping.values()) == list(range(100))  # a permutation
    for fine, nxt in mapping.items():
        assert nxt != fine and coarse[nxt] == coarse[fine]
        seen, cur = set(), fine
        while cur not in seen:
            seen.add(cur)
            cur = mapping[cur]
        assert len(seen) == 5  # one cycle through the whole superclass
        later = [f for f in range(fine + 1, 100) if coarse[f] == coarse[fine]]
        assert nxt == (later[0] if later else int(np.flatnonzero(coarse == coarse[fine])[0]))
    # aquatic mammals: beaver 4 -> dolphin 30 -> otter 55 -> seal 72 -> whale 95 -> beaver 4
    assert [mapping[f] for f in (4, 30, 55, 72, 95)] == [30, 55, 72, 95, 4]


def test_asymmetric_cifar100_stays_within_superclass():
    labels = balanced(100, per_class=20)
    res = corrupt(labels, NoiseSpec("asymmetric", 0.4, dataset="cifar100"), num_classes=100, seed=0)
    coarse = np.array(CIFAR100_COARSE)
    same = coarse[:, None] == coarse[None, :]
    assert (res.transition[~same] == 0).all()
    mapping = cifar100_next_in_superclass()
    for c in range(100):
        row = res.transition[c].copy()
        assert row[mapping[c]] == pytest.approx(0.4)
        row[[c, mapping[c]]] = 0
        assert (row == 0).all()
    assert res.rate == pytest.approx(0.4)


def test_matrix_realized_equals_given_when_quotas_are_integers():
    labels = balanced(per_class=100)
    res = corrupt(labels, NoiseSpec("matrix", matrix=NICE_MATRIX.tolist()), num_classes=10, seed=0)
    np.testing.assert_allclose(res.transition, NICE_MATRIX, atol=1e-12)
    assert res.rate == pytest.approx(0.4)


def test_matrix_counts_within_one_of_quota():
    rng = np.random.default_rng(0)
    m = rng.dirichlet(np.full(10, 0.5), size=10)
    labels = unbalanced()
    res = corrupt(labels, NoiseSpec("matrix", matrix=m), num_classes=10, seed=0)
    sizes = np.bincount(labels, minlength=10)[:, None]
    counts = res.transition * sizes
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert (np.abs(counts - m * sizes) < 1).all()
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0)


def test_largest_remainder_sums_and_stays_within_one():
    rng = np.random.default_rng(0)
    for total in [0, 1, 7, 30, 101]:
        quotas = rng.dirichlet(np.ones(9)) * total
        counts = largest_remainder(quotas, total, rng)
        assert counts.sum() == total
        assert (np.abs(counts - quotas) < 1).all()


def test_uniform_includes_true_class_within_binomial_bound():
    labels = balanced(per_class=1000)
    res = corrupt(labels, NoiseSpec("uniform", 0.6), num_classes=10, seed=0)
    # 6000 samples are relabelled; each lands on a wrong class with probability 9/10.
    picked, p = 6000, 0.9
    assert abs(res.flipped.sum() / picked - p) < four_sigma(picked, p)
    assert res.rate < 0.6


def test_uniform_rate_one_is_uniform_over_all_classes():
    labels = balanced(per_class=1000)
    res = corrupt(labels, NoiseSpec("uniform", 1.0), num_classes=10, seed=0)
    assert (np.abs(res.transition - 0.1) < four_sigma(1000, 0.1)).all()


def test_instance_rate_within_bound():
    labels = balanced(per_class=500)
    res = corrupt(labels, NoiseSpec("instance", 0.3), num_classes=10, seed=0, features=features_for(labels))
    assert abs(res.rate - 0.3) < four_sigma(labels.size, 0.5)


def test_instance_flip_probabilities():
    labels = balanced(per_class=500)
    feats = features_for(labels)
    for rate in [0.05, 0.4]:
        probs = instance_flip_probabilities(labels, feats, rate, 10, np.random.default_rng(0))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
        assert (probs >= 0).all()
        q = 1 - probs[np.arange(labels.size), labels]
        assert (q >= 0).all() and (q <= 1).all()
        if rate == 0.4:  # far from the truncation: mean rate, std 0.1
            assert abs(q.mean() - rate) < 4 * 0.1 / math.sqrt(labels.size)
            assert abs(q.std() - 0.1) < 0.01


def test_instance_noise_depends_on_the_image():
    """Identical images of one class flip to one class; different images to different classes."""
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(10, 5, 64)) * 50  # large logits: softmax is nearly one-hot
    labels = np.repeat(np.arange(10), 5 * 40)
    proto_id = np.tile(np.repeat(np.arange(5), 40), 10)
    feats = protos[labels, proto_id]
    res = corrupt(labels, NoiseSpec("instance", 0.5), num_classes=10, seed=0, features=feats)
    destinations = []
    for c in range(10):
        for p in range(5):
            dest = res.labels[res.flipped & (labels == c) & (proto_id == p)]
            assert dest.size > 5
            assert np.bincount(dest).max() / dest.size > 0.9  # class-conditional noise gives ~1/9
            destinations.append(int(np.bincount(dest).argmax()))
    assert len(set(destinations)) > 5


def test_seeds_give_independent_flips():
    labels = balanced(per_class=1000)
    spec = NoiseSpec("symmetric", 0.5)
    a = corrupt(labels, spec, num_classes=10, seed=0).flipped
    b = corrupt(labels, spec, num_classes=10, seed=1).flipped
    both = (a & b).mean()
    assert abs(both - 0.25) < four_sigma(labels.size, 0.25)


def test_realized_transition_empty_class_gets_diagonal():
    t = realized_transition(np.array([0, 0, 2]), np.array([0, 2, 2]), 4)
    np.testing.assert_array_equal(t[0], [0.5, 0, 0.5, 0])
    np.testing.assert_array_equal(t[1], [0, 1, 0, 0])
    np.testing.assert_array_equal(t[3], [0, 0, 0, 1])


def test_labels_accept_lists_and_small_ints():
    res = corrupt([0, 1, 2, 1], NoiseSpec("none"), num_classes=3, seed=0)
    assert res.labels.dtype == np.int64
    res = corrupt(np.array([0, 1, 2], dtype=np.uint8), NoiseSpec("pairflip", 1.0), num_classes=3, seed=0)
    np.testing.assert_array_equal(res.labels, [1, 2, 0])


def test_spec_is_frozen_hashable_and_normalised():
    a = NoiseSpec("matrix", matrix=NICE_MATRIX)
    b = NoiseSpec("matrix", matrix=NICE_MATRIX.tolist())
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.rate = 0.5  # type: ignore[misc]
    assert NoiseSpec("symmetric", 1).rate == 1.0


def test_importing_noise_does_not_import_torch():
    code = (
        "import sys, numpy as np, noise\n"
        "noise.corrupt(np.arange(10) % 2, noise.NoiseSpec('symmetric', 0.5), num_classes=2, seed=0)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_kind_rejects_a_duplicate_name():
    with pytest.raises(ValueError, match="'none' is registered twice"):
        register_kind("none")(lambda labels, spec, **_: labels)
    assert noise.KINDS.count("none") == 1


# ---- errors: each names the field, the value and what is allowed ----

ALL_KINDS = "none, symmetric, uniform, pairflip, asymmetric, matrix, instance, human"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "symmetric", "rate": 1.5}, r"noise\.rate must be in \[0, 1\], got 1\.5"),
        ({"kind": "symmetric", "rate": -0.1}, r"noise\.rate must be in \[0, 1\], got -0\.1"),
        ({"kind": "symmetric", "rate": float("nan")}, r"noise\.rate must be in \[0, 1\], got nan"),
        ({"kind": "symmetric", "rate": "0.3"}, r"noise\.rate must be a number in \[0, 1\], got '0\.3'"),
        ({"kind": "symmetric", "rate": True}, r"noise\.rate must be a number"),
        ({"kind": "symetric", "rate": 0.2}, rf"noise\.kind must be one of {ALL_KINDS}; got 'symetric' \(did you mean 'symmetric'\?\)"),
        ({"kind": "gaussian"}, rf"noise\.kind must be one of {ALL_KINDS}; got 'gaussian'$"),
        ({"kind": 3}, r"noise\.kind must be one of .*; got 3"),
        ({"kind": "asymmetric", "rate": 0.2}, r"noise\.dataset must be one of cifar10, cifar100 for kind 'asymmetric', got None"),
        ({"kind": "asymmetric", "rate": 0.2, "dataset": "mnist"}, r"noise\.dataset must be one of cifar10, cifar100 .*got 'mnist'"),
        ({"kind": "matrix"}, r"noise\.matrix is required for kind 'matrix', got None"),
        ({"kind": "matrix", "matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}, r"noise\.matrix must be a square K x K matrix .*got shape \(2, 3\)"),
        ({"kind": "matrix", "matrix": [[1.0, 0.0], [0.5]]}, r"noise\.matrix must be a square matrix of numbers"),
        ({"kind": "matrix", "matrix": [[1.1, -0.1], [0.0, 1.0]]}, r"noise\.matrix entries must be >= 0, got a negative entry -0\.1 at row 0, column 1"),
        ({"kind": "matrix", "matrix": [[1.0, 0.0], [0.3, 0.6]]}, r"noise\.matrix rows must sum to 1 .*got row 1 summing to 0\.9"),
        ({"kind": "matrix", "matrix": [[1.0, np.nan], [0.0, 1.0]]}, r"noise\.matrix must hold finite numbers"),
        ({"kind": "human"}, r"noise\.label_set must be one of aggre, worse, random1, random2, random3, noisy; got None"),
        ({"kind": "human", "label_set": "aggregate", "label_file": "x.pt"}, r"noise\.label_set must be one of aggre, worse, random1, random2, random3, noisy; got 'aggregate'"),
        ({"kind": "human", "label_set": "aggre"}, r"noise\.label_file is required for kind 'human'"),
    ],
)  # fmt: skip
def test_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSpec(**kwargs)


def test_matrix_row_sum_tolerance():
    NoiseSpec("matrix", matrix=[[1.0 - 1e-8, 1e-8 + 5e-7], [0.0, 1.0]])
    with pytest.raises(ValueError, match="row 0"):
        NoiseSpec("matrix", matrix=[[1.0, 2e-6], [0.0, 1.0]])


@pytest.mark.parametrize(
    ("spec", "k", "match"),
    [
        (NoiseSpec("matrix", matrix=np.eye(3)), 4, r"noise\.matrix must be 4 x 4 \(num_classes=4\), got 3 x 3"),
        (NoiseSpec("asymmetric", 0.2, dataset="cifar10"), 100, r"noise\.dataset='cifar10' needs num_classes=10, got 100"),
        (NoiseSpec("asymmetric", 0.2, dataset="cifar100"), 10, r"needs num_classes=100, got 10"),
        (NoiseSpec("human", label_set="noisy", label_file="x.pt"), 10, r"noise\.label_set 'noisy' has 100 classes, but num_classes=10"),
    ],
)  # fmt: skip
def test_spec_errors_that_need_num_classes(spec, k, match):
    labels = np.arange(k)
    with pytest.raises(ValueError, match=match):
        corrupt(labels, spec, num_classes=k, seed=0)
    with pytest.raises(ValueError, match=match):
        spec.validate(k)


def test_missing_label_file(tmp_path):
    path = tmp_path / "nope" / "CIFAR-10_human.pt"
    spec = NoiseSpec("human", label_set="aggre", label_file=path)  # the disk is checked by validate
    with pytest.raises(
        FileNotFoundError, match=r"noise\.label_file: no such file: .*nope.CIFAR-10_human\.pt"
    ):
        corrupt(np.arange(10), spec, num_classes=10, seed=0)
    with pytest.raises(FileNotFoundError, match="nope"):
        noise.load_human_labels(path, "aggre")


@pytest.mark.parametrize(
    ("labels", "k", "match"),
    [
        ([0, 10, 3], 10, r"labels must be in \[0, num_classes\) = \[0, 10\), got 10 at index 1 \(1 of 3 out of range\)"),
        ([0, -1], 10, r"got -1 at index 1"),
        (np.array([0.0, 1.0]), 10, r"labels must be integers \(class indices\), got dtype float64"),
        (np.array([True, False]), 10, r"labels must be integers .*got dtype bool"),
        (np.zeros((2, 2), dtype=int), 10, r"labels must be a 1-D array of class indices, got shape \(2, 2\)"),
        ([0, 1], 1, r"num_classes must be an integer >= 2, got 1"),
        ([0, 1], 2.0, r"num_classes must be an integer >= 2, got 2\.0"),
    ],
)  # fmt: skip
def test_label_errors(labels, k, match):
    with pytest.raises(ValueError, match=match):
        corrupt(labels, NoiseSpec("symmetric", 0.2), num_classes=k, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None])
def test_seed_errors(seed):
    with pytest.raises(ValueError, match=rf"seed must be a non-negative integer, got {seed!r}"):
        corrupt([0, 1], NoiseSpec("symmetric", 0.2), num_classes=2, seed=seed)


def test_instance_needs_features():
    labels = balanced(per_class=10)
    with pytest.raises(ValueError, match=r"noise kind 'instance' needs features: .*got None"):
        corrupt(labels, NoiseSpec("instance", 0.2), num_classes=10, seed=0)
    with pytest.raises(
        ValueError, match=r"features must have one row per label: 100 labels but features of shape \(99, 4\)"
    ):
        corrupt(labels, NoiseSpec("instance", 0.2), num_classes=10, seed=0, features=np.zeros((99, 4)))
    bad = np.zeros((100, 4))
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="features must be finite"):
        corrupt(labels, NoiseSpec("instance", 0.2), num_classes=10, seed=0, features=bad)


def test_spec_must_be_a_noise_spec():
    with pytest.raises(TypeError, match="spec must be a noise.NoiseSpec, got dict"):
        corrupt([0, 1], {"kind": "none"}, num_classes=2, seed=0)  # type: ignore[arg-type]


def test_realized_transition_length_mismatch():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        realized_transition([0, 1, 1], [0, 1], 2)

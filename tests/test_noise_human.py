"""Tests of the human (CIFAR-N) noise kind: a small file written here, and the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noise import NoiseSpec, NoisyLabels, corrupt, load_human_labels
from noise.cifar import CIFAR100_COARSE
from noise.safeload import torch_load

torch = pytest.importorskip("torch")


@pytest.fixture
def tiny_cifar10n(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A CIFAR-10N-shaped file with 200 labels; aggre flips every 10th label to the next class."""
    clean = np.random.default_rng(0).integers(0, 10, size=200)
    aggre = clean.copy()
    aggre[::10] = (aggre[::10] + 1) % 10
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": clean, "aggre_label": aggre, "worse_label": clean.copy()}, path)
    return path, clean, aggre


def test_human_kind_returns_the_file_labels(tiny_cifar10n):
    path, clean, aggre = tiny_cifar10n
    res = corrupt(clean, NoiseSpec("human", label_set="aggre", label_file=str(path)), num_classes=10, seed=0)
    np.testing.assert_array_equal(res.labels, aggre)
    assert res.rate == pytest.approx(0.1)
    np.testing.assert_array_equal(res.flipped, aggre != clean)
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0)


def test_human_ignores_rate_and_seed(tiny_cifar10n):
    path, clean, _ = tiny_cifar10n
    a = corrupt(clean, NoiseSpec("human", 0.0, label_set="aggre", label_file=path), num_classes=10, seed=0)
    b = corrupt(clean, NoiseSpec("human", 0.7, label_set="aggre", label_file=path), num_classes=10, seed=9)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_load_human_labels_for_a_subset(tiny_cifar10n):
    path, clean, aggre = tiny_cifar10n
    noisy, file_clean = load_human_labels(path, "aggre")
    assert noisy.dtype == np.int64 and file_clean.dtype == np.int64
    np.testing.assert_array_equal(file_clean, clean)
    idx = np.arange(0, 200, 5)  # every 10th label is flipped, so half of these are
    res = NoisyLabels.from_pair(file_clean[idx], noisy[idx], 10)
    assert res.rate == pytest.approx(0.5)


def test_human_length_mismatch(tiny_cifar10n):
    path, clean, _ = tiny_cifar10n
    spec = NoiseSpec("human", label_set="aggre", label_file=path)
    with pytest.raises(ValueError, match=r"holds 200 labels but 100 were given; .*load_human_labels"):
        corrupt(clean[:100], spec, num_classes=10, seed=0)


def test_human_misaligned_order(tiny_cifar10n):
    path, clean, _ = tiny_cifar10n
    shuffled = np.random.default_rng(1).permutation(clean)
    disagree = int((shuffled != clean).sum())
    spec = NoiseSpec("human", label_set="aggre", label_file=path)
    with pytest.raises(ValueError, match=rf"disagree with clean_label .* at {disagree} of 200 positions"):
        corrupt(shuffled, spec, num_classes=10, seed=0)


def test_human_label_set_missing_from_file(tiny_cifar10n):
    path, _, _ = tiny_cifar10n
    with pytest.raises(
        ValueError, match=r"noise\.label_set 'random1' needs keys 'clean_label' and 'random_label1'"
    ):
        load_human_labels(path, "random1")
    with pytest.raises(ValueError, match=r"noise\.label_set must be one of aggre, worse, .*; got 'best'"):
        load_human_labels(path, "best")


# ---- the official files in ../shared/data/cifar-n ----

CIFAR10N_RATES = {"aggre": 9.01, "random1": 17.23, "random2": 18.12, "random3": 17.64, "worse": 40.21}


def cifar_n_file(shared_dir: Path, name: str) -> Path:
    path = shared_dir / "data" / "cifar-n" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def cifar10n(shared_dir) -> tuple[Path, np.ndarray]:
    path = cifar_n_file(shared_dir, "CIFAR-10_human.pt")
    return path, load_human_labels(path, "aggre")[1]


@pytest.mark.parametrize(("label_set", "percent"), list(CIFAR10N_RATES.items()))
def test_cifar10n_realized_rates(cifar10n, label_set, percent):
    path, clean = cifar10n
    res = corrupt(clean, NoiseSpec("human", label_set=label_set, label_file=path), num_classes=10, seed=0)
    assert round(res.rate * 100, 2) == percent
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0)
    assert (np.diag(res.transition) < 1).all()


def test_cifar10n_wrong_length_and_order(cifar10n):
    path, clean = cifar10n
    spec = NoiseSpec("human", label_set="worse", label_file=path)
    with pytest.raises(ValueError, match=r"holds 50000 labels but 49999 were given"):
        corrupt(clean[1:], spec, num_classes=10, seed=0)
    reversed_ = clean[::-1].copy()
    n = int((reversed_ != clean).sum())
    with pytest.raises(ValueError, match=rf"at {n} of 50000 positions"):
        corrupt(reversed_, spec, num_classes=10, seed=0)


def test_cifar100n_realized_rate_and_superclasses(shared_dir):
    path = cifar_n_file(shared_dir, "CIFAR-100_human.pt")
    noisy, clean = load_human_labels(path, "noisy")
    res = corrupt(clean, NoiseSpec("human", label_set="noisy", label_file=path), num_classes=100, seed=0)
    assert round(res.rate * 100, 2) == 40.20
    np.testing.assert_array_equal(res.labels, noisy)
    # The superclass table used by the asymmetric kind agrees with the file's coarse labels.
    coarse = np.asarray(torch_load(path, holds="a CIFAR-N label file", arrays=True)["clean_coarse_label"])
    np.testing.assert_array_equal(np.asarray(CIFAR100_COARSE)[clean], coarse)

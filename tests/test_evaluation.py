"""What the engine measures besides accuracy: the noisy held-out split, calibration and noise detection,
on constructed models whose answers are known, and through a real trial."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import noise
from harness import config as C
from harness.data import ImageData, load_dataset
from harness.data.labels import corrupt_labels, val_noise_seed
from harness.data.loaders import TensorLoader, make_loaders
from harness.train.device import Place
from harness.train.evaluate import detect_noise, evaluate
from harness.train.scores import auroc

CPU = Place(torch.device("cpu"))

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the held-out split's noise ------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rate"), [("symmetric", 0.4), ("pairflip", 0.3), ("uniform", 0.5)])
def test_val_labels_carry_the_trials_noise_drawn_apart_from_training(kind, rate):
    data = load_dataset("digits", val_fraction=0.2)
    spec = C.build_config({}, {"noise.kind": kind, "noise.rate": rate}).noise
    train = corrupt_labels(data, spec, seed=3)
    val = corrupt_labels(data, spec, seed=val_noise_seed(3), split="val")
    # disjoint images: the split is by position in the training order
    assert not set(data.val_indices) & set(data.train_indices)
    assert len(data.val_indices) + len(data.train_indices) == 1347
    # the same spec as training, on the held-out labels, with a seed of its own
    expected = noise.corrupt(data.val_y, noise.NoiseSpec(kind, rate), num_classes=10, seed=val_noise_seed(3))
    np.testing.assert_array_equal(val.labels, expected.labels)
    np.testing.assert_array_equal(val.clean, data.val_y)
    assert val_noise_seed(3) != 3 and val_noise_seed(3) != val_noise_seed(4)
    # exact flip counts per class, so both realized rates are close to the asked one (uniform noise
    # relabels to any of the 10 classes, the true one included: 9/10 of its rate flips)
    flips = rate * 0.9 if kind == "uniform" else rate
    assert abs(train.rate - flips) < 0.02 and abs(val.rate - flips) < 0.05, (train.rate, val.rate)
    if kind == "pairflip":  # class i -> i + 1 only, as in training
        flipped = val.flipped
        assert np.array_equal(val.labels[flipped], (val.clean[flipped] + 1) % 10)
    # the training draw does not depend on the split's: the training labels are those without it
    alone = noise.corrupt(data.train_y, noise.NoiseSpec(kind, rate), num_classes=10, seed=3)
    np.testing.assert_array_equal(train.labels, alone.labels)


def test_human_val_labels_are_the_annotators_labels_of_the_held_out_images(tmp_path):
    clean = np.random.default_rng(0).integers(0, 10, size=200)
    aggre = clean.copy()
    aggre[::3] = (aggre[::3] + 3) % 10  # a third flipped, in both splits
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": clean, "aggre_label": aggre}, path)
    # a CIFAR-10-shaped data set whose training order is the file's: 150 train, 50 held out
    val_idx = np.arange(1, 200, 4)
    train_idx = np.setdiff1d(np.arange(200), val_idx)
    data = ImageData(
        **dict(
            name="cifar10", num_classes=10, classes=[str(c) for c in range(10)], channels=3, image_size=32
        ),
        **dict(mean=(0.5,) * 3, std=(0.25,) * 3, pad=4, flip=True, in_memory=True),
        train_y=clean[train_idx],
        train_indices=train_idx,
        test_y=clean[:10],
        val_y=clean[val_idx],
        val_indices=val_idx,
    )
    spec = C.NoiseConfig(kind="human", label_set="aggre", label_file=str(path))
    val = corrupt_labels(data, spec, seed=val_noise_seed(0), split="val")
    np.testing.assert_array_equal(val.labels, aggre[val_idx])
    np.testing.assert_array_equal(val.flipped, aggre[val_idx] != clean[val_idx])
    assert val.rate == pytest.approx(np.mean(aggre[val_idx] != clean[val_idx])) and val.rate > 0
    train = corrupt_labels(data, spec, seed=0)
    np.testing.assert_array_equal(train.labels, aggre[train_idx])
    data.val_y = (data.val_y + 1) % 10  # images out of the file's order
    with pytest.raises(ValueError, match="disagree with cifar10's held-out labels"):
        corrupt_labels(data, spec, seed=0, split="val")


def test_make_loaders_gives_the_val_loader_the_noisy_labels_and_keeps_the_true_ones():
    data = load_dataset("digits", val_fraction=0.1)
    noisy_val = (data.val_y + 1) % 10
    train, evals = make_loaders(
        data, data.train_y, batch_size=64, augment=False, device="cpu", seed=0, val_labels=noisy_val
    )
    assert evals["val"].labels.tolist() == noisy_val.tolist()
    assert evals["val"].clean_labels.tolist() == data.val_y.tolist()
    assert evals["val"].labels_noisy and train.labels_noisy and not evals["test"].labels_noisy
    _, plain = make_loaders(data, data.train_y, batch_size=64, augment=False, device="cpu", seed=0)
    assert not plain["val"].labels_noisy
    whole = load_dataset("digits")
    with pytest.raises(ValueError, match="no validation split"):
        make_loaders(
            whole, whole.train_y, batch_size=64, augment=False, device="cpu", seed=0, val_labels=noisy_val
        )


# --- evaluate and detect_noise on a model whose answers are known ----------------------------------


class Oracle(nn.Module):
    """A "network" that reads the true class written into pixel (0, 0) and predicts it with probability
    `p`, spreading 1 - p over the other classes; head h > 0 predicts class 0 with certainty."""

    def __init__(self, num_classes: int = 4, heads: int = 1, p: float = 0.7):
        super().__init__()
        self.heads, self.num_classes, self.p = heads, num_classes, p
        self.unused = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        k = self.num_classes
        true = torch.round(x[:, 0, 0, 0] * 255).long()  # mean 0, std 1: x = pixel / 255
        probs = torch.full((len(x), k), (1 - self.p) / (k - 1))
        probs[torch.arange(len(x)), true] = self.p
        zero = torch.full((len(x), k), 1e-6)
        zero[:, 0] = 1.0
        return [probs.log()] + [(zero / zero.sum(1, keepdim=True)).log()] * (self.heads - 1)


def oracle_loader(clean: np.ndarray, labels: np.ndarray, **kwargs) -> TensorLoader:
    images = torch.zeros(len(clean), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.as_tensor(clean, dtype=torch.uint8)
    options = dict(augment=False, pad=0, flip=False, shuffle=False, drop_last=False)
    return TensorLoader(
        images, labels, clean, batch_size=7, mean=[0.0], std=[1.0], device="cpu", **options | kwargs
    )


def test_evaluate_scores_accuracy_against_both_label_sets_and_calibration():
    clean = np.arange(40) % 4
    noisy = clean.copy()
    noisy[:10] = (noisy[:10] + 1) % 4  # 10 of 40 held-out labels flipped
    loader = oracle_loader(clean, noisy)
    loader.labels_noisy = True
    m = evaluate(Oracle(heads=2, p=0.7), loader, CPU, kept_head=0, amp=False, prefix="val")
    assert m["val/acc"] == 1.0 and m["val/acc_noisy"] == 0.75
    # always right at confidence 0.7: ECE = |1 - 0.7|; NLL = -ln 0.7
    assert m["val/ece"] == pytest.approx(0.3, abs=1e-6)
    assert m["val/nll"] == pytest.approx(-math.log(0.7), abs=1e-6)
    # ensemble of the oracle and "always class 0" (probability ~1): mean softmax; class 0's
    # probability is (0.7 + 1) / 2 on class-0 images, else (0.1 + 1e-6-ish) / 2 < the true class's 0.35
    assert m["val/acc_ensemble"] == pytest.approx(0.25)  # it predicts class 0 for every image
    p_true = np.where(clean == 0, (0.7 + 1) / 2, (0.7 + 1e-6 / (1 + 3e-6)) / 2)
    assert m["val/nll_ensemble"] == pytest.approx(-np.log(p_true).mean(), rel=1e-4)
    assert m["val/acc_head1"] == 0.25
    loader.labels_noisy = False  # the test set: no noisy accuracy, it would repeat test/acc
    assert "test/acc_noisy" not in evaluate(Oracle(), loader, CPU, kept_head=0, amp=False)


@pytest.mark.parametrize("heads", [1, 2])
def test_detect_noise_finds_every_flipped_label_of_a_model_that_knows_the_truth(heads):
    clean = np.arange(50) % 4
    noisy = clean.copy()
    noisy[::5] = (noisy[::5] + 2) % 4  # 10 flipped
    m = detect_noise(Oracle(heads=heads), oracle_loader(clean, noisy), CPU, kept_head=0, amp=False)
    assert m["train/detect_auroc"] == 1.0
    assert m["train/detect_precision"] == 1.0 and m["train/detect_recall"] == 1.0
    if heads == 1:
        assert not any(k.endswith("_consensus") for k in m)  # the same ranking as the kept head's
    else:
        # consensus of the oracle (0.7 on the true class, 0.1 elsewhere) and an always-class-0 head:
        # a flipped label 0 (on a class-2 image) gets (0.1 + 1) / 2 and looks cleaner than a true label
        # of another class (0.7 / 2): 0.85 = the share of (flipped, clean) pairs ranked right, by hand
        p0 = np.where(noisy == clean, 0.7, 0.1)
        p1 = np.where(noisy == 0, 1.0, 1e-6) / (1 + 3e-6)
        expected = auroc(1 - (p0 + p1) / 2, noisy != clean)
        assert expected == pytest.approx(0.85)
        assert m["train/detect_auroc_consensus"] == pytest.approx(expected)
    # nothing flipped (the loader's labels are its clean labels): undefined, so nothing is logged
    assert detect_noise(Oracle(heads=heads), oracle_loader(clean, clean), CPU, kept_head=0, amp=False) == {}


def test_detect_noise_covers_every_sample_once_of_a_shuffled_augmented_train_loader():
    clean = np.arange(30) % 4
    noisy = clean.copy()
    noisy[:6] = (noisy[:6] + 1) % 4
    train = oracle_loader(clean, noisy, shuffle=True, drop_last=True, augment=True, flip=True)
    view = train.unaugmented()
    assert (view.shuffle, view.drop_last, view.augment) == (False, False, False)
    assert (train.shuffle, train.drop_last, train.augment) == (True, True, True)  # untouched
    assert sorted(int(i) for b in view for i in b.index) == list(range(30))
    assert view.images is train.images  # shared, not copied
    m = detect_noise(Oracle(), view, CPU, kept_head=0, amp=False)
    assert m["train/detect_auroc"] == 1.0


def test_an_image_folder_train_loader_scores_unaugmented_with_the_evaluation_transform(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 5), ("val", 2)):
        for c, color in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(per_class):
                px = np.clip(np.array(color) + rng.integers(-20, 20, (24, 30, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(tmp_path / split / c / f"{k}.png")
    data = load_dataset("imagefolder", root=tmp_path, image_size=16)
    noisy = data.train_y.copy()
    noisy[:3] = 1 - noisy[:3]
    train, _ = make_loaders(data, noisy, batch_size=4, augment=True, device="cpu", seed=1, num_workers=0)
    view = train.unaugmented()
    assert (view.augment, view.shuffle, view.drop_last, view.labels_noisy) == (False, False, False, True)
    batches = list(view)
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(10))  # all, in order
    assert torch.equal(torch.cat([b.y for b in batches]), torch.as_tensor(noisy))
    # the evaluation transform (resize, center crop): what a test-style loader of the files gives
    plain, _ = make_loaders(data, noisy, batch_size=4, augment=False, device="cpu", seed=1, num_workers=0)
    plain.shuffle, plain.drop_last = False, False
    assert torch.equal(torch.cat([b.x for b in batches]), torch.cat([b.x for b in plain]))


# --- through a trial ------------------------------------------------------------------------------


QUICK = {"optim.epochs": 2, "optim.batch_size": 64, "optim.lr": 0.05, "run.device": "cpu"}


def test_a_trial_with_a_held_out_split_logs_noisy_validation_calibration_and_detection(alone, tmp_path):
    epochs = []
    cfg = C.build_config(
        {},
        {
            **QUICK,
            "data.val_fraction": 0.2,
            "noise.kind": "symmetric",
            "noise.rate": 0.4,
            "collab.topology": "simple",
            "collab.heads": 2,
        },
    )
    final = alone(cfg, tmp_path, lambda e, m, _: epochs.append(dict(m)))
    for m in epochs:
        for key in (
            "val/acc",
            "val/acc_noisy",
            "test/ece",
            "test/nll",
            "test/ece_ensemble",
            "test/nll_ensemble",
        ):
            assert key in m and math.isfinite(m[key]), key
        assert 0 <= m["test/ece"] <= 1 and m["test/nll"] > 0
    assert abs(epochs[0]["noise/val_realized_rate"] - 0.4) < 0.05
    # detection once, at the end; a network that has learned something ranks flipped labels higher
    assert not any(k.startswith("train/detect") for k in epochs[0])
    for key in ("train/detect_auroc", "train/detect_precision", "train/detect_auroc_consensus"):
        assert 0 <= final[key] <= 1, key
    assert final["train/detect_auroc"] > 0.6
    assert final["train/detect_precision"] == final["train/detect_recall"]
    written = json.loads((tmp_path / "checkpoint" / "artifacts" / "metrics.json").read_text())
    assert written["train/detect_auroc"] == final["train/detect_auroc"]


def test_without_noise_detection_is_not_logged_and_without_a_split_nothing_of_val(alone, tmp_path):
    final = alone(C.build_config({}, {**QUICK, "optim.epochs": 1}), tmp_path)
    assert not any(k.startswith(("train/detect", "val/")) for k in final), sorted(final)
    assert "noise/val_realized_rate" not in final and "test/ece" in final

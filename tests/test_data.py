"""Datasets: digits, CIFAR-10 (real images), CIFAR-100 (files in the official format), imagefolder, synthetic."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import ImageData, load_dataset
from harness.data.datasets import first_per_class, stratified_holdout

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_CLASS = 100  # of conftest's cifar10_root, with a fifth as many test images
TEST_PER_CLASS = TRAIN_PER_CLASS // 5


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


# --- digits ---------------------------------------------------------------------------------------


def test_digits_shapes_and_range():
    d = load_dataset("digits")
    assert isinstance(d, ImageData) and d.in_memory
    assert d.num_classes == 10 and d.channels == 1 and d.image_size == 8
    assert d.train_x.shape == (1347, 1, 8, 8) and d.test_x.shape == (450, 1, 8, 8)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == np.int64
    assert int(d.train_x.max()) == 255 and int(d.train_x.min()) == 0
    assert set(np.unique(d.train_y)) == set(range(10)) and set(np.unique(d.test_y)) == set(range(10))
    assert d.pad == 1 and d.flip is False
    assert np.array_equal(d.train_indices, np.arange(1347))
    # stratified: every class is ~25 % test
    counts = np.bincount(d.test_y, minlength=10) / (
        np.bincount(d.test_y, minlength=10) + np.bincount(d.train_y)
    )
    assert np.all(np.abs(counts - 0.25) < 0.02)
    # mean/std describe the training images
    f = d.train_x.double() / 255
    assert abs(f.mean().item() - d.mean[0]) < 1e-6 and abs(f.std().item() - d.std[0]) < 1e-4


def test_digits_test_set_fixed_across_seeds_and_val_split_follows_seed():
    a = load_dataset("digits", seed=0, val_fraction=0.2)
    b = load_dataset("digits", seed=1, val_fraction=0.2)
    assert torch.equal(a.test_x, b.test_x) and np.array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.val_indices, b.val_indices)
    # same seed -> same split
    c = load_dataset("digits", seed=0, val_fraction=0.2)
    assert np.array_equal(a.val_indices, c.val_indices)


def test_digits_are_scikit_learns_digits_and_split_read_without_importing_it(monkeypatch):
    """The images, labels and fixed split that load_digits and train_test_split give, in the same
    layout (the channel axis a view of stride 1: the convolutions' summation order follows it), read
    with scikit-learn unimportable."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from harness.data.digits import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    train_pos, test_pos = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    train_pos, test_pos = np.sort(train_pos), np.sort(test_pos)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of it raises ImportError
    d = load_dataset("digits")
    for ours, theirs in ((d.train_x, images[train_pos]), (d.test_x, images[test_pos])):
        theirs = torch.from_numpy(theirs)
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
    assert np.array_equal(d.train_y, y[train_pos]) and np.array_equal(d.test_y, y[test_pos])


# --- CIFAR-10 on real images ------------------------------------------------------------------------


@pytest.mark.slow
def test_cifar10_loads_real_images(cifar10_root):
    d = load_dataset("cifar10", root=cifar10_root)
    assert d.classes == CIFAR10_CLASSES and d.num_classes == 10
    assert d.train_x.shape == (10 * TRAIN_PER_CLASS, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (10 * TEST_PER_CLASS, 3, 32, 32)
    assert np.array_equal(np.bincount(d.train_y), np.full(10, TRAIN_PER_CLASS))
    assert np.array_equal(d.test_y, np.repeat(np.arange(10), TEST_PER_CLASS))
    assert (d.pad, d.flip, d.image_size) == (4, True, 32)
    # real photographs: varied content, not constant or noise-free
    assert d.train_x.float().std() > 30
    # labels read from the files, in file order (the pickle carries the original CIFAR-10 order)
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    n1 = len(first[b"labels"])
    assert np.array_equal(d.train_y[:n1], first[b"labels"])
    assert np.array_equal(d.train_x[:n1].reshape(n1, -1).numpy(), first[b"data"])


@pytest.mark.slow
def test_cifar10_root_may_be_the_batches_folder(cifar10_root):
    a = load_dataset("cifar10", root=cifar10_root)
    b = load_dataset("cifar10", root=cifar10_root / "cifar-10-batches-py")
    assert torch.equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)


@pytest.mark.slow
def test_cifar10_train_subset_and_val_fraction(cifar10_root):
    full = load_dataset("cifar10", root=cifar10_root)
    d = load_dataset("cifar10", root=cifar10_root, train_subset=5)
    assert d.train_x.shape == (50, 3, 32, 32)
    assert np.array_equal(np.bincount(d.train_y), np.full(10, 5))
    # the first 5 of each class, in order, at their official positions
    assert np.all(np.diff(d.train_indices) > 0)
    assert np.array_equal(d.train_indices, first_per_class(full.train_y, 5))
    assert torch.equal(d.train_x, full.train_x[torch.from_numpy(d.train_indices)])
    assert np.array_equal(d.train_y, full.train_y[d.train_indices])
    assert torch.equal(d.test_x, full.test_x)

    v = load_dataset("cifar10", root=cifar10_root, val_fraction=0.25, seed=3)
    assert np.array_equal(np.bincount(v.val_y), np.full(10, 25))  # stratified: 25 % of 100 per class
    assert np.array_equal(np.bincount(v.train_y), np.full(10, 75))
    assert len(np.intersect1d(v.train_indices, v.val_indices)) == 0
    assert np.array_equal(
        np.sort(np.concatenate([v.train_indices, v.val_indices])), np.arange(10 * TRAIN_PER_CLASS)
    )
    assert torch.equal(v.val_x, full.train_x[torch.from_numpy(v.val_indices)])
    assert np.array_equal(v.val_y, full.train_y[v.val_indices])


# --- CIFAR-100 in the official format ---------------------------------------------------------------


def _fake_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    fine = rng.integers(0, 100, n_train)
    data = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    _write_pickle(
        folder / "train",
        {
            b"data": data,
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"filenames": [],
        },
    )
    tfine = rng.integers(0, 100, n_test)
    _write_pickle(
        folder / "test",
        {
            b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
            b"fine_labels": tfine.tolist(),
            b"coarse_labels": (tfine // 5).tolist(),
        },
    )
    _write_pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
        },
    )
    return data, fine


def test_cifar100_official_format(tmp_path):
    data, fine = _fake_cifar100(tmp_path)
    d = load_dataset("cifar100", root=tmp_path)
    assert d.num_classes == 100 and d.classes[:2] == ["c00", "c01"] and len(d.classes) == 100
    assert d.train_x.shape == (300, 3, 32, 32) and d.test_x.shape == (100, 3, 32, 32)
    assert np.array_equal(d.train_y, fine)
    # channel-planar rows: the first 1024 values are the red plane
    assert np.array_equal(d.train_x[7, 0].numpy().ravel(), data[7, :1024])
    assert np.array_equal(d.train_x[7, 2].numpy().ravel(), data[7, 2048:])


# --- imagefolder ------------------------------------------------------------------------------------


def _write_tree(root: Path, split: str, classes, per_class: int, size=(20, 16)) -> None:
    from PIL import Image

    for c in classes:
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = Image.new("RGB", size, color=(10 * k, 100, 200))
            img.save(d / f"{k:03d}.{'png' if k % 2 else 'jpg'}")


def test_imagefolder_lists_files(tmp_path):
    _write_tree(tmp_path, "train", ["dog", "cat", "emu"], 4)
    _write_tree(tmp_path, "val", ["cat", "dog"], 2)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_dataset("imagefolder", root=tmp_path, image_size=32)
    assert not d.in_memory and d.train_x is None
    assert d.classes == ["cat", "dog", "emu"] and d.num_classes == 3 and d.image_size == 32
    assert len(d.train_files) == 12 and len(d.test_files) == 4
    assert all(Path(p).suffix in (".png", ".jpg") for p, _ in d.train_files)
    assert np.array_equal(d.train_y, [y for _, y in d.train_files])
    assert [Path(p).parent.name for p, y in d.test_files] == [d.classes[y] for _, y in d.test_files]
    v = load_dataset("imagefolder", root=tmp_path, val_fraction=0.5, train_subset=2)
    assert (
        len(v.val_files) == 3 and len(v.train_files) == 3 and np.array_equal(np.bincount(v.val_y), [1, 1, 1])
    )


def test_imagefolder_unknown_eval_class(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog"], 1)
    _write_tree(tmp_path, "test", ["cow"], 1)
    with pytest.raises(ValueError, match="cow"):
        load_dataset("imagefolder", root=tmp_path)


def test_data_image_size_is_a_config_key_that_imagefolder_trials_train_at(
    alone, tmp_path, monkeypatch, capsys
):
    """`data.image_size` (e.g. a folder of 64x64 images at its own size): a positive integer, for the
    data sets that can choose their size (imagefolder, synthetic); digits and CIFAR refuse it. A trial
    hands it to the data set, and the ImageFolder loaders cut their crops at that size."""
    from harness import cli
    from harness import config as C
    from harness.run import trial

    _write_tree(tmp_path / "tree", "train", ["cat", "dog"], 4, size=(40, 30))
    _write_tree(tmp_path / "tree", "test", ["cat", "dog"], 2, size=(40, 30))
    base = {"data": {"name": "imagefolder", "root": str(tmp_path / "tree"), "num_workers": 0}}
    assert C.build_config(base).data.image_size is None, "null: the data set's own size (224)"
    assert C.build_config(base, C.parse_overrides(["data.image_size=24"])).data.image_size == 24
    assert C.build_config(None, {"data.name": "synthetic", "data.image_size": 16}).data.image_size == 16
    for value, message in [
        (0, "must be a positive integer (pixels) or null, got 0"),
        (64.5, "must be int or null, got float 64.5"),
        ("64px", "must be int or null, got str '64px'"),
    ]:
        with pytest.raises(C.ConfigError) as info:
            C.build_config(base, {"data.image_size": value})
        assert [tuple(p) for p in info.value.problems] == [("data.image_size", message)]
    with pytest.raises(C.ConfigError) as info:
        C.build_config(None, {"data.name": "digits", "data.image_size": 64})
    assert [tuple(p) for p in info.value.problems] == [
        (
            "data.image_size",
            "digits images keep their own size (they are not resized); "
            "image_size applies to imagefolder/synthetic only: leave it null",
        )
    ]
    out = tmp_path / "refused"
    assert cli.main(["train", "--set", "data.image_size=64", "--out", str(out), "--no-mlflow"]) == 2
    assert "data.image_size: digits images keep their own size" in capsys.readouterr().err
    assert not out.exists()

    made = []  # the loaders the trial trains and tests with (the real ones, looked at on the way)

    def make_loaders(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    real = trial.make_loaders
    monkeypatch.setattr(trial, "make_loaders", make_loaders)
    cfg = C.build_config(
        base,
        {"data.image_size": 24, "optim.epochs": 1, "optim.batch_size": 4, "run.device": "cpu"},
    )
    metrics = alone(cfg, tmp_path / "run")
    (train, evals) = made[0]
    assert train.image_size == 24 and evals["test"].image_size == 24
    assert next(iter(evals["test"])).x.shape == (4, 3, 24, 24)
    assert 0.0 <= metrics["test/acc"] <= 1.0


# --- synthetic --------------------------------------------------------------------------------------


def test_synthetic_deterministic_and_learnable():
    a = load_dataset("synthetic", seed=0, num_classes=4, image_size=16, train_per_class=50, test_per_class=10)
    b = load_dataset("synthetic", seed=7, num_classes=4, image_size=16, train_per_class=50, test_per_class=10)
    assert a.train_x.shape == (200, 3, 16, 16) and a.test_x.shape == (40, 3, 16, 16)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    assert np.array_equal(np.bincount(a.train_y), np.full(4, 50))
    # nearest class mean (estimated on train) classifies the test set well: the classes are learnable
    x = a.train_x.float().flatten(1)
    means = torch.stack([x[torch.from_numpy(a.train_y == k)].mean(0) for k in range(4)])
    pred = torch.cdist(a.test_x.float().flatten(1), means).argmin(1).numpy()
    assert (pred == a.test_y).mean() > 0.9
    gray = load_dataset("synthetic", channels=1, num_classes=3)
    assert gray.train_x.shape == (300, 1, 32, 32) and len(gray.mean) == 1


# --- helpers and errors -----------------------------------------------------------------------------


def test_first_per_class_and_holdout():
    y = np.array([2, 0, 2, 1, 0, 2, 0, 1])
    assert np.array_equal(first_per_class(y, 2), [0, 1, 2, 3, 4, 7])
    mask = stratified_holdout(np.repeat(np.arange(3), 10), 0.3, seed=0)
    assert np.array_equal(mask.reshape(3, 10).sum(1), [3, 3, 3])


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="cifar10.*cifar100.*imagefolder.*synthetic"):
        load_dataset("cifar11")


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="train_subset"):
        load_dataset("digits", train_subset=0)
    with pytest.raises(ValueError, match="num_class"):
        load_dataset("digits", num_class=3)


def test_missing_cifar_names_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg and "download" in msg
    # present folder, one file missing: that file is named
    _fake_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cifar-100-python" / "test")):
        load_dataset("cifar100", root=tmp_path)


def test_missing_imagefolder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        load_dataset("imagefolder", root=tmp_path)


def test_malformed_pickles_raise_value_error(tmp_path):
    _fake_cifar100(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    _write_pickle(train, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})  # wrong key
    with pytest.raises(ValueError, match=f"{train}.*fine_labels"):
        load_dataset("cifar100", root=tmp_path)
    _write_pickle(
        train, {b"data": np.zeros((4, 1024), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    )  # wrong shape
    with pytest.raises(ValueError, match=f"{train}.*3072"):
        load_dataset("cifar100", root=tmp_path)
    train.write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match=str(train)):
        load_dataset("cifar100", root=tmp_path)


def test_a_dataset_registered_after_import_is_accepted_by_config_and_loads(monkeypatch):
    from harness import config as C
    from harness import data as D

    tiny = D.DATASETS["synthetic"].load(
        None, download=False, holdout=False, train_per_class=3, test_per_class=2
    )
    monkeypatch.setitem(D.DATASETS, "tiny", D.Dataset("tiny", lambda root, **_: tiny))
    assert C.build_config({"data": {"name": "tiny"}}).data.name == "tiny"
    assert load_dataset("tiny").num_train == tiny.num_train


def test_data_rules_live_in_one_place_and_config_reports_them_with_their_key():
    from harness import config as C
    from harness.data import config_problems

    assert config_problems("cifar10", root=None) == [
        ("root", "data set cifar10 needs data.root (the folder holding it)")
    ]
    assert config_problems("digits", download=True) == [
        ("download", "only cifar10/cifar100 can be downloaded, not digits")
    ]
    with pytest.raises(C.ConfigError) as info:
        C.build_config({"data": {"train_subset": 0, "val_fraction": 1.0}})
    assert [tuple(p) for p in info.value.problems] == [
        ("data.train_subset", "must be a positive integer (images per class) or null, got 0"),
        ("data.val_fraction", "must be in [0, 1), got 1.0"),
    ]
    with pytest.raises(ValueError, match=r"data\.train_subset: must be a positive integer"):
        load_dataset("digits", train_subset=0)

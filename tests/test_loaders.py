"""Batch loaders: order, determinism, on-device augmentation, relabelling, normalisation, file decoding."""

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import load_dataset
from harness.loaders import Batch, FolderLoader, TensorLoader, make_loaders

N, C, S = 50, 3, 8


@pytest.fixture
def images() -> torch.Tensor:
    # distinct, non-zero pixels, so shifted windows and zero padding are recognisable
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (N, C, S, S), generator=g, dtype=torch.uint8)


def make(images, **kw) -> TensorLoader:
    labels = np.arange(N) % 5
    opts = dict(
        batch_size=16,
        mean=(0.0,) * C,
        std=(1.0,) * C,
        augment=False,
        pad=0,
        flip=False,
        shuffle=True,
        drop_last=False,
        device="cpu",
        seed=0,
    )
    opts.update(kw)
    return TensorLoader(images, labels, labels, **opts)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo normalisation with mean 0, std 1."""
    return (x * 255).round().to(torch.uint8)


def test_epoch_covers_every_index_once_with_partial_last_batch(images):
    loader = make(images)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and loader.num_samples == N
    assert [len(b.index) for b in batches] == [16, 16, 16, 2]
    idx = torch.cat([b.index for b in batches])
    assert torch.equal(idx.sort().values, torch.arange(N))
    assert not torch.equal(idx, torch.arange(N))  # shuffled
    b = batches[0]
    assert isinstance(b, Batch) and b.x.dtype == torch.float32 and b.x.shape == (16, C, S, S)
    assert b.y.dtype == b.clean.dtype == b.index.dtype == torch.long
    # without augmentation x is exactly the normalised image
    assert torch.equal(to_pixels(b.x), images[b.index])


def test_drop_last_and_no_shuffle(images):
    loader = make(images, drop_last=True, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and all(len(b.index) == 16 for b in batches)
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(48))


def test_deterministic_for_seed_and_epochs_differ(images):
    def passes(loader, k):
        return [torch.cat([b.index for b in loader]) for _ in range(k)]

    a, b = passes(make(images, seed=3), 2), passes(make(images, seed=3), 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])  # epochs differ
    assert not torch.equal(a[0], passes(make(images, seed=4), 1)[0])  # seeds differ
    again = make(images, seed=3)
    again.set_epoch(1)
    assert torch.equal(torch.cat([b.index for b in again]), a[1])
    # augmentation draws are reproducible too
    x1 = torch.cat([b.x for b in make(images, augment=True, pad=2, flip=True, seed=5)])
    x2 = torch.cat([b.x for b in make(images, augment=True, pad=2, flip=True, seed=5)])
    assert torch.equal(x1, x2)


def test_chunked_preparation_gives_the_same_batches(images):
    def run(batches_per_chunk):
        loader = make(images, augment=True, pad=2, flip=True, batch_size=7, channels_last=True)
        loader.batches_per_chunk = batches_per_chunk
        return list(loader)

    whole, single, pairs = run(100), run(1), run(2)
    assert len(whole) == len(single) == len(pairs) == 8 and len(whole[-1].index) == 1
    for a, b, c in zip(whole, single, pairs):
        for field in range(4):
            assert torch.equal(a[field], b[field]) and torch.equal(a[field], c[field])
        assert b.x.is_contiguous(memory_format=torch.channels_last)


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image(images):
    p = 2
    loader = make(images, augment=True, pad=p, flip=False, batch_size=N)
    (batch,) = list(loader)
    assert batch.x.shape == (N, C, S, S)
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    shifts = []
    for out, i in zip(to_pixels(batch.x), batch.index.tolist()):
        match = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out, padded[i, :, dy : dy + S, dx : dx + S])
        ]
        assert len(match) == 1, f"sample {i} is not a window of its padded image"
        shifts.append(match[0])
    assert len(set(shifts)) > 5  # per-sample offsets, not one shift for the batch
    assert any(s != (p, p) for s in shifts)


def test_flip_mirrors_some_samples(images):
    loader = make(images, augment=True, pad=0, flip=True, batch_size=N)
    (batch,) = list(loader)
    out, orig = to_pixels(batch.x), images[batch.index]
    same = (out == orig).flatten(1).all(1)
    mirrored = (out == orig.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored)
    assert 10 < int(mirrored.sum()) < 40
    # augment=False never flips or shifts, whatever pad/flip say
    (plain,) = list(make(images, augment=False, pad=4, flip=True, batch_size=N))
    assert torch.equal(to_pixels(plain.x), images[plain.index])


def test_relabelling_changes_y_not_clean(images):
    loader = make(images)
    clean = torch.as_tensor(np.arange(N) % 5)
    noisy = (clean + 1) % 5
    loader.labels = noisy.numpy()
    for b in loader:
        assert torch.equal(b.y, noisy[b.index]) and torch.equal(b.clean, clean[b.index])
    with pytest.raises(ValueError, match="shape"):
        loader.labels = np.zeros(N - 1, dtype=np.int64)
    with pytest.raises(ValueError, match="integer"):
        loader.labels = np.zeros(N, dtype=np.float32)


def test_normalisation_zero_mean_unit_std(images):
    x = images.double() / 255
    mean = tuple(x.mean((0, 2, 3)).tolist())
    std = tuple(x.std((0, 2, 3)).tolist())
    loader = make(images, mean=mean, std=std, channels_last=True)
    xs = [b.x for b in loader]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in xs)
    allx = torch.cat(xs)
    assert torch.allclose(allx.mean((0, 2, 3)), torch.zeros(C), atol=1e-4)
    assert torch.allclose(allx.std((0, 2, 3)), torch.ones(C), atol=1e-3)


def test_make_loaders_in_memory():
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    noisy = (data.train_y + 1) % 10
    train, evals = make_loaders(data, noisy, batch_size=100, augment=True, device="cpu", seed=0)
    assert isinstance(train, TensorLoader) and set(evals) == {"test", "val"}
    assert train.drop_last and len(train) == data.num_train // 100
    b = next(iter(train))
    assert b.x.shape == (100, 1, 8, 8)
    assert torch.equal(b.y, torch.as_tensor(noisy)[b.index])
    assert torch.equal(b.clean, torch.as_tensor(data.train_y)[b.index])
    test = evals["test"]
    idx = torch.cat([t.index for t in test])
    assert torch.equal(idx, torch.arange(data.num_test)) and test.num_samples == 450
    assert torch.equal(torch.cat([t.y for t in test]), torch.as_tensor(data.test_y))
    assert evals["val"].num_samples == data.num_val
    with pytest.raises(ValueError, match="train_labels"):
        make_loaders(data, noisy[:-1], batch_size=100, augment=True, device="cpu", seed=0)


# --- FolderLoader -----------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 5), ("val", 2)):
        for c, color in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(per_class):
                px = np.clip(np.array(color) + rng.integers(-20, 20, (24, 30, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{k}.{'png' if k % 2 else 'jpg'}")


def test_folder_loader_decodes_and_labels(tmp_path):
    _tree(tmp_path)
    data = load_dataset("imagefolder", root=tmp_path, image_size=16)
    noisy = 1 - data.train_y
    train, evals = make_loaders(data, noisy, batch_size=4, augment=True, device="cpu", seed=1, num_workers=0)
    assert isinstance(train, FolderLoader) and len(train) == 2 and train.drop_last
    batches = list(train)
    assert all(b.x.shape == (4, 3, 16, 16) and b.x.dtype == torch.float32 for b in batches)
    for b in batches:
        assert torch.equal(b.y, torch.as_tensor(noisy)[b.index])
        assert torch.equal(b.clean, torch.as_tensor(data.train_y)[b.index])
        # red images have a high red channel after normalisation, blue ones a high blue channel
        red = b.x[:, 0].mean((1, 2)) > b.x[:, 2].mean((1, 2))
        assert torch.equal(red, b.clean == data.classes.index("red"))
    train.labels = data.train_y
    assert all(torch.equal(b.y, b.clean) for b in train)

    (test,) = list(evals["test"])
    assert torch.equal(test.index, torch.arange(4)) and torch.equal(test.y, torch.as_tensor(data.test_y))


def test_folder_loader_deterministic_across_workers(tmp_path):
    _tree(tmp_path)
    data = load_dataset("imagefolder", root=tmp_path, image_size=12)

    def run(num_workers, seed=0):
        loader = FolderLoader(
            data.train_files,
            data.train_y,
            data.train_y,
            batch_size=5,
            image_size=12,
            mean=data.mean,
            std=data.std,
            augment=True,
            shuffle=True,
            drop_last=False,
            num_workers=num_workers,
            device="cpu",
            seed=seed,
        )
        loader.set_epoch(2)
        batches = list(loader)
        return torch.cat([b.index for b in batches]), torch.cat([b.x for b in batches])

    i0, x0 = run(0)
    i1, x1 = run(1)
    assert torch.equal(i0, i1) and torch.equal(x0, x1)
    assert torch.equal(i0.sort().values, torch.arange(10))
    i2, x2 = run(0, seed=1)
    assert not torch.equal(x0, x2)

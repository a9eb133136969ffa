"""Batch loaders: order, determinism, on-device augmentation, relabelling, normalisation, file decoding."""

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import jpeg, load_dataset
from harness.data.loaders import (
    DECODE_MODES,
    Batch,
    FolderLoader,
    Shard,
    TensorLoader,
    make_loaders,
    resolve_decode,
)

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


# --- FolderLoader, decode="device" (harness.data.jpeg): on the CPU here, libjpeg-turbo instead of nvJPEG ---


def _folder(data, *, decode, split="train", augment=True, num_workers=0, seed=0, epoch=2, shard=None):
    files, y = (data.train_files, data.train_y) if split == "train" else (data.test_files, data.test_y)
    loader = FolderLoader(
        files,
        y,
        y,
        batch_size=4,
        image_size=16,
        mean=data.mean,
        std=data.std,
        augment=augment,
        shuffle=augment,
        drop_last=False,
        num_workers=num_workers,
        device="cpu",
        seed=seed,
        shard=shard or Shard(),
        decode=decode,
    )
    loader.set_epoch(epoch)
    return loader, list(loader)


def _pixels(x: torch.Tensor, data) -> torch.Tensor:
    """Undo the loader's normalisation: grey levels in [0, 255] (float)."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x * std + mean) * 255


@pytest.fixture
def folder(tmp_path):
    """Red and blue images of 36 x 48 with a green ramp, left to right, and a wave down their rows,
    so that another crop box or flip changes many pixels; JPEGs and PNGs (every odd file)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:36, 0:48]
    for split, per_class in (("train", 7), ("val", 3)):
        for c, color in (("blue", 2), ("red", 0)):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for k in range(per_class):
                px = np.zeros((36, 48, 3))
                px[..., color] = 200 + rng.integers(-20, 20, (36, 48))
                px[..., 1] = cols * 5 + 30 * np.sin(rows / (2 + k))
                Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(
                    d / f"{k}.{'png' if k % 2 else 'jpg'}"
                )
    return load_dataset("imagefolder", root=tmp_path, image_size=16)


@pytest.mark.parametrize("augment", [True, False], ids=["train", "eval"])
def test_device_decode_gives_the_workers_paths_batches_and_pixels(folder, augment):
    split = "train" if augment else "test"
    loader, device = _folder(folder, decode="device", split=split, augment=augment)
    _, workers = _folder(folder, decode="workers", split=split, augment=augment)
    assert loader.decode == "device"
    assert [b.index.tolist() for b in device] == [b.index.tolist() for b in workers]
    for d, w in zip(device, workers):
        assert d.x.shape == (len(d.index), 3, 16, 16) and d.x.dtype == torch.float32
        assert torch.equal(d.y, w.y) and torch.equal(d.clean, w.clean)
    x_dev = _pixels(torch.cat([b.x for b in device]), folder)
    x_pil = _pixels(torch.cat([b.x for b in workers]), folder)
    assert x_dev.min() > -0.01 and x_dev.max() < 255.01  # normalised with the data's mean and std
    # Same crop boxes and flips (one seed per sample), same resize: measured 0.0 grey levels (max 0)
    # for both splits on torch 2.14 / torchvision 0.29 / Pillow 13 (their libjpeg-turbos decode
    # alike). Another epoch's draws, inverted flips or an off-center eval crop give 14 to 24 here;
    # 0.5 leaves room for another build's decoder.
    assert (x_dev - x_pil).abs().mean() < 0.5


def test_device_decode_reads_pngs_too(folder):
    loader, batches = _folder(folder, decode="device", augment=False)
    seen = torch.cat([b.index for b in batches])
    pngs = [i for i in seen.tolist() if str(folder.train_files[i][0]).endswith(".png")]
    assert pngs and len(seen) == loader.num_samples
    # red images have a high red channel, blue ones a high blue one: PNGs decode to RGB, in order
    for b in batches:
        red = b.x[:, 0].mean((1, 2)) > b.x[:, 2].mean((1, 2))
        assert torch.equal(red, b.clean == folder.classes.index("red"))


@pytest.mark.parametrize("world_size", [2, 3])
def test_device_decode_shards_like_the_workers_path(folder, world_size):
    parts = []
    for rank in range(world_size):
        shard = Shard(rank, world_size)
        _, device = _folder(folder, decode="device", shard=shard)
        _, workers = _folder(folder, decode="workers", shard=shard)
        assert [b.index.tolist() for b in device] == [b.index.tolist() for b in workers]
        parts.append(device)
    _, whole = _folder(folder, decode="device")
    # every global batch is the ranks' parts side by side, pixels included
    for k, batch in enumerate(whole):
        pieces = [p[k] for p in parts if k < len(p)]
        assert torch.equal(torch.cat([p.index for p in pieces]), batch.index)
        assert torch.equal(torch.cat([p.x for p in pieces]), batch.x)


def test_device_decode_is_deterministic_across_loaders_and_num_workers(folder):
    _, a = _folder(folder, decode="device", num_workers=0)
    _, b = _folder(folder, decode="device", num_workers=2)
    assert [x.index.tolist() for x in a] == [x.index.tolist() for x in b]
    assert torch.equal(torch.cat([x.x for x in a]), torch.cat([x.x for x in b]))
    _, other_seed = _folder(folder, decode="device", seed=1)
    _, other_epoch = _folder(folder, decode="device", epoch=3)
    for other in (other_seed, other_epoch):
        assert not torch.equal(torch.cat([x.x for x in a]), torch.cat([x.x for x in other]))


def test_crop_box_is_torchvisions_random_resized_crop():
    from torchvision.transforms import v2

    rrc = v2.RandomResizedCrop(16)
    # ordinary images, and thin ones where all 10 attempts fail and the clipped central crop is used
    for h, w in [(375, 500), (500, 375), (24, 30), (4, 300), (300, 4), (7, 7)]:
        for s in range(40):
            seed = jpeg.sample_seed(s, 1, h * w)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                want = rrc.make_params([torch.empty(3, h, w)])
            got = jpeg.crop_box(h, w, torch.Generator().manual_seed(seed))
            assert got == (want["top"], want["left"], want["height"], want["width"]), (h, w, s)


def test_float_resize_of_cuda_rounds_as_the_cpus_uint8_resize(monkeypatch):
    # CUDA has no uint8 bilinear kernel, so jpeg.resize resizes in float32 there: run that branch here
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 90, 120), generator=g, dtype=torch.uint8)
    native = jpeg.resize(image, 32, 41)
    monkeypatch.setattr(jpeg, "_NATIVE_UINT8_DEVICES", ())
    floated = jpeg.resize(image, 32, 41)
    assert floated.dtype == torch.uint8 and floated.shape == native.shape == (3, 32, 41)
    diff = (floated.int() - native.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.5


def test_decode_auto_is_device_on_cuda_only_and_bad_modes_are_refused(folder):
    assert resolve_decode("auto", "cuda") == "device" and resolve_decode("auto", "cpu") == "workers"
    assert resolve_decode("device", "cpu") == "device" and resolve_decode("workers", "cuda:0") == "workers"
    loader, _ = _folder(folder, decode="auto")
    assert loader.decode == "workers"
    with pytest.raises(ValueError, match="decode must be one of auto, workers, device, got 'gpu'"):
        _folder(folder, decode="gpu")
    train, evals = make_loaders(
        folder,
        folder.train_y,
        batch_size=4,
        augment=True,
        device="cpu",
        seed=0,
        num_workers=0,
        decode="device",
    )
    assert train.decode == evals["test"].decode == "device"


def test_config_accepts_the_decode_modes_and_names_them_for_a_bad_one():
    from harness import config as C

    assert C.build_config(None, {}).data.decode == "auto"
    assert all(C.check_value("data.decode", m) is None for m in DECODE_MODES)
    with pytest.raises(
        C.ConfigError, match=r"data\.decode: unknown decode mode 'nvjpeg'; choose from auto, workers, device"
    ):
        C.build_config(None, {"data.decode": "nvjpeg"})

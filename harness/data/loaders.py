"""Batch loaders: GPU-resident tensors for in-memory datasets, a worker pool for ImageFolder trees
(whose JPEGs are decoded in the workers, or a batch at once on the device: `harness.data.jpeg`).

Both loaders yield `Batch(x, y, clean, index)` and keep the labels trained on (`.labels`, settable:
relabelling is assignment, as in airbench) beside the true labels (`.clean_labels`), so an engine can
measure memorization of flipped samples. Iteration order and augmentation depend only on
(seed, epoch): `set_epoch(e)` picks the epoch of the next pass; without it each pass advances by one.

Data-parallel training (`Shard`): `batch_size` is the global batch. Every process draws the same
pass (order and augmentation from (seed, epoch)) and takes its part of each global batch
(`shard_positions`), so the union of the processes' batches is the one-process batch and nothing
depends on worker timing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from harness.data import ImageData, jpeg

# TensorLoader prepares (augments and normalises) this many bytes of batches at a time.
CHUNK_BYTES = 128 * 2**20
# FolderLoader's decoders: PIL in the DataLoader workers, or a batch at once on the loader's device
# (harness.data.jpeg); auto = device on CUDA, workers elsewhere
DECODE_MODES = ("auto", "workers", "device")


class Batch(NamedTuple):
    """One batch. x: float32 (B, C, H, W), normalised; y: labels trained on (long, (B,));
    clean: true labels (long, (B,)); index: positions of the samples in the loader's dataset (long, (B,))."""

    x: torch.Tensor
    y: torch.Tensor
    clean: torch.Tensor
    index: torch.Tensor


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream); independent streams for order and augmentation."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel run: rank `rank` of `world_size` processes."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")


def part_size(batch_size: int, shard: Shard) -> int:
    """How many samples of a global batch of `batch_size` rank `shard.rank` takes.

    A batch of B samples over W processes: the first B % W ranks take B // W + 1, the others
    B // W (so the parts differ by at most one and add up to B).
    """
    q, r = divmod(batch_size, shard.world_size)
    return q + (shard.rank < r)


def shard_positions(n: int, batch_size: int, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of a pass of `n` samples that rank `shard.rank` takes, and its batch sizes.

    The pass is cut into global batches of `batch_size` (the last one shorter when `batch_size`
    does not divide `n`); each is split into `world_size` consecutive parts of `part_size`. Returns
    (positions (n_local,), sizes (num_global_batches,)); a size may be 0 (a short last batch).
    """
    starts = torch.arange(0, n, batch_size)
    lengths = (n - starts).clamp(max=batch_size)
    q, r = lengths // shard.world_size, lengths % shard.world_size
    sizes = q + (shard.rank < r).long()
    first = starts + q * shard.rank + r.clamp(max=shard.rank)
    offsets = torch.arange(int(sizes.sum())) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
    return torch.repeat_interleave(first, sizes) + offsets, sizes


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class _LabelsMixin:
    """`.labels` (trained on) and `.clean_labels` (true) as long tensors on the loader's device.

    `.labels_noisy`: whether `.labels` carry the trial's noise (the training set, and the held-out
    split that `make_loaders` gets noisy labels for) rather than being the true labels again.
    """

    device: torch.device
    num_samples: int
    _labels: torch.Tensor
    labels_noisy: bool = False

    def _as_labels(self, values: Any, what: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
        if t.shape != (self.num_samples,):
            raise ValueError(f"{what} must have shape ({self.num_samples},), got {tuple(t.shape)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{what} must be integer class indices, got {t.dtype}")
        return t.to(device=self.device, dtype=torch.long)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    @labels.setter
    def labels(self, values: Any) -> None:
        self._labels = self._as_labels(values, "labels")

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch` (its order and augmentation are fixed by (seed, epoch))."""
        self.epoch = int(epoch)


class TensorLoader(_LabelsMixin):
    """Loader over uint8 images (N, C, H, W) that live on `device` for the whole run.

    Images and both label sets are copied to the device once. Per pass, the permutation and the
    augmentation draws (crop offsets, flips) are made on the CPU from a generator seeded with
    (seed, epoch) and moved to the device in one copy, so the order is the same on every device.
    Augmentation (random crop with `pad` pixels of zero padding, random horizontal flip) is a
    vectorised gather on the device; then x = (pixel / 255 - mean) / std in float32. Batches are
    prepared `batches_per_chunk` at a time (about CHUNK_BYTES of float32) and yielded as views, because
    per-step kernel launches would cost as much as a small model's step. Assigning `.labels` takes
    effect at the next chunk; relabel between passes.
    """

    def __init__(
        self,
        images_uint8: torch.Tensor | np.ndarray,
        labels: Any,
        clean_labels: Any,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
        pad: int,
        flip: bool,
        shuffle: bool,
        drop_last: bool,
        device: str | torch.device,
        seed: int = 0,
        channels_last: bool = False,
        shard: Shard = Shard(),
    ) -> None:
        images = torch.as_tensor(images_uint8)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        n, c = images.shape[:2]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean and std need one value per channel ({c}), got {len(mean)} and {len(std)}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.device = torch.device(device)
        self.num_samples = int(n)
        self.batch_size = _check_batch_size(batch_size)
        self.augment, self.pad, self.flip = bool(augment), int(pad), bool(flip)
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.channels_last, self.shard = bool(channels_last), shard
        self.epoch = 0
        self.images = images.to(self.device)
        self.clean_labels = self._as_labels(clean_labels, "clean_labels")
        self.labels = labels
        # x * scale + shift == (x / 255 - mean) / std
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, c, 1, 1).to(self.device)
        # Batches are prepared in chunks of about CHUNK_BYTES of float32 images.
        sample_bytes = 4 * images[0].numel()
        self.batches_per_chunk = max(1, CHUNK_BYTES // (sample_bytes * self.batch_size))

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image of its batches."""
        return tuple(self.images.shape[1:])

    def unaugmented(self) -> TensorLoader:
        """The same images and labels (shared, not copied) in their order, every sample once and
        without augmentation: a pass to score the training set with (harness.train.evaluate.detect_noise)."""
        view = copy.copy(self)
        view.augment, view.shuffle, view.drop_last, view.epoch = False, False, False, 0
        return view

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        order, draws, sizes = self._plan(epoch)
        ends = sizes.cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        for first in range(0, len(sizes), self.batches_per_chunk):
            last = min(first + self.batches_per_chunk, len(sizes))
            lo, hi = starts[first], ends[last - 1]
            idx = order[lo:hi]
            x = self._prepare(idx, None if draws is None else draws[lo:hi])
            y, clean = self._labels[idx], self.clean_labels[idx]
            for b in range(first, last):
                s = slice(starts[b] - lo, ends[b] - lo)
                if ends[b] > starts[b]:
                    yield Batch(x[s], y[s], clean[s], idx[s])

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """This process's part of the pass: order (n,) and augmentation draws (n, 3) = (row offset,
        column offset, flip), on the device, and the batch sizes (CPU).

        The whole pass is drawn on the CPU, so it does not depend on the device or the number of
        processes, and this process's part is sent in one copy: no host-to-device traffic inside the loop.
        """
        n = self.num_samples
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        draws = torch.zeros(n, 3, dtype=torch.long)
        augmented = self.augment and (self.pad > 0 or self.flip)
        if augmented and self.pad > 0:
            draws[:, :2] = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        if augmented and self.flip:
            draws[:, 2] = torch.randint(0, 2, (n,), generator=gen)
        used = len(self) * self.batch_size if self.drop_last else n
        mine, sizes = shard_positions(used, self.batch_size, self.shard)
        packed = torch.cat([order[mine, None], draws[mine]], 1).to(self.device, non_blocking=True)
        return packed[:, 0], (packed[:, 1:] if augmented else None), sizes

    def _prepare(self, idx: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
        """Augmented, normalised float32 images for positions `idx` (a chunk of batches at once:
        a dozen kernel launches per chunk instead of per step, since small steps are launch-bound)."""
        x = self.images[idx]
        if draws is not None:
            x = self._crop_flip(x, draws)
        x = x.float().mul_(self._scale).add_(self._shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _crop_flip(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Crop (H, W) windows at offsets d[:, 0], d[:, 1] of the zero-padded images; mirror where d[:, 2]."""
        bsz, c, h, w = x.shape
        p = self.pad
        arange_h = torch.arange(h, device=x.device)
        arange_w = torch.arange(w, device=x.device)
        if p > 0:
            x = torch.nn.functional.pad(x, (p, p, p, p))
            rows = d[:, 0, None] + arange_h  # (B, H) rows of the padded image
            x = x.gather(2, rows.view(bsz, 1, h, 1).expand(bsz, c, h, x.shape[3]))
        # A flip is a reversed column index, so crop and flip share one gather.
        cols = torch.where(d[:, 2, None].bool(), w - 1 - arange_w, arange_w) + d[:, 1, None]
        return x.gather(3, cols.view(bsz, 1, 1, w).expand(bsz, c, h, w))


class _FolderDataset(torch.utils.data.Dataset):
    """Decodes image files with PIL and returns (uint8 tensor (3, S, S), position).

    Random transforms draw from the torch RNG reseeded per sample with (seed, epoch, position), in a
    forked RNG state, so results do not depend on num_workers and the caller's RNG is untouched.
    """

    def __init__(self, paths: list[str], transform: Any, seed: int) -> None:
        self.paths, self.transform, self.seed, self.epoch = paths, transform, seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(jpeg.sample_seed(self.seed, self.epoch, i))
            img = self.transform(img)
        return img, i


def resolve_decode(decode: str, device: str | torch.device) -> str:
    """`workers` or `device`: what `decode` (one of DECODE_MODES) means for a loader on `device`."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if decode == "auto":
        return "device" if torch.device(device).type == "cuda" else "workers"
    return decode


class FolderLoader(_LabelsMixin):
    """Loader over image files read by a torch DataLoader, decoded in its workers or on the device.

    Training (augment=True): RandomResizedCrop(image_size) + random horizontal flip. Evaluation:
    resize the short side to image_size * 256 / 224, then center-crop image_size (ImageNet style).
    `decode`: `workers` decodes with PIL and augments in the DataLoader workers, which send uint8
    images (pinned memory, a non-blocking copy); `device` has the workers only read the files' bytes
    and decodes and augments each batch at once on `device` (`harness.data.jpeg`: nvJPEG on CUDA; PNGs
    and other non-JPEGs on the CPU), with the same crop boxes and flips; `auto` (default) is
    `device` on CUDA, `workers` elsewhere. Either way the batches hold the same samples and
    normalisation happens on `device`.
    """

    def __init__(
        self,
        files: Sequence[str] | Sequence[tuple[str, int]],
        labels: Any,
        clean_labels: Any,
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
        shuffle: bool,
        drop_last: bool,
        num_workers: int,
        device: str | torch.device,
        seed: int = 0,
        channels_last: bool = False,
        shard: Shard = Shard(),
        decode: str = "auto",
    ) -> None:
        from torchvision.transforms import v2

        paths = [f if isinstance(f, str | bytes) or not isinstance(f, Sequence) else f[0] for f in files]
        self.device = torch.device(device)
        self.num_samples = len(paths)
        self.batch_size = _check_batch_size(batch_size)
        self.image_size, self.augment = int(image_size), bool(augment)
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.num_workers, self.channels_last = int(num_workers), bool(channels_last)
        self.shard = shard
        self.mean, self.std, self.decode_mode = tuple(mean), tuple(std), decode  # for `unaugmented`
        self.decode = resolve_decode(decode, self.device)
        self.epoch = 0
        self.clean_labels = self._as_labels(clean_labels, "clean_labels")
        self.labels = labels
        self.files = jpeg.FileBytes([str(p) for p in paths])
        if augment:
            ops = [v2.RandomResizedCrop(self.image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops = [
                v2.Resize(round(self.image_size * 256 / 224), antialias=True),
                v2.CenterCrop(self.image_size),
            ]
        self.dataset = _FolderDataset(
            [str(p) for p in paths], v2.Compose([v2.PILToTensor(), *ops]), self.seed
        )
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(self.device)

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image of its batches: RGB at image_size."""
        return (3, self.image_size, self.image_size)

    def unaugmented(self) -> FolderLoader:
        """The same files and labels in their order, every sample once, with the evaluation transform
        (resize and center crop): a pass to score the training set with (harness.train.evaluate.detect_noise)."""
        view = FolderLoader(
            self.dataset.paths,
            self._labels,
            self.clean_labels,
            batch_size=self.batch_size,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            augment=False,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            device=self.device,
            seed=self.seed,
            channels_last=self.channels_last,
            shard=self.shard,
            decode=self.decode_mode,
        )
        view.labels_noisy = self.labels_noisy
        return view

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        self.dataset.epoch = epoch  # workers are started per pass, so they see this epoch
        n = self.num_samples
        order = (
            torch.randperm(n, generator=epoch_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(n)
        )
        used = len(self) * self.batch_size if self.drop_last else n
        mine, sizes = shard_positions(used, self.batch_size, self.shard)
        batches = [b.tolist() for b in order[mine].split(sizes.tolist()) if len(b)]
        on_device = self.decode == "device"
        loader = torch.utils.data.DataLoader(
            self.files if on_device else self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=jpeg.collate_bytes if on_device else None,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, idx in loader:
            if on_device:
                x = self._decode_on_device(images, idx, epoch)
            else:
                x = images.to(self.device, non_blocking=True)
            idx = idx.to(self.device, non_blocking=True)
            x = x.float().mul_(self._scale).add_(self._shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, self._labels[idx], self.clean_labels[idx], idx)

    def _decode_on_device(
        self, files: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        """uint8 (B, 3, S, S) on the device from the batch's encoded files (`jpeg.collate_bytes`;
        positions `idx`, CPU)."""
        images = jpeg.decode(jpeg.split_bytes(files), self.device)
        if self.augment:
            return jpeg.train_batch(images, idx.tolist(), size=self.image_size, seed=self.seed, epoch=epoch)
        return jpeg.eval_batch(images, size=self.image_size)


Loader = TensorLoader | FolderLoader


def make_loaders(
    data: ImageData,
    train_labels: Any,
    *,
    batch_size: int,
    augment: bool,
    device: str | torch.device,
    seed: int,
    num_workers: int = 4,
    channels_last: bool = False,
    eval_batch_size: int | None = None,
    shard: Shard = Shard(),
    decode: str = "auto",
    val_labels: Any = None,
) -> tuple[Loader, dict[str, Loader]]:
    """Train loader (shuffled, augmented if `augment`, trained on `train_labels`) and eval loaders.

    Eval loaders are `{"test": ..., "val": ...}` ("val" only when the data has a validation split),
    neither shuffled nor augmented, with the clean labels as `.labels`; `val_labels` (the held-out
    split's labels corrupted like the training labels) become the val loader's `.labels` instead,
    its true labels staying `.clean_labels` (and its `.labels_noisy` is True, as the train
    loader's). The train loader drops the last partial batch when there is more than one batch
    (fixed shapes for CUDA graphs / compiled steps, and no batch of one for BatchNorm), and always
    when data-parallel (`shard`): every step then
    averages the same number of samples. `batch_size` is global; each process gets its part of
    every batch, evaluation included. `decode` (DECODE_MODES) picks where ImageFolder images are
    decoded (`FolderLoader`); in-memory data sets ignore it.
    """
    train_labels = np.asarray(train_labels) if not isinstance(train_labels, torch.Tensor) else train_labels
    if tuple(train_labels.shape) != (data.num_train,):
        raise ValueError(f"train_labels must have shape ({data.num_train},), got {tuple(train_labels.shape)}")
    eval_bs = eval_batch_size or batch_size
    if shard.world_size > 1 and data.num_train < batch_size:
        raise ValueError(
            f"optim.batch_size {batch_size} is larger than the {data.num_train} training images: data-parallel "
            "training needs at least one full batch"
        )
    drop_last = data.num_train > batch_size or shard.world_size > 1
    eval_labels = {"test": data.test_y}
    if data.val_y is not None:
        eval_labels["val"] = data.val_y

    common = dict(
        mean=data.mean, std=data.std, device=device, seed=seed, channels_last=channels_last, shard=shard
    )
    if data.in_memory:
        make = TensorLoader
        common.update(pad=data.pad, flip=data.flip)
        sources = {"train": data.train_x, "test": data.test_x, "val": data.val_x}
    else:
        make = FolderLoader
        common.update(image_size=data.image_size, num_workers=num_workers, decode=decode)
        sources = {"train": data.train_files, "test": data.test_files, "val": data.val_files}
    train = make(
        sources["train"],
        train_labels,
        data.train_y,
        batch_size=batch_size,
        augment=augment,
        shuffle=True,
        drop_last=drop_last,
        **common,
    )
    train.labels_noisy = True
    if val_labels is not None and data.val_y is None:
        raise ValueError(
            "val_labels were given, but the data has no validation split (data.val_fraction = 0)"
        )
    given = {"val": val_labels} if val_labels is not None else {}
    evals = {
        k: make(
            sources[k],
            given.get(k, y),
            y,
            batch_size=eval_bs,
            augment=False,
            shuffle=False,
            drop_last=False,
            **common,
        )
        for k, y in eval_labels.items()
    }
    if given:
        evals["val"].labels_noisy = True
    return train, evals

"""Datasets: digits, CIFAR-10/100 (python-version pickles), ImageFolder trees and synthetic images.

`load_dataset(name, ...)` returns an `ImageData` holding *clean* labels; label noise is applied
elsewhere (`noise.corrupt`). Conventions:

- images are uint8 tensors of shape (N, C, H, W) with values in 0..255 (in-memory datasets);
- labels are int64 numpy arrays of shape (N,);
- `train_indices` / `val_indices` are positions in the dataset's official training order, so labels
  indexed by that order (CIFAR-N human labels) can be lined up after `train_subset`/`val_fraction`;
- `mean` / `std` are per-channel, in [0, 1] pixel units (normalise with (x / 255 - mean) / std).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """A registered data set: its loader and what a config of it needs.

    ``load(root, *, download, holdout, **options)`` returns the full ImageData (``root`` a Path,
    or None for data sets that need none; ``holdout``: a validation share will be drawn).
    """

    name: str
    load: Callable[..., ImageData]
    needs_root: bool = False
    downloadable: bool = False
    options: tuple[str, ...] = ()
    num_classes: int | None = None  # known without loading it (None: depends on the files or options)
    num_train: int | None = None  # training images in the official order, before any subset
    in_memory: bool = True  # its images are held as tensors (the trials of a pack share them on the device)


# name -> Dataset, filled by @register_dataset below; config validation reads it live.
DATASETS: dict[str, Dataset] = {}


def register_dataset(
    name: str,
    *,
    needs_root: bool = False,
    downloadable: bool = False,
    options: tuple[str, ...] = (),
    num_classes: int | None = None,
    num_train: int | None = None,
    in_memory: bool = True,
) -> Callable[[Callable[..., ImageData]], Callable[..., ImageData]]:
    """Register the decorated loader as data set ``name`` (see `Dataset`)."""

    def decorate(fn: Callable[..., ImageData]) -> Callable[..., ImageData]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = Dataset(
            name, fn, needs_root, downloadable, tuple(options), num_classes, num_train, in_memory
        )
        return fn

    return decorate


def config_problems(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    train_subset: int | None = None,
    val_fraction: float = 0.0,
    image_size: int | None = None,
) -> list[tuple[str, str]]:
    """What is wrong with a ``data`` config, as (key in the data section, message); [] when nothing.

    The one place these rules live: `load_dataset` raises on them, config validation reports them.
    """
    if name not in DATASETS:
        return [("name", f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")]
    spec, problems = DATASETS[name], []
    if train_subset is not None and (
        isinstance(train_subset, bool) or int(train_subset) != train_subset or train_subset < 1
    ):
        problems.append(
            ("train_subset", f"must be a positive integer (images per class) or null, got {train_subset!r}")
        )
    if not 0.0 <= float(val_fraction) < 1.0:
        problems.append(("val_fraction", f"must be in [0, 1), got {val_fraction!r}"))
    if spec.needs_root and not root:
        problems.append(("root", f"data set {name} needs data.root (the folder holding it)"))
    elif spec.needs_root and not download and (why := path_problem(root)):
        problems.append(("root", f"folder {why}"))
    if image_size is not None and "image_size" not in spec.options:
        sized = [d.name for d in DATASETS.values() if "image_size" in d.options]
        problems.append(
            (
                "image_size",
                f"{name} images keep their own size (they are not resized); image_size applies to "
                f"{'/'.join(sized)} only: leave it null",
            )
        )
    if download and not spec.downloadable:
        downloadable = [d.name for d in DATASETS.values() if d.downloadable]
        problems.append(("download", f"only {'/'.join(downloadable)} can be downloaded, not {name}"))
    return problems


def path_problem(path: str | os.PathLike) -> str | None:
    """None when `path` (`~` expanded) exists, else why not, with the path as given: 'does not exist:
    PATH', or the system's reason for a name it cannot even look up (too long, a NUL byte)."""
    text = str(path)
    shown = text if len(text) <= 120 else f"{text[:117]}... ({len(text)} characters)"
    shown = shown if shown.isprintable() else repr(shown)
    try:
        return None if Path(os.path.expanduser(path)).exists() else f"does not exist: {shown}"
    except (OSError, ValueError) as exc:  # ENAMETOOLONG; ValueError: embedded null byte
        return f"cannot be looked up ({getattr(exc, 'strerror', None) or exc}): {shown}"


@dataclass(kw_only=True)
class ImageData:
    """A classification dataset with clean labels, split into train / (val) / test.

    In-memory datasets (`in_memory=True`) fill `*_x` with uint8 tensors (N, C, H, W); `imagefolder`
    fills `*_files` with (path, label) lists instead and leaves `*_x` as None. `*_y` are int64 arrays
    in both cases. `val_*` are None when no validation split was asked for.
    """

    name: str
    num_classes: int
    classes: list[str]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int  # zero padding of the random-crop augmentation, in pixels
    flip: bool  # whether random horizontal flips are a valid augmentation
    in_memory: bool
    train_y: np.ndarray
    train_indices: np.ndarray
    test_y: np.ndarray
    train_x: torch.Tensor | None = None
    test_x: torch.Tensor | None = None
    val_x: torch.Tensor | None = None
    val_y: np.ndarray | None = None
    val_indices: np.ndarray | None = None
    train_files: list[tuple[str, int]] | None = None
    test_files: list[tuple[str, int]] | None = None
    val_files: list[tuple[str, int]] | None = None

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        return len(self.test_y)

    @property
    def num_val(self) -> int:
        return 0 if self.val_y is None else len(self.val_y)


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    train_subset: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    **options: Any,
) -> ImageData:
    """Load dataset `name` with clean labels.

    root: folder holding the dataset (CIFAR: the parent of `cifar-10-batches-py` / `cifar-100-python`
        or that folder itself; imagefolder: the folder with `train/` and `val/` or `test/`).
        Defaults to $HARNESS_DATA_ROOT, else ~/data. Unused by `digits` and `synthetic`.
    download: CIFAR only; fetch the archive with torchvision when the files are missing.
    train_subset: keep the first `train_subset` images of each class, in training order.
    val_fraction: in [0, 1); stratified share of the (subset) training set held out as val_x/val_y,
        drawn with `seed`. The test set never depends on `seed`.
    options: `synthetic`: num_classes, image_size, channels, train_per_class, test_per_class;
        `imagefolder`: image_size (default 224). An option given as None takes the data set's default
        (so a trial passes its config's data.image_size as it is).
    """
    options = {key: value for key, value in options.items() if value is not None}
    # root is not checked here: None means $HARNESS_DATA_ROOT or ~/data, and a missing file is
    # reported by the loader with the path it expected
    checked = config_problems(name, download=download, train_subset=train_subset, val_fraction=val_fraction)
    problems = [(key, message) for key, message in checked if key != "root"]
    if problems:
        raise ValueError("; ".join(f"data.{key}: {message}" for key, message in problems))
    spec = DATASETS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
            f"allowed: {', '.join(sorted(spec.options)) or 'none'}"
        )
    if spec.needs_root:
        root = Path(root if root is not None else os.environ.get("HARNESS_DATA_ROOT", "~/data")).expanduser()
    data = spec.load(root, download=download, holdout=val_fraction > 0, **options)

    if train_subset is not None:
        data = _take_train(data, first_per_class(data.train_y, int(train_subset)))
    if val_fraction > 0:
        data = _split_val(data, float(val_fraction), seed)
    return data


# ---------------------------------------------------------------------------------------------
# Subsets


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Positions of the first `per_class` samples of each class, in their original order."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts
    return np.flatnonzero(rank < per_class)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified holdout: round(fraction * n_c) samples of each class c (at most n_c - 1)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = min(int(round(fraction * len(idx))), len(idx) - 1)
        if n > 0:
            mask[rng.choice(idx, size=n, replace=False)] = True
    return mask


def _take_train(data: ImageData, keep: np.ndarray) -> ImageData:
    return replace(
        data,
        train_y=data.train_y[keep],
        train_indices=data.train_indices[keep],
        train_x=None if data.train_x is None else data.train_x[torch.from_numpy(keep)],
        train_files=None if data.train_files is None else [data.train_files[i] for i in keep],
    )


def _split_val(data: ImageData, fraction: float, seed: int) -> ImageData:
    mask = stratified_holdout(data.train_y, fraction, seed)
    if not mask.any():
        raise ValueError(
            f"data.val_fraction={fraction} holds out no image from {data.num_train} training images "
            f"({data.num_classes} classes); raise val_fraction or train_subset"
        )
    val, keep = np.flatnonzero(mask), np.flatnonzero(~mask)
    out = _take_train(data, keep)
    return replace(
        out,
        val_y=data.train_y[val],
        val_indices=data.train_indices[val],
        val_x=None if data.train_x is None else data.train_x[torch.from_numpy(val)],
        val_files=None if data.train_files is None else [data.train_files[i] for i in val],
    )


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn's bundled 8x8 images: the offline CPU quickstart)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    f = x.double().div_(255.0).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(f.mean(1).tolist()), tuple(f.std(1).clamp_min(1e-3).tolist())


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python-version pickles, read by our own reader)


# ---------------------------------------------------------------------------------------------
# ImageFolder trees (ImageNet): file lists only, decoded by the loader


# ---------------------------------------------------------------------------------------------
# synthetic: learnable class-conditional images for tests and benchmarks

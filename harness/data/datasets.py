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

from harness.data.safeload import UnsafeFileError, load_cifar_pickle


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
) -> Callable[[Callable[..., ImageData]], Callable[..., ImageData]]:
    """Register the decorated loader as data set ``name`` (see `Dataset`)."""

    def decorate(fn: Callable[..., ImageData]) -> Callable[..., ImageData]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = Dataset(name, fn, needs_root, downloadable, tuple(options), num_classes, num_train)
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


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# The fixed digits split: the test set never depends on the trial seed.
DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_SEED = 0
# Synthetic images come from fixed generators (never the trial seed): one dataset for every trial.
SYNTHETIC_SEED = 0


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


@register_dataset("digits", num_classes=10, num_train=1347)
def _digits(root: Path | None, *, download: bool, holdout: bool) -> ImageData:
    return _load_digits()


def _load_digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # 0..16 grey levels -> 0..255
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train_pos, test_pos = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    # Sorted, so that "the first n images of a class" follows the file's order.
    train_pos, test_pos = np.sort(train_pos), np.sort(test_pos)
    train_x = torch.from_numpy(images[train_pos])
    mean, std = _channel_stats(train_x)
    return ImageData(
        name="digits",
        num_classes=10,
        classes=[str(d) for d in range(10)],
        channels=1,
        image_size=8,
        mean=mean,
        std=std,
        pad=1,
        flip=False,  # a mirrored 2 is not a 2
        in_memory=True,
        train_x=train_x,
        train_y=y[train_pos],
        train_indices=np.arange(len(train_pos), dtype=np.int64),
        test_x=torch.from_numpy(images[test_pos]),
        test_y=y[test_pos],
    )


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    f = x.double().div_(255.0).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(f.mean(1).tolist()), tuple(f.std(1).clamp_min(1e-3).tolist())


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python-version pickles, read by our own reader)


@dataclass(frozen=True)
class _CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str


_CIFAR10 = _CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    torchvision_class="CIFAR10",
)
_CIFAR100 = _CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
    torchvision_class="CIFAR100",
)


def _cifar_folder(root: Path, layout: _CifarLayout, download: bool) -> Path:
    """The folder that holds the pickles: `root/<folder>`, or `root` itself."""
    for candidate in (root / layout.folder, root):
        if (candidate / layout.train_files[0]).is_file():
            return candidate
    if download:
        import torchvision

        # torchvision only fetches and unpacks; its md5-checked reader is not used (see DESIGN.md).
        parent = root.parent if root.name == layout.folder else root
        for train in (True, False):
            getattr(torchvision.datasets, layout.torchvision_class)(str(parent), train=train, download=True)
        return parent / layout.folder
    if root.name == layout.folder and root.is_dir():
        return root  # the folder itself, with files missing: reported file by file below
    expected = root / layout.folder / layout.train_files[0]
    raise FileNotFoundError(
        f"{layout.name} not found: expected {expected} (python-version layout: {layout.folder}/"
        f"{', '.join(layout.train_files + (layout.test_file, layout.meta_file))}). Point data.root at the "
        f"folder that holds {layout.folder}/ (or at {layout.folder}/ itself), or set data.download: true."
    )


def _read_pickle(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"Missing file {path} ({hint})")
    try:  # restricted to numpy's array globals: a crafted batch cannot run code (harness.data.safeload)
        obj = load_cifar_pickle(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # any other unpickling failure means the file is not what we expect
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_cifar_batch(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one CIFAR pickle."""
    obj = _read_pickle(path, f"{layout.name} python-version layout")
    missing = [k.decode() for k in (b"data", layout.label_key) if k not in obj]
    if missing:
        found = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in obj)
        raise ValueError(f"{path}: missing key(s) {missing}; found {found}")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[layout.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: {layout.label_key!r} must hold {len(data)} integer labels, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise ValueError(
            f"{path}: labels must be in [0, {layout.num_classes - 1}], got [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


@register_dataset("cifar10", needs_root=True, downloadable=True, num_classes=10, num_train=50_000)
def _cifar10(root: Path, *, download: bool, holdout: bool) -> ImageData:
    return _load_cifar(root, _CIFAR10, download)


@register_dataset("cifar100", needs_root=True, downloadable=True, num_classes=100, num_train=50_000)
def _cifar100(root: Path, *, download: bool, holdout: bool) -> ImageData:
    return _load_cifar(root, _CIFAR100, download)


def _load_cifar(root: Path, layout: _CifarLayout, download: bool) -> ImageData:
    folder = _cifar_folder(root, layout, download)
    meta = _read_pickle(folder / layout.meta_file, f"{layout.name} class names")
    names = meta.get(layout.names_key)
    if names is None or len(names) != layout.num_classes:
        raise ValueError(
            f"{folder / layout.meta_file}: expected {layout.num_classes} class names under {layout.names_key!r}"
        )
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    parts = [_read_cifar_batch(folder / f, layout) for f in layout.train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(folder / layout.test_file, layout)
    return ImageData(
        name=layout.name,
        num_classes=layout.num_classes,
        classes=classes,
        channels=3,
        image_size=32,
        mean=layout.mean,
        std=layout.std,
        pad=4,
        flip=True,
        in_memory=True,
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_y=train_y,
        train_indices=np.arange(len(train_y), dtype=np.int64),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=test_y,
    )


# ---------------------------------------------------------------------------------------------
# ImageFolder trees (ImageNet): file lists only, decoded by the loader


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan_split(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    files = []
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if d.name not in index:
            raise ValueError(
                f"{d}: class {d.name!r} is not among the {len(classes)} training classes "
                f"(folders of {split_dir.parent / 'train'})"
            )
        files += [(str(p), index[d.name]) for p in _list_images(d)]
    if not files:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}/<class>/")
    return files


@register_dataset("imagefolder", needs_root=True, options=("image_size",))
def _imagefolder(root: Path, *, download: bool, holdout: bool, image_size: int = 224) -> ImageData:
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
        raise ValueError(f"imagefolder option image_size must be a positive integer, got {image_size!r}")
    return _load_imagefolder(root, int(image_size), holdout=holdout)


def _load_imagefolder(root: Path, image_size: int, *, holdout: bool) -> ImageData:
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"imagefolder: expected {train_dir} (layout: root/train/<class>/*.jpg and root/val/<class>/ "
            f"or root/test/<class>/); set data.root to the folder that holds train/"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"imagefolder: no class folders in {train_dir}")
    empty = [c for c in classes if not _list_images(train_dir / c)]
    if empty:
        raise FileNotFoundError(f"imagefolder: no images in {', '.join(str(train_dir / c) for c in empty)}")
    # ImageNet ships train/ + val/ (val is the reported test set); other trees have test/ too.
    test_dir, val_dir = root / "test", root / "val"
    if not test_dir.is_dir():
        test_dir, val_dir = val_dir, None
    elif not val_dir.is_dir():
        val_dir = None
    if not test_dir.is_dir():
        raise FileNotFoundError(
            f"imagefolder: expected {root / 'val'} or {root / 'test'} with <class>/ folders"
        )
    if val_dir is not None and holdout:
        raise ValueError(
            f"imagefolder: {root} has both val/ and test/, so data.val_fraction must be 0 (val/ is the validation set)"
        )
    train_files = _scan_split(train_dir, classes)
    test_files = _scan_split(test_dir, classes)
    val_files = _scan_split(val_dir, classes) if val_dir is not None else None

    def labels(files):
        return np.array([y for _, y in files], dtype=np.int64)

    return ImageData(
        name="imagefolder",
        num_classes=len(classes),
        classes=classes,
        channels=3,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pad=0,  # RandomResizedCrop, not padded crops
        flip=True,
        in_memory=False,
        train_files=train_files,
        train_y=labels(train_files),
        train_indices=np.arange(len(train_files), dtype=np.int64),
        test_files=test_files,
        test_y=labels(test_files),
        val_files=val_files,
        val_y=None if val_files is None else labels(val_files),
        val_indices=None if val_files is None else np.arange(len(val_files), dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------------
# synthetic: learnable class-conditional images for tests and benchmarks

_SYNTHETIC_DEFAULTS = {
    "num_classes": 10,
    "image_size": 32,
    "channels": 3,
    "train_per_class": 100,
    "test_per_class": 20,
}


@register_dataset("synthetic", options=tuple(_SYNTHETIC_DEFAULTS))
def _synthetic(root: Path | None, *, download: bool, holdout: bool, **options: int) -> ImageData:
    return _make_synthetic(**options)


def _make_synthetic(**options: int) -> ImageData:
    opts = {**_SYNTHETIC_DEFAULTS, **options}
    for key, value in opts.items():
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"synthetic option {key} must be a positive integer, got {value!r}")
    k, size, c = int(opts["num_classes"]), int(opts["image_size"]), int(opts["channels"])
    if k < 2:
        raise ValueError(f"synthetic option num_classes must be >= 2, got {k}")
    # Each class: a coarse 4x4 random pattern blown up to the image size, so random crops and
    # flips keep most of the signal; per-image Gaussian noise makes it non-trivial.
    patterns = np.random.default_rng(SYNTHETIC_SEED).normal(0.0, 1.0, size=(k, c, 4, 4)).astype(np.float32)
    grid = np.arange(size) * 4 // size
    patterns = patterns[:, :, grid][:, :, :, grid]  # (K, C, S, S)

    def draw(per_class: int, rng_seed: int) -> tuple[torch.Tensor, np.ndarray]:
        rng = np.random.default_rng([SYNTHETIC_SEED, rng_seed])
        y = np.tile(np.arange(k, dtype=np.int64), per_class)  # classes interleaved: 0, 1, ..., K-1, 0, ...
        x = np.empty((len(y), c, size, size), dtype=np.uint8)
        for start in range(0, len(y), 4096):  # chunks bound the float32 scratch memory
            yy = y[start : start + 4096]
            noise = rng.standard_normal((len(yy), c, size, size), dtype=np.float32)
            x[start : start + len(yy)] = np.clip(128.0 + 40.0 * patterns[yy] + 40.0 * noise, 0, 255).astype(
                np.uint8
            )
        return torch.from_numpy(x), y

    train_x, train_y = draw(int(opts["train_per_class"]), 1)
    test_x, test_y = draw(int(opts["test_per_class"]), 2)
    mean, std = _channel_stats(train_x)
    return ImageData(
        name="synthetic",
        num_classes=k,
        classes=[f"class{i}" for i in range(k)],
        channels=c,
        image_size=size,
        mean=mean,
        std=std,
        pad=4,
        flip=True,
        in_memory=True,
        train_x=train_x,
        train_y=train_y,
        train_indices=np.arange(len(train_y), dtype=np.int64),
        test_x=test_x,
        test_y=test_y,
    )

"""ImageFolder trees (``root/train/<class>/*.jpg``, ``root/val/`` or ``root/test/``): ImageNet and
any data set of image files, decoded per batch by the loader (harness.data.loaders) rather than
held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.datasets import ImageData, register_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


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


@register_dataset("imagefolder", needs_root=True, options=("image_size",), in_memory=False)
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

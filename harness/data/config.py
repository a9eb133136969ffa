"""The `data` and `noise` sections of a trial config: what a trial trains on and how its labels are
corrupted (each key declared once, harness.keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import noise
from harness.data.datasets import DATASETS
from harness.data.loaders import DECODE_MODES
from harness.keys import at_least, described, in_range, key


@dataclass
class DataConfig:
    name: str = key("digits", "the data set", choices=lambda: list(DATASETS), what="dataset")
    root: str | None = key(
        None, "folder holding the data set in its usual layout ($HARNESS_DATA_ROOT, ~/data)"
    )
    download: bool = key(False, "CIFAR only: let torchvision fetch the archive into root")
    train_subset: int | None = key(
        None, "images per class kept from the training set (the first ones); null: all"
    )
    val_fraction: float = key(0.0, "stratified share of the training images held out for model selection")
    augment: bool = key(True, "random crop (and flip where the data set allows) of training images")
    num_workers: int = key(4, "DataLoader workers for ImageFolder data", check=at_least(0))
    decode: str = key(
        "auto",
        "where ImageFolder JPEGs are decoded and augmented: workers (PIL in the DataLoader workers), device "
        "(a batch at once on the trial's device: nvJPEG on CUDA), auto (device on CUDA, else workers)",
        choices=DECODE_MODES,
        what="decode mode",
    )
    image_size: int | None = key(
        None,
        "the side of the square images imagefolder (random resized crop; eval: resize, center crop) and "
        "synthetic train and test on; null: the data set's own (224, 32). digits and CIFAR keep theirs",
        check=described(
            lambda v: None if v >= 1 else f"must be a positive integer (pixels) or null, got {v}",
            ">= 1 (pixels) or null",
        ),
    )


@dataclass
class NoiseConfig:
    kind: str = key(
        "none", "how labels are corrupted", choices=noise.kind_names, what="noise kind", packs=True
    )
    rate: float = key(
        0.0, "share of the labels to corrupt (symmetric, pairflip, ...)", check=in_range(0, 1), packs=True
    )
    label_set: str | None = key(
        None, "human noise: aggre, worse, random1..3 (CIFAR-10N) or noisy (CIFAR-100N)", packs=True
    )
    label_file: str | None = key(None, "human noise: the official CIFAR-N .pt file", packs=True)
    matrix: list | None = key(None, "matrix noise: K x K row-stochastic, row = true class", packs=True)

"""Synthetic images for tests and benchmarks: class-dependent patterns under noise, drawn from fixed
generators (never the trial's seed), so every trial of a sweep sees the same data set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.datasets import ImageData, channel_stats, register_dataset

# Synthetic images come from fixed generators (never the trial seed): one dataset for every trial.
SYNTHETIC_SEED = 0


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
    mean, std = channel_stats(train_x)
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

"""scikit-learn's digits (8x8 grayscale, 10 classes, bundled with scikit-learn): the offline CPU
quickstart. A fixed split (never the trial's seed) holds out DIGITS_TEST_SIZE images as the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.datasets import ImageData, channel_stats, register_dataset

# The fixed digits split: the test set never depends on the trial seed.
DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_SEED = 0


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
    mean, std = channel_stats(train_x)
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

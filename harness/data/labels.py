"""A trial's labels: the clean ones corrupted as its noise section says (`corrupt_labels`), for the
training split and, drawn independently, for the held-out split (`val_noise_seed`).
"""

from __future__ import annotations

import os

import numpy as np

import noise
from harness.data.config import NoiseConfig
from harness.data.datasets import ImageData

VAL_NOISE_STREAM = 19  # `val_noise_seed`: the held-out labels' noise is drawn from (seed, this)


def corrupt_labels(
    data: ImageData, spec: NoiseConfig, *, seed: int, split: str = "train"
) -> noise.NoisyLabels:
    """The trial's training labels (``split="train"``) or held-out labels (``"val"``, the split of
    data.val_fraction): the clean ones corrupted as the noise config says. For human noise, the
    CIFAR-N labels of the split's images. Draw the val labels with `val_noise_seed`, so they are
    independent of the training draw (and the training labels do not depend on the split's noise)."""
    y, indices = (data.train_y, data.train_indices) if split == "train" else (data.val_y, data.val_indices)
    ns = noise.NoiseSpec(
        spec.kind,
        spec.rate,
        dataset=data.name,
        label_set=spec.label_set,
        label_file=os.path.expanduser(spec.label_file) if spec.label_file else None,
        matrix=spec.matrix,
    )
    if spec.kind == "human":
        # CIFAR-N labels follow the official training order: corrupt the full set, then take our subset
        _, clean_full = noise.load_human_labels(ns.label_file, ns.label_set)
        if not np.array_equal(clean_full[indices], y):
            raise ValueError(
                f"noise.label_file {spec.label_file}: its clean labels disagree with {data.name}'s "
                f"{'training' if split == 'train' else 'held-out'} labels; "
                "is the data set in the official order?"
            )
        full = noise.corrupt(clean_full, ns, num_classes=data.num_classes, seed=seed)
        return noise.NoisyLabels.from_pair(y, full.labels[indices], data.num_classes)
    features = None
    if spec.kind == "instance":
        x = data.train_x if split == "train" else data.val_x
        features = x.reshape(len(y), -1).float().numpy() / 255.0
    return noise.corrupt(y, ns, num_classes=data.num_classes, seed=seed, features=features)


def val_noise_seed(seed: int) -> int:
    """The seed of the held-out split's noise draw: derived from the trial's seed, another stream."""
    return int(np.random.SeedSequence([int(seed), VAL_NOISE_STREAM]).generate_state(1)[0])

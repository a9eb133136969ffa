"""Human label noise from CIFAR-10N / CIFAR-100N (Wei et al., ICLR 2022).

The official ``.pt`` files (``CIFAR-10_human.pt``, ``CIFAR-100_human.pt``) hold a dict of label
arrays over the 50,000 training images in the original CIFAR order: ``clean_label`` and one key
per label set. They are read with ``noise.safeload.torch_load``: numpy arrays and nothing that
could run code (a file naming anything else raises ``noise.safeload.UnsafeFileError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from noise.cifar import CIFAR_N_CLEAN_KEY as CLEAN_KEY
from noise.cifar import LABEL_SETS
from noise.registry import register_kind
from noise.safeload import torch_load

if TYPE_CHECKING:
    from noise.spec import NoiseSpec


def _check_label_set(label_set: object) -> tuple[str, int]:
    if label_set not in LABEL_SETS:
        raise ValueError(f"noise.label_set must be one of {', '.join(LABEL_SETS)}; got {label_set!r}")
    return LABEL_SETS[label_set]


def _label_path(label_file: object) -> Path:
    if label_file is None:
        raise ValueError(
            "noise.label_file is required for kind 'human' (the official CIFAR-N .pt file), got None"
        )
    path = Path(label_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"noise.label_file: no such file: {path}")
    return path


def read_label_file(path: str | os.PathLike[str]) -> object:
    """The unpickled content of a CIFAR-N ``.pt`` file (a dict of label arrays), read without running code.

    Raises ``UnsafeFileError`` for a file that names anything but numpy's array globals, and
    ValueError for one torch cannot read.
    """
    return torch_load(path, holds="a CIFAR-N label file", arrays=True)


def load_human_labels(label_file: str | os.PathLike[str], label_set: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-N label set: ``(noisy, clean)``, two int64 arrays of shape (50000,).

    Both are in the original CIFAR training order. For a training subset with indices ``idx``,
    use ``noisy[idx]`` against ``clean[idx]`` (check ``clean[idx]`` equals the subset's labels).
    """
    key, _ = _check_label_set(label_set)
    path = _label_path(label_file)
    data = read_label_file(path)
    if not isinstance(data, dict) or CLEAN_KEY not in data or key not in data:
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"noise.label_set {label_set!r} needs keys {CLEAN_KEY!r} and {key!r}, but {path} holds {keys} "
            f"(CIFAR-10N sets: aggre, worse, random1..3; CIFAR-100N: noisy)"
        )
    noisy = np.asarray(data[key]).astype(np.int64)
    clean = np.asarray(data[CLEAN_KEY]).astype(np.int64)
    if noisy.shape != clean.shape or noisy.ndim != 1:
        raise ValueError(f"{path}: {key} has shape {noisy.shape} but {CLEAN_KEY} has shape {clean.shape}")
    return noisy, clean


def check_label_file(
    label_file: str | os.PathLike[str],
    label_set: str,
    *,
    num_classes: int | None = None,
    num_train: int | None = None,
) -> None:
    """Read a CIFAR-N file as a trial will and check that it fits the data set; ValueError otherwise.

    Checks that ``label_set`` belongs to a data set of ``num_classes`` classes (CIFAR-10N's sets
    have 10, CIFAR-100N's ``noisy`` 100), that the file holds that set (a CIFAR-100N file has no
    ``aggre_label``), and that it labels ``num_train`` training images; None skips a check.
    """
    key, k = _check_label_set(label_set)
    if num_classes is not None and num_classes != k:
        which = "CIFAR-10N" if k == 10 else "CIFAR-100N"
        raise ValueError(
            f"noise.label_set {label_set!r} is a {which} label set ({k} classes), but the data set has "
            f"{num_classes} classes"
        )
    _, clean = load_human_labels(label_file, label_set)
    if num_train is not None and clean.size != num_train:
        raise ValueError(
            f"{label_file} labels {clean.size} images, but the data set has {num_train} training images; "
            "is it the label file of another data set?"
        )


def _check_human(spec: NoiseSpec, num_classes: int | None, check_files: bool) -> None:
    _, k = _check_label_set(spec.label_set)
    if num_classes is not None and num_classes != k:
        raise ValueError(f"noise.label_set {spec.label_set!r} has {k} classes, but num_classes={num_classes}")
    if check_files:
        _label_path(spec.label_file)
    elif spec.label_file is None:
        _label_path(None)


@register_kind("human", check=_check_human)
def human(labels: np.ndarray, spec: NoiseSpec, *, num_classes: int, **_) -> np.ndarray:
    """The human labels of ``spec.label_set`` (``rate`` is ignored; the seed is not used).

    ``labels`` must be the file's ``clean_label`` in the same order: anything else means the
    images are not aligned with the human labels.
    """
    noisy, clean = load_human_labels(spec.label_file, spec.label_set)
    if labels.size != clean.size:
        raise ValueError(
            f"noise kind 'human': {spec.label_file} holds {clean.size} labels but {labels.size} were given; "
            f"for a subset of the training set use noise.load_human_labels and index its result"
        )
    disagree = np.flatnonzero(labels != clean)
    if disagree.size:
        i = int(disagree[0])
        raise ValueError(
            f"noise kind 'human': the given labels disagree with clean_label of {spec.label_file} at "
            f"{disagree.size} of {labels.size} positions (first at index {i}: {labels[i]} vs {clean[i]}); "
            f"the images are not in the original CIFAR training order"
        )
    if noisy.min(initial=0) < 0 or noisy.max(initial=0) >= num_classes:
        raise ValueError(f"{spec.label_file}: {spec.label_set} labels fall outside [0, {num_classes})")
    return noisy

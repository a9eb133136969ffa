"""CIFAR-10 and CIFAR-100 in their python-version layout (``cifar-10-batches-py``,
``cifar-100-python``), read by the project itself.

torchvision's reader checks md5 sums that re-made files fail, so torchvision is used only to
download an archive when a config asks (``data.download``). The batches are pickles that may come
from anywhere (a lab share), so `load_cifar_pickle` reads them with an unpickler that builds numpy
arrays and plain containers and nothing else (``noise.safeload``'s allowlist): a file naming
any other callable is refused with ``UnsafeFileError`` before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.datasets import ImageData, register_dataset
from noise.safeload import ARRAY_GLOBALS, UnsafeFileError, refusal

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


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


def _cifar_folder(root: Path, layout: _CifarLayout, download: bool) -> Path:
    """The folder that holds the pickles: `root/<folder>`, or `root` itself."""
    for candidate in (root / layout.folder, root):
        if (candidate / layout.train_files[0]).is_file():
            return candidate
    if download:
        import torchvision

        # torchvision only fetches and unpacks: its reader checks md5 sums that re-made files fail
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
    try:  # restricted to numpy's array globals: a crafted batch cannot run code (noise.safeload)
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


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only numpy's array globals (the only ones a CIFAR batch names).

    Every global a pickle calls is looked up through `find_class` first (GLOBAL, STACK_GLOBAL and
    the copyreg extension codes alike), so refusing here refuses before anything is called.
    """

    def __init__(self, file, path: str | os.PathLike):
        super().__init__(file, encoding="bytes")  # the official batches are Python 2 pickles
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        obj = ARRAY_GLOBALS.get(f"{module}.{name}")
        if obj is None:
            raise refusal(self._path, f"{module}.{name}", "a CIFAR batch")
        return obj


def load_cifar_pickle(path: str | os.PathLike) -> Any:
    """One CIFAR python-version file (``data_batch_1``, ``test_batch``, ``batches.meta``, ``train``, ...).

    Raises `UnsafeFileError` for a file that names anything but numpy's array globals, and
    pickle's own errors for one that is not a pickle.
    """
    with open(path, "rb") as f:
        return _CifarUnpickler(f, path).load()


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

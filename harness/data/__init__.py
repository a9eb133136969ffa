"""The data a trial trains on: data sets with their clean labels, the trial's noisy labels, and the
batch loaders.

- `datasets`: the registry of data sets (`DATASETS`, `register_dataset`), `ImageData` and
  `load_dataset`; digits and synthetic images live there, CIFAR in `cifar`, ImageFolder trees in
  `imagefolder` (importing this package registers them all).
- `loaders`: `TensorLoader` (in-memory images on the device, augmented there) and `FolderLoader`
  (JPEGs decoded in workers or on the device, `jpeg`), both yielding `Batch(x, y, clean, index)`.

Imports torch, numpy, PIL and the `noise` package; nothing else of the harness but `harness.keys`.
"""

# isort: off
# registers the data sets, in the order their names are listed to users (choose from ...)
from harness.data import digits, cifar, imagefolder, synthetic  # noqa: F401

# isort: on
from harness.data.datasets import (
    DATASETS,
    Dataset,
    ImageData,
    config_problems,
    load_dataset,
    path_problem,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "ImageData",
    "config_problems",
    "load_dataset",
    "path_problem",
    "register_dataset",
]

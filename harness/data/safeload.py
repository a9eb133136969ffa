"""Reading files the harness did not write, without letting them run code.

Researchers hand the harness files from elsewhere (CIFAR batches from a lab share, label files
from a paper's page, checkpoints from a cluster node). All of them are pickle-based, and a
pickle names callables that the loader calls, so each is read against an allowlist:

- CIFAR-10/100 python batches: `load_cifar_pickle`, a restricted unpickler that builds dicts,
  lists, bytes, str, numbers and numpy arrays, nothing else;
- CIFAR-N label files: ``noise.load_human_labels``, which reads them with
  ``noise.safeload.torch_load`` (``weights_only=True`` plus numpy's array globals);
- checkpoints (``checkpoint/state.pt``, read on resume): `load_checkpoint`, plain
  ``weights_only=True``: tensors, plain containers, numbers, strings. `plain` keeps what the
  engine saves in that form. The ``inference_head.pt`` artifact ({"arch", "state_dict"}) loads
  the same way: ``torch.load(path, weights_only=True)``.

The allowlist of numpy globals and `UnsafeFileError` live in ``noise.safeload`` (the bottom
layer, so that ``noise`` reads CIFAR-N without importing ``harness``); this module builds the
harness's own readers on them, so each rule has one source. A refused file raises
`UnsafeFileError` (a ValueError) naming the file and what it refers to, before anything in it ran;
``harness train`` prints it and exits 2.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

from noise.safeload import ARRAY_GLOBALS, UnsafeFileError, refusal, torch_load

__all__ = ["UnsafeFileError", "load_checkpoint", "load_cifar_pickle", "plain"]


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


CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "history", "rng"}
CHECKPOINT_ADVICE = (
    ": a harness checkpoint holds only tensors, numbers, strings and plain containers. This file was "
    "written by something else, or by an older harness in a form that can run code when loaded; "
    "retrain (start the run anew instead of resuming it)"
)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``harness.train.engine.save_checkpoint``, read with ``weights_only=True``.

    Anything else in the file raises `UnsafeFileError`; a file torch cannot read, ValueError.
    """
    state = torch_load(path, holds="a harness checkpoint", advice=CHECKPOINT_ADVICE)
    if not isinstance(state, dict) or CHECKPOINT_KEYS - set(state):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path}: not a harness checkpoint (it holds {found}; expected {sorted(CHECKPOINT_KEYS)})"
        )
    return state


def plain(obj: Any, where: str = "state") -> Any:
    """`obj` in the form a ``weights_only=True`` load accepts: numpy numbers become Python numbers
    and numpy arrays lists; tensors, numbers, strings and dicts/lists/tuples of them stay.

    Anything else raises TypeError naming where it sits (`where`), when the checkpoint is written
    rather than when a resumed run cannot read it.
    """
    if isinstance(obj, np.generic):  # first: np.float64 is a float, but it pickles as a numpy scalar
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only tensors, "
        "numbers, strings and dicts/lists of them, so that it loads without running code"
    )

"""Reading files we did not write without letting them run code: the rule and its torch half.

Pickle-based files (the CIFAR python batches, torch ``.pt`` files) name Python callables that
the loader calls while reading, so a crafted file runs code the moment it is opened. Every such
file the project reads therefore goes through an allowlist of the few globals that its data
needs: numpy's array (and scalar) constructors and dtypes, nothing else. A file that names
anything else is refused with `UnsafeFileError` before any of it is called.

This module is the one source of that rule. It lives in ``noise`` (the bottom layer, numpy at
its core) so that ``noise.human`` can read CIFAR-N label files without importing ``harness``;
``harness.data.cifar`` builds the CIFAR-batch reader on it and ``harness.train.checkpoint`` the
checkpoint reader. torch is
imported only when a ``.pt`` file is read.
"""

from __future__ import annotations

import codecs
import os
import pickle
import re
from typing import Any

import numpy as np

try:  # numpy >= 2 (numpy 1.x pickles say numpy.core, numpy 2 pickles numpy._core: the same objects)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class UnsafeFileError(ValueError):
    """A file names something that could run code when loaded; it was refused and nothing in it ran."""


def _both_names(module: str, name: str, obj: object) -> dict[str, object]:
    return {f"numpy.core.{module}.{name}": obj, f"numpy._core.{module}.{name}": obj}


# Dotted name -> the object a file may refer to by that name. Each one only builds a numpy value
# from plain data (bytes, numbers, dtypes): none calls anything the file chooses.
ARRAY_GLOBALS: dict[str, object] = {
    **_both_names("multiarray", "_reconstruct", _multiarray._reconstruct),  # ndarray, protocols 0-4
    **_both_names("numeric", "_frombuffer", _numeric._frombuffer),  # ndarray, pickle protocol 5
    **_both_names("multiarray", "scalar", _multiarray.scalar),  # numpy scalars, e.g. in a label list
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    # Python 3 writes bytes this way at pickle protocols 0-2 (torch's own loader allows it too)
    "_codecs.encode": codecs.encode,
}


def _dtype_classes() -> list[type]:
    """numpy >= 1.25 builds dtypes as instances of per-type classes (numpy.dtypes.Int64DType, ...);
    torch's restricted loader wants those classes named too. Numbers and booleans only."""
    codes = np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"
    return sorted({type(np.dtype(c)) for c in codes}, key=lambda t: t.__name__)


def refusal(path: str | os.PathLike, found: str, holds: str, advice: str = "") -> UnsafeFileError:
    """The error for a file that names `found` (a dotted global), which `holds` never contains."""
    return UnsafeFileError(
        f"{path} refers to {found}, which {holds} never holds; refusing to load it{advice}"
    )


# torch names the first global it refused in one of these phrasings
_TORCH_REFUSED = (
    re.compile(r"GLOBAL ([\w.]+)"),
    re.compile(r"but got <class '([\w.]+)'>"),
    re.compile(r"reduce for ([\w.]+)"),
)


def torch_load(path: str | os.PathLike, *, holds: str, arrays: bool = False, advice: str = "") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, plain containers, numbers and strings.

    ``arrays=True`` also admits numpy arrays (the `ARRAY_GLOBALS` and the numeric dtype classes),
    as in the official CIFAR-N label files. A file that names anything else raises
    `UnsafeFileError` ("<path> refers to posix.system, which <holds> never holds; refusing to
    load it<advice>"); one torch cannot read at all raises ValueError.
    """
    import torch  # lazy: only .pt files need torch

    allowed: list[Any] = []
    if arrays:
        allowed = [(obj, name) for name, obj in ARRAY_GLOBALS.items()] + _dtype_classes()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        for pattern in _TORCH_REFUSED:
            found = pattern.search(text)
            if found:
                raise refusal(path, found.group(1), holds, advice) from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0]
        raise ValueError(f"{path}: not a readable torch file ({detail})") from None
    except (EOFError, RuntimeError) as exc:  # empty, truncated or not a torch file at all
        raise ValueError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None

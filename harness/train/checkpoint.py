"""Checkpoints: what a resumed trial needs to reach the same result, written atomically and read
without running code.

A checkpoint (``<trial folder>/checkpoint/state.pt``, harness.run.layout) holds the weights, the SGD
buffers, the schedule, torch's RNG, the epoch and the history of metrics, in a form that
``torch.load(weights_only=True)`` accepts: tensors, numbers, strings and plain containers (`plain`).
It may come from another machine (an export copied back), so `load_checkpoint` refuses anything
else with ``noise.safeload.UnsafeFileError``, before any of it runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noise.safeload import UnsafeFileError, torch_load

__all__ = ["UnsafeFileError", "checkpoint_state", "load_checkpoint", "plain", "save_checkpoint"]


CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "history", "rng"}
CHECKPOINT_ADVICE = (
    ": a harness checkpoint holds only tensors, numbers, strings and plain containers. This file was "
    "written by something else, or by an older harness in a form that can run code when loaded; "
    "retrain (start the run anew instead of resuming it)"
)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``harness.train.checkpoint.save_checkpoint``, read with ``weights_only=True``.

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


def checkpoint_state(
    model, optimizer, scheduler, epoch: int, history: list[dict], device, *, rng: torch.Tensor | None = None
) -> dict:
    """What a resumed run needs to reach the same result: weights, SGD buffers, schedule, RNG, epoch.

    `rng`: torch's CPU generator state to record (a pack member's own); torch's current one without."""
    rng = {"torch": torch.get_rng_state() if rng is None else rng}
    rng["cuda"] = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "history": plain(history, "history"),  # plain numbers: loads with weights_only=True
        "rng": rng,
    }


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a killed process leaves the previous checkpoint, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)

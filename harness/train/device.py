"""Where a trial trains and from which seed: `resolve_device` ("auto" is CUDA where there is one),
`fresh_device` (its peak-memory count started anew), `Place` (a device and the data-parallel world
around this process) and `seed_everything`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
import torch

from harness.train.ddp import ALONE, World


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{name!r} asked for, but CUDA is not available here; use cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CUDA too
    np.random.seed(seed)  # only for third-party code; ours passes Generators explicitly


def fresh_device(name: str) -> torch.device:
    """The device a trial trains on (`resolve_device`), with its peak-memory count started anew (CUDA):
    gpu/peak_mem_mb is the trial's own, also after other trials in this process (`harness run`)."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a data-parallel worker's own card
    if device.type == "cuda":
        gc.collect()  # free what earlier trials left in the caching allocator
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return device


@dataclass(frozen=True)
class Place:
    """Where the members of a pack train: their device, and the data-parallel world this process is
    part of (harness.train.ddp; a world of one when it trains alone)."""

    device: torch.device
    world: World = ALONE

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA; nothing on the CPU): before and after a timing."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def peak_mem_mb(self) -> float | None:
        """The device's peak allocated memory since its count was started (CUDA), else None."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None

"""The `optim` and `run` sections of a trial config: how the engine trains (SGD, schedule, label loss)
and where and how a trial runs (device, precision, checkpoints, data-parallel workers); each key
declared once (harness.keys). The engine reads these sections themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from harness.collab.config import CollabConfig
from harness.collab.losses import LABEL_LOSSES
from harness.data.config import NoiseConfig
from harness.keys import at_least, described, in_range, key, shown
from harness.train.optim import SCHEDULES


def _epochs(value: list) -> str | None:
    if all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in value):
        return None
    return f"must be a list of epochs >= 1, got {value!r}"


def _device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return None
    return f"must be auto, cpu, cuda or cuda:N, got {value!r}"


@dataclass
class OptimConfig:
    epochs: int = key(30, "epochs of training", check=at_least(1))
    batch_size: int = key(128, "images per step (the global batch when data-parallel)", check=at_least(1))
    lr: float = key(0.1, "base learning rate (SGD)", check=in_range(0, math.inf, lo_open=True), packs=True)
    momentum: float = key(0.9, "SGD momentum", check=in_range(0, 1, hi_open=True), packs=True)
    nesterov: bool = key(True, "Nesterov momentum")
    weight_decay: float = key(
        5e-4, "L2 weight decay (coupled, as torch.optim.SGD)", check=at_least(0), packs=True
    )
    schedule: str = key("cosine", "learning-rate schedule, per step", choices=SCHEDULES, what="schedule")
    milestones: list | None = key(
        None,
        "epochs at which a step schedule multiplies lr by gamma",
        check=described(_epochs, "a list of epochs >= 1"),
    )
    gamma: float = key(0.1, "a step schedule's factor at each milestone", check=in_range(0, 1, lo_open=True))
    warmup_epochs: int = key(
        0, "linear warm-up of the learning rate over these first epochs", check=at_least(0)
    )
    label_loss: str = key(
        "ce",
        "every head's label term: ce (cross-entropy), gce (generalized CE, Zhang & Sabuncu 2018), sce "
        "(symmetric CE, Wang et al. 2019)",
        choices=LABEL_LOSSES,
        what="label loss",
        packs=True,
    )
    label_smoothing: float = key(
        0.0,
        "eps of smoothed cross-entropy (label_loss ce only)",
        check=in_range(0, 1, hi_open=True),
        packs=True,
    )
    gce_q: float = key(0.7, "GCE's q (the paper's value)", check=in_range(0, 1, lo_open=True), packs=True)
    sce_alpha: float = key(
        0.1, "SCE's weight of cross-entropy (the paper's CIFAR-10 value)", check=at_least(0), packs=True
    )
    sce_beta: float = key(1.0, "SCE's weight of reverse cross-entropy", check=at_least(0), packs=True)


@dataclass
class RunConfig:
    seed: int = key(
        0,
        "the trial's seed: init, data order, augmentation and the noise draw",
        # numpy's legacy seeding (third-party code's RNG, seed_everything) takes 32 bits
        check=described(
            lambda v: None if 0 <= v < 2**32 else f"must be an integer in [0, 2**32), got {shown(v)}",
            "in [0, 2**32)",
        ),
        packs=True,
    )
    device: str = key(
        "auto", "auto (CUDA where there is one), cpu, cuda or cuda:N", check=described(_device, "")
    )
    amp: bool = key(True, "bf16 autocast on CUDA; ignored on the CPU")
    cuda_graph: bool = key(True, "capture the training step in a CUDA graph on CUDA")
    channels_last: bool = key(True, "channels-last memory format on CUDA")
    branch_streams: bool = key(
        False,
        "on CUDA with a captured step: the sibling branches below each fork of a collaborative graph on "
        "streams of their own; off until a GPU run decides",
    )
    checkpoint_every: int = key(
        1,
        "epochs between checkpoints (the last always); 0: only the last",
        check=at_least(0, " (0: never)"),
        packs=True,
    )
    stop_on_collapse: int = key(
        0,
        "end a trial whose kept head has been collapsed (train/collapsed) for this many epochs in a row; "
        "0: never. The run finishes (tagged harness.collapsed=true), so Ray does not retry it",
        check=at_least(0, " epochs (0: never)"),
        packs=True,
    )
    workers: int = key(
        1,
        "data-parallel processes of one trial (PyTorch DDP launched by Ray Train); 1: a single process. "
        "optim.batch_size stays the global batch",
        check=described(
            lambda v: None if v >= 1 else f"must be a positive integer (1: one process), got {v}",
            ">= 1 (1: one process)",
        ),
    )
    sync_bn: bool = key(False, "with workers > 1: BatchNorm statistics over the global batch (SyncBatchNorm)")


class Recipe(Protocol):
    """What the engine reads of a trial config: its optim, collab and run sections, and its noise
    section for a forget rate `auto` (a harness.config.TrialConfig is one)."""

    optim: OptimConfig
    collab: CollabConfig
    run: RunConfig
    noise: NoiseConfig

"""Where a trial trains and from which seed: `resolve_device` ("auto" is CUDA where there is one) and
`seed_everything`.
"""

from __future__ import annotations

import numpy as np
import torch


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

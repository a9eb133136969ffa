"""Where a trial runs and with what code: the tags every trial run carries.

Needs only the standard library and torch, so `harness run` records them on a machine without
MLflow (they travel in the trial folder, and `harness sync` logs them later); `harness.tracking`
logs them directly.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

from harness.contract import (
    CUDA_TAG,
    DEVICE_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    GPU_TAG,
    HOST_TAG,
    MPS_PIPE_TAG,
    PYTHON_TAG,
    TORCH_TAG,
)


def code_tags() -> dict[str, str]:
    """The git commit of the code that runs (and whether it had uncommitted changes)."""
    repo = Path(__file__).resolve().parents[2]
    tags = {PYTHON_TAG: platform.python_version()}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return tags  # not a git checkout (an installed wheel, a copied tree) or no commit yet
    return {**tags, GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(dirty)).lower()}


def runtime_tags(device: str = "auto") -> dict[str, str]:
    """Where a trial runs: device, torch and CUDA versions, host. Call it in the trial's process."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tags = {
        DEVICE_TAG: device,
        TORCH_TAG: torch.__version__,
        CUDA_TAG: torch.version.cuda or "none",
        HOST_TAG: socket.gethostname(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        tags[GPU_TAG] = torch.cuda.get_device_name(torch.device(device))
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):  # `harness sweep --mps`: the GPU is shared under MPS
        tags[MPS_PIPE_TAG] = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
    return tags

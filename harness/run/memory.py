"""Will a pack fit its device? Checked before a pack starts (CUDA), rather than found out of memory
mid-sweep: the members' weights are on the device already; each still needs its step's memory and
its loader's prepared batches.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from harness.collab import loss_scale
from harness.run.trial import TrialJob
from harness.train.objective import build_objective
from harness.train.optim import SGD
from harness.train.step import EagerStep


class PackTooLarge(RuntimeError):
    """The pack will not fit the device's memory (found before training starts)."""


def check_memory(jobs: Sequence[TrialJob], device: torch.device) -> None:
    """Refuse (PackTooLarge, with the numbers) a pack whose training would not fit the device's free
    memory, before it starts rather than out of memory mid-sweep. The members' weights are on the
    device already; each still needs its step's memory (gradients, momentum, activations, measured
    with one eager step of a copy of the first member) and its loader's prepared batches."""
    step_bytes = measure_step_bytes(jobs[0], device)
    loader = jobs[0].train_loader
    batch_bytes = loader.batches_per_chunk * loader.batch_size * 4 * loader.images[0].numel()
    free, _ = torch.cuda.mem_get_info(device)
    problem = memory_problem(len(jobs), step_bytes + batch_bytes, free, step_bytes=step_bytes)
    if problem:
        raise PackTooLarge(problem)


def memory_problem(members: int, per_member: int, free: int, *, step_bytes: int | None = None) -> str | None:
    """Why `members` members needing `per_member` bytes each do not fit `free` bytes (10 % kept spare
    for the allocator's rounding and the CUDA graph's pool), or None when they fit."""
    need = members * per_member
    if need <= 0.9 * free:
        return None
    fit = int(0.9 * free // per_member) if per_member else members
    gib = 2**30
    detail = f"{members} x {per_member / gib:.2f} GiB"
    if step_bytes is not None:
        detail += f" (each {step_bytes / gib:.2f} GiB for its step, {(per_member - step_bytes) / gib:.2f} GiB of batches)"
    return (
        f"a pack of {members} needs about {need / gib:.1f} GiB more device memory ({detail}), but "
        f"{free / gib:.1f} GiB are free: use pack: {max(fit, 1)} or less (or a smaller batch size)"
    )


def measure_step_bytes(job: TrialJob, device: torch.device) -> int:
    """Device memory one training step of this member allocates beyond its weights (peak, eager)."""
    model = copy.deepcopy(job.graph)
    loader, cfg = job.train_loader, job.cfg
    x = torch.zeros(loader.batch_size, *loader.images.shape[1:], device=device)
    if job.cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(loader.batch_size, dtype=torch.long, device=device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    optimizer = SGD(model.parameters(), lr=0.0, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
    scale = loss_scale(cfg.collab.rescale, model.heads)
    objective = build_objective(cfg, model.heads, device=device, scale=scale, labels_rate=job.noisy.rate)
    EagerStep(model, optimizer, objective, device=device, amp=cfg.run.amp)(x, y)
    torch.cuda.synchronize(device)
    used = torch.cuda.max_memory_allocated(device) - before
    del model, optimizer, x, y
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)  # the pack's own peak starts now
    return int(used)

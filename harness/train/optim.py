"""SGD and its learning-rate schedule, safe to capture in a CUDA graph.

torch.optim.SGD reads the learning rate as a Python float (`alpha=-lr`), so a captured
step would bake in the first learning rate forever. This SGD keeps the rate in a device
tensor that is refreshed outside the graph, and does exactly torch.optim.SGD's arithmetic
(momentum, Nesterov, coupled weight decay, no dampening); a test checks the two agree.
"""

from __future__ import annotations

import math

import torch


class SGD(torch.optim.Optimizer):
    """torch.optim.SGD's update with the learning rate held in a tensor (CUDA-graph safe)."""

    def __init__(
        self, params, *, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0
    ):
        if nesterov and momentum <= 0:
            raise ValueError(f"nesterov momentum needs momentum > 0, got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        self._lr_tensors: dict[int, torch.Tensor] = {}

    def _lr_tensor(self, index: int, group: dict) -> torch.Tensor:
        device = group["params"][0].device
        if index not in self._lr_tensors:
            self._lr_tensors[index] = torch.tensor(float(group["lr"]), device=device)
        return self._lr_tensors[index]

    def sync_lr(self) -> None:
        """Copy each group's float lr into its tensor; call outside graph capture (the engine does)."""
        for index, group in enumerate(self.param_groups):
            self._lr_tensor(index, group).fill_(float(group["lr"]))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("this SGD takes no closure")
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        if not capturing:
            self.sync_lr()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            momentum, wd = group["momentum"], group["weight_decay"]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if momentum:
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        # torch.optim.SGD starts the buffer at the first gradient; 0 * m + g is the same
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                if group["nesterov"]:
                    grads = torch._foreach_add(grads, bufs, alpha=momentum)
                else:
                    grads = bufs
            torch._foreach_add_(params, torch._foreach_mul(grads, self._lr_tensor(index, group)), alpha=-1.0)
        return None


# cosine: decay to 0 at the end of training; step: times gamma at each milestone epoch
SCHEDULES = ("cosine", "step")


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    epochs: int,
    schedule: str = "cosine",
    milestones: list[int] | None = None,
    gamma: float = 0.1,
    warmup_epochs: int = 0,
) -> float:
    """Multiplier of the base learning rate before optimizer step `step` (0-based), per step.

    Linear warm-up over `warmup_epochs`, then cosine decay to 0 at the end of training, or
    a step schedule that multiplies by `gamma` at each milestone epoch (1-based epochs:
    milestone 100 means epochs 101 on use lr * gamma).
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        epoch = step // steps_per_epoch
        return gamma ** sum(epoch >= m for m in (milestones or []))
    raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, **schedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `lr_factor`; call scheduler.step() after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, **schedule)
    )


def ramp_factor(step: int, ramp_steps: int) -> float:
    """Linear ramp from 0 before the first step to 1 after ``ramp_steps`` steps (1 when ramp_steps <= 0)."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)

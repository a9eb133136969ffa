"""What a member trains with: its optimizer, its per-step schedule, its step and its soft-target ramp
(`setup_training`), used by the loop, `harness bench` and the GPU checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness.collab import loss_scale
from harness.train.config import Recipe
from harness.train.ddp import ALONE, World, data_parallel, loss_weight
from harness.train.objective import Objective, build_objective
from harness.train.optim import SGD, build_scheduler, ramp_factor
from harness.train.step import EagerStep, make_train_step


@dataclass
class Training:
    """What a run trains with: the optimizer, its per-step schedule, the step and the soft-target ramp.

    ``step(x, y) -> (loss, logits)``; after each, ``scheduler.step()`` and then ``after_step()``.
    """

    optimizer: SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: Callable
    ramp_steps: int
    soft_weight: float | torch.Tensor
    loss_weight: float = 1.0  # data-parallel: the step's loss is the process's mean loss times this
    objectives: list[Objective] = field(default_factory=list)  # the step's (one per head when alternating)

    def current_soft_weight(self) -> float:
        """The soft target's weight for the next step, from the scheduler's step count."""
        return ramp_factor(self.scheduler.last_epoch, self.ramp_steps)

    def start_epoch(self, epoch: int) -> None:
        """Before 1-based `epoch`: the method's schedule for it (a forget rate, a start epoch)."""
        for objective in self.objectives:
            objective.set_epoch(epoch)

    def after_step(self) -> None:
        """Refill the ramped soft weight from the scheduler's step count (also after a resume)."""
        if isinstance(self.soft_weight, torch.Tensor):
            self.soft_weight.fill_(self.current_soft_weight())


def setup_training(
    model: torch.nn.Module,
    cfg: Recipe,
    *,
    device,
    steps_per_epoch: int,
    batch_size: int,
    world: World = ALONE,
    own_graph: bool = True,
    labels_rate: float | None = None,
) -> Training:
    """SGD, its schedule and the fastest step the device allows, for `fit`, `harness bench` and the GPU checks.

    The loss is the trial's objective (harness.train.objective: its method with the optim section's
    label loss as every head's label term), scaled by 1/H for rescale "loss". Collaborative learning's
    soft target has weight 1 (the paper), or is ramped in from 0 over the first
    collab.soft_rampup_epochs as a device tensor refilled outside any captured graph (`Training.after_step`).
    Data-parallel (`world`): the steps run the graph wrapped in DDP (harness.train.ddp), eagerly (DDP's
    all-reduce is not captured in a CUDA graph); `batch_size` is the global batch. `own_graph`
    False: an eager step even on CUDA, for a member of a pack whose steps are captured together.
    `labels_rate`: the share of the training labels that are wrong (harness.train.objective).
    """
    device = torch.device(device)
    optim, collab, run = cfg.optim, cfg.collab, cfg.run
    trained, weight = model, 1.0
    if world.parallel:
        trained = data_parallel(model, device)
        weight = loss_weight(batch_size, world)
    optimizer = SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
    )
    scheduler = build_scheduler(
        optimizer,
        steps_per_epoch=steps_per_epoch,
        epochs=optim.epochs,
        schedule=optim.schedule,
        milestones=optim.milestones,
        gamma=optim.gamma,
        warmup_epochs=optim.warmup_epochs,
    )
    ramp_steps = collab.soft_rampup_epochs * steps_per_epoch
    soft_weight: float | torch.Tensor = torch.tensor(0.0, device=device) if ramp_steps else 1.0
    objective = dict(
        device=device,
        scale=loss_scale(collab.rescale, model.heads) * weight,
        soft_weight=soft_weight,
        labels_rate=labels_rate,
    )
    if collab.update == "alternating":
        # one step per head in turn; each head's loss only, so only its path is updated
        objectives = [build_objective(cfg, model.heads, **objective, head=h) for h in range(model.heads)]
        steps = [EagerStep(trained, optimizer, o, device=device, amp=run.amp) for o in objectives]
        step = _alternate(steps)
    else:
        objectives = [build_objective(cfg, model.heads, **objective)]
        step = make_train_step(
            trained,
            optimizer,
            objectives[0],
            device=device,
            amp=run.amp,
            cuda_graph=run.cuda_graph and own_graph and not world.parallel,
            batch_size=batch_size,
        )
    training = Training(optimizer, scheduler, step, ramp_steps, soft_weight, weight, objectives)
    training.after_step()
    return training


def _alternate(steps: list[EagerStep]):
    counter = {"i": 0}

    def step(x, y):
        out = steps[counter["i"] % len(steps)](x, y)
        counter["i"] += 1
        return out

    return step

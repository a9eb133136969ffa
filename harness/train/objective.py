"""A trial's objective: its method (harness.collab.methods: collaborative learning, DML, Co-teaching,
Co-teaching+, JoCoR) built from its config, with the optim section's label loss as every head's label
term, the loss scaled for rescale "loss" and for data-parallel processes.

`objective(logits, target) -> (loss, kept)`: the loss to backpropagate and, for a method that selects
samples, the (H, B) bool mask of what each head trained on (harness.train.step). `set_epoch(e)`
refreshes the method's schedule (a forget rate, a start epoch) in its device tensors before epoch e,
outside any captured graph.
"""

from __future__ import annotations

import torch

from harness.collab.losses import make_label_loss
from harness.collab.methods import METHODS, Method, build_method
from harness.collab.methods.rules import method_knobs
from harness.train.config import Recipe


class Objective:
    """A method whose loss is multiplied by `scale` (1/H for rescale "loss", times the data-parallel
    weight); the method's mask as it is."""

    def __init__(self, method: Method, scale: float = 1.0):
        self.method, self.scale = method, scale

    def __call__(
        self, logits: list[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss, kept = self.method(logits, target)
        return loss * self.scale, kept

    def set_epoch(self, epoch: int) -> None:
        self.method.set_epoch(epoch)


def build_objective(
    cfg: Recipe,
    heads: int,
    *,
    device,
    scale: float = 1.0,
    soft_weight: float | torch.Tensor = 1.0,
    head: int | None = None,
    labels_rate: float | None = None,
) -> Objective:
    """The objective of a trial whose graph has `heads` heads. `soft_weight` and `head`: collaborative
    learning's soft-target weight (a float, or a device tensor a ramp refills) and one head's loss alone
    (alternating updates). `labels_rate`: the share of its training labels that are wrong (a forget
    rate `auto` of human or matrix noise)."""
    name, optim = cfg.collab.method, cfg.optim
    label_loss = make_label_loss(
        optim.label_loss,
        label_smoothing=optim.label_smoothing,
        gce_q=optim.gce_q,
        sce_alpha=optim.sce_alpha,
        sce_beta=optim.sce_beta,
        per_sample=METHODS[name].per_sample_labels,
    )
    knobs = method_knobs(cfg.collab, cfg.noise, labels_rate)
    if name == "cl":
        knobs.update(soft_weight=soft_weight, head=head)
    method = build_method(name, heads=heads, label_loss=label_loss, device=device, **knobs)
    return Objective(method, scale)

"""Collaborative learning (Song & Chai, NeurIPS 2018): every head learns from the labels and from a
soft target built from the other heads' logits at temperature T (harness.collab.objective), all
heads updated at once; with one head, plain cross-entropy (individual training).

The method of every trial unless `collab.method` names another. Its label term is the label loss's
mean over the batch, as the paper's objective is written; it selects no samples.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from harness.collab.losses import LabelLoss
from harness.collab.methods.base import Method, register_method
from harness.collab.objective import collaborative_loss


@register_method
class CollaborativeLearning(Method):
    """Song & Chai's objective over H >= 1 heads.

    Knobs: ``T`` and ``beta`` (the paper's), ``soft_weight`` (the soft target's share, a float or a
    0-dim device tensor a ramp refills between steps) and ``head`` (one head's loss alone, for
    alternating updates; None: every head's)."""

    name = "cl"
    knobs = ("T", "beta", "soft_weight", "head")
    per_sample_labels: ClassVar[bool] = False  # the label term is the batch mean (eq. 3)

    def __init__(
        self,
        *,
        heads: int,
        T: float = 2.0,
        beta: float = 0.5,
        soft_weight: float | torch.Tensor = 1.0,
        head: int | None = None,
        label_loss: LabelLoss | None = None,
        device="cpu",
    ):
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"cl: heads must be an int >= 1, got {heads!r}")
        self.heads, self.device = heads, torch.device(device)
        self.label_loss = label_loss
        self.T, self.beta, self.soft_weight, self.head = T, beta, soft_weight, head

    def __call__(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, None]:
        loss = collaborative_loss(
            logits,
            target,
            T=self.T,
            beta=self.beta,
            soft_weight=self.soft_weight,
            head=self.head,
            label_loss=self.label_loss,
        )
        return loss, None

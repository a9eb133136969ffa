"""Co-teaching+ (Yu, Han, Yao, Niu, Tsang & Sugiyama, ICML 2019).

Co-teaching until epoch ``init_epoch``; from then on, only the samples on which the two heads'
predictions (argmax) disagree take part: within that disagreement set D each head keeps its
``int((1 - R) * |D|)`` smallest-loss samples and its peer trains on them (Co-teaching's exchange).

When D is empty, or the kept count is 0, both losses are 0 and nothing is learnt from the batch (the
gradient is zero; an optimizer's momentum and weight decay still act). The official code does
otherwise in both cases (see docs/methods.md).
"""

from __future__ import annotations

import torch

from harness.collab.methods.base import register_method
from harness.collab.methods.coteaching import exchange
from harness.collab.methods.selection import SelectingMethod, keep_count

CIFAR10_INIT_EPOCH = 20  # the official code's start epoch on CIFAR-10 (5 on CIFAR-100, 0 on MNIST)


@register_method
class CoTeachingPlus(SelectingMethod):
    """Co-teaching+ of two heads: Co-teaching's knobs and ``init_epoch``, the first (1-based) epoch
    trained on the disagreement set; 0 or 1 means from the start."""

    name = "coteaching_plus"
    knobs = (*SelectingMethod.knobs, "init_epoch")

    def __init__(self, *, init_epoch: int = CIFAR10_INIT_EPOCH, **selection):
        """``selection``: `SelectingMethod`'s arguments (heads, forget_rate, T_k, exponent,
        label_loss, device)."""
        super().__init__(**selection)
        if not isinstance(init_epoch, int) or isinstance(init_epoch, bool) or init_epoch < 0:
            raise ValueError(f"{self.name}: init_epoch must be an int >= 0, got {init_epoch!r}")
        self.init_epoch = init_epoch
        # a device flag, not a Python branch: the captured step reads it on every replay
        self._disagree = torch.zeros((), dtype=torch.bool, device=self.device)
        self._disagree.fill_(init_epoch <= 1)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._disagree.fill_(epoch >= self.init_epoch)

    def __call__(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._float_logits(logits)
        losses = (self.label_loss(z[0], target), self.label_loss(z[1], target))
        # The pool the heads select from: the disagreement set once started, the whole batch before.
        pool = (z[0].argmax(dim=1) != z[1].argmax(dim=1)) | ~self._disagree
        return exchange(losses, keep_count(self._keep, pool.sum()), among=pool)

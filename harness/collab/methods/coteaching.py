"""Co-teaching (Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, NeurIPS 2018).

Two heads; each ranks the batch by its own per-sample label loss and keeps the ``k = int((1 - R) * B)``
samples with the smallest loss; each head is then trained on the samples its peer kept:

    loss = mean_{b in kept_2} label_1(b) + mean_{b in kept_1} label_2(b)

R follows `harness.collab.methods.selection.forget_rate`. The official code divides the kept mean once more by
k (see docs/methods.md); we take the paper's mean over the kept samples.
"""

from __future__ import annotations

import torch

from harness.collab.methods.base import register_method
from harness.collab.methods.selection import SelectingMethod, keep_count, masked_mean, small_loss_mask


def exchange(
    losses: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, among: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-teaching's cross update: (loss, (2, B) mask); row h is the samples head h trains on, the
    ``k`` smallest of its peer's ``losses`` (each (B,)), taken among ``among`` (B,) bool if given."""
    kept_by_1 = small_loss_mask(losses[0], k, among)
    kept_by_2 = small_loss_mask(losses[1], k, among)
    mask = torch.stack([kept_by_2, kept_by_1])
    return masked_mean(losses[0], mask[0]) + masked_mean(losses[1], mask[1]), mask


@register_method
class CoTeaching(SelectingMethod):
    """Co-teaching of two heads; knobs ``forget_rate`` (tau), ``T_k`` = 10, ``exponent`` (c) = 1."""

    name = "coteaching"

    def __call__(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._float_logits(logits)
        losses = (self.label_loss(z[0], target), self.label_loss(z[1], target))
        return exchange(losses, keep_count(self._keep, target.shape[0]))

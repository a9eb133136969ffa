"""JoCoR, joint training with co-regularization (Wei, Feng, Chen & An, CVPR 2020).

Two heads share one per-sample loss, their label losses plus the symmetric KL divergence between
their predictions (gradients flow through both sides, as in the paper and the official code):

    l(b) = (1 - lambda) * (label_1(b) + label_2(b)) + lambda * (KL(p_1 || p_2) + KL(p_2 || p_1))

Both heads are trained on the ``int((1 - R) * B)`` samples with the smallest joint loss, one mean over
them; R follows `harness.collab.methods.selection.forget_rate`.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from harness.collab.methods.base import register_method
from harness.collab.methods.selection import SelectingMethod, keep_count, masked_mean, small_loss_mask

CIFAR10_LAMBDA = 0.9  # the README's best lambda for CIFAR-10 at 20 %, 50 % and asymmetric 40 % noise


def symmetric_kl(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(B,) ``KL(p1 || p2) + KL(p2 || p1) = sum_k (p1 - p2) * (log p1 - log p2)`` of logits (B, K).

    From log_softmax in float32, so no 0 * log 0 appears. The official code feeds softmax
    probabilities to F.kl_div as the target, which carries gradient: where a probability underflows
    to 0, the target's gradient log(0) + 1 = -inf meets softmax's backward 0 and gives NaN."""
    log_p1, log_p2 = F.log_softmax(z1.float(), dim=1), F.log_softmax(z2.float(), dim=1)
    return ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(dim=1)


@register_method
class JoCoR(SelectingMethod):
    """JoCoR of two heads: Co-teaching's knobs and ``lambda_``, the weight of the co-regularization
    (the official argparse default is 0.1; we default to the README's CIFAR-10 value)."""

    name = "jocor"
    knobs = (*SelectingMethod.knobs, "lambda_")

    def __init__(self, *, lambda_: float = CIFAR10_LAMBDA, **selection):
        """``selection``: `SelectingMethod`'s arguments (heads, forget_rate, T_k, exponent,
        label_loss, device)."""
        super().__init__(**selection)
        if not isinstance(lambda_, numbers.Real) or isinstance(lambda_, bool) or not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"{self.name}: lambda_ must be a number in [0, 1], got {lambda_!r}")
        self.lambda_ = float(lambda_)

    def __call__(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._float_logits(logits)
        label = self.label_loss(z[0], target) + self.label_loss(z[1], target)
        joint = (1.0 - self.lambda_) * label + self.lambda_ * symmetric_kl(z[0], z[1])
        kept = small_loss_mask(joint, keep_count(self._keep, target.shape[0]))
        return masked_mean(joint, kept), torch.stack([kept, kept])

"""Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018).

Each head i minimises its label loss plus the mean KL divergence from every peer's prediction to its
own, at temperature 1, the peers' predictions held constant:

    loss_i = mean_b label_i + 1 / (H - 1) * sum_{j != i} mean_b KL(p_j || p_i),   p = softmax(z)

The returned loss is ``sum_i loss_i``; since p_j is detached in loss_i, head i's gradient is that of
its own loss_i alone. All heads are updated at once from one forward pass; the paper's Algorithm 1
updates them in turn and recomputes the predictions in between (see docs/methods.md). The official
TensorFlow code sums over peers instead of averaging; the two agree for H = 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.collab.methods.base import Method, register_method


@register_method
class DeepMutualLearning(Method):
    """DML over H >= 2 heads; no knobs, no selection, nothing to refresh per epoch."""

    name = "dml"

    def __call__(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, None]:
        z = self._float_logits(logits)
        H = self.heads
        log_p = torch.stack([F.log_softmax(zh, dim=1) for zh in z])  # (H, B, K)
        peer_log_p = log_p.detach()
        peer_p = peer_log_p.exp()
        # sum_{j != i} KL(p_j || p_i) = sum_{j != i} sum_k p_j (log p_j - log p_i), for every i at once:
        # the all-heads sums minus head i's own term. From log-probabilities, so 0 * log 0 never occurs.
        neg_entropy = (peer_p * peer_log_p).sum(dim=2)  # (H, B)
        others_p = peer_p.sum(dim=0, keepdim=True) - peer_p  # (H, B, K)
        kl_sum = (neg_entropy.sum(dim=0, keepdim=True) - neg_entropy) - (others_p * log_p).sum(dim=2)
        label = torch.stack([self.label_loss(zh, target) for zh in z])  # (H, B)
        loss = label.mean(dim=1) + kl_sum.mean(dim=1) / (H - 1)
        return loss.sum(), None

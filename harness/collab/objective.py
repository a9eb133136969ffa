"""Collaborative learning's objective (eq. 3 of Song & Chai): every head learns from the labels and
from a soft target built from the other heads' logits at temperature T.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def collaborative_loss(
    logits: Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    T: float,
    beta: float,
    per_head: bool = False,
    soft_weight: float | torch.Tensor = 1.0,
    head: int | None = None,
    label_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Song & Chai's objective summed over heads (eq. 3 of the paper).

    ``logits``: H tensors of shape (N, K); ``target``: (N,) int64 class indices. For head h,
    ``loss_h = beta * CE(z_h, y) + (1 - beta) * T^2 * mean_n(-sum_k q_h[n, k] * log_softmax(z_h / T)[n, k])``
    with the soft target ``q_h = softmax(mean_{j != h} z_j / T)`` computed from detached logits (no
    gradient flows through it). With H = 1 it is plain ``CE(z_0, y)`` (beta is not applied).
    ``soft_weight`` w in [0, 1] (a float, or a 0-dim tensor a captured CUDA graph reads) moves the
    soft target's share in: ``(1 - (1 - beta) w) * CE + (1 - beta) w * T^2 * soft``, plain
    cross-entropy per head at w = 0 and the paper's objective at w = 1 (the default).
    Computed in float32 whatever the logits' dtype. Returns a scalar, or the (H,) per-head losses
    when ``per_head``, or head ``head``'s loss alone (for alternating updates: no other head's
    parameters take part in its backward pass, so the optimizer leaves them untouched).
    ``label_loss(z, y)``: the label term in place of ``CE(z_h, y)`` for every head (e.g. GCE, SCE or
    smoothed cross-entropy from ``harness.collab.losses.make_label_loss``); None is plain cross-entropy.
    The soft-target term is the same whatever the label loss.
    """
    if not isinstance(T, numbers.Real) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"T (temperature) must be > 0, got {T!r}")
    if not isinstance(beta, numbers.Real) or isinstance(beta, bool) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if len(logits) == 0:
        raise ValueError("logits must hold at least one head's (N, K) tensor, got an empty list")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"logits must all have the same shape (N, K), got {[tuple(z.shape) for z in logits]}"
        )
    z = [zh.float() for zh in logits]
    heads = len(z)
    hard_loss = F.cross_entropy if label_loss is None else label_loss
    if heads == 1:
        loss = hard_loss(z[0], target)
        return loss.reshape(1) if per_head else loss

    frozen = [zh.detach() for zh in z]
    losses = []
    for h in range(heads) if head is None else [head]:
        others = torch.stack([frozen[j] for j in range(heads) if j != h]).mean(dim=0)
        q = F.softmax(others / T, dim=1)
        soft = -(q * F.log_softmax(z[h] / T, dim=1)).sum(dim=1).mean()
        hard = hard_loss(z[h], target)
        share = (1.0 - beta) * soft_weight
        losses.append((1.0 - share) * hard + share * T**2 * soft)
    if head is not None:
        return losses[0]
    per = torch.stack(losses)
    return per if per_head else per.sum()

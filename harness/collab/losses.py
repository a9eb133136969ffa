"""Label losses: the term of each head's objective that reads the (possibly noisy) labels.

`harness.collab.collaborative_loss` applies one of these to every head's logits; the soft-target
term is unchanged. Cross-entropy (optionally with label smoothing) is the paper's; the two robust
losses are the usual cheap baselines of label-noise studies:

- GCE, generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): ``(1 - p_y^q) / q``, between
  cross-entropy (q -> 0) and mean absolute error (q = 1); the paper uses q = 0.7.
- SCE, symmetric cross-entropy (Wang et al., ICCV 2019): ``alpha * CE + beta * RCE`` with the reverse
  cross-entropy ``RCE = -sum_k p_k log y_k`` of the one-hot label, log 0 clamped to A = -4, so
  ``RCE = -A * (1 - p_y)``; the paper's CIFAR-10 setting is alpha = 0.1, beta = 1.0. (The authors'
  code clamps the one-hot target at 1e-4 instead, i.e. A = log 1e-4 = -9.2; we follow the paper.)

Every loss takes logits (N, K) and int64 labels (N,), computes in float32 and returns the mean over
the batch, like ``F.cross_entropy``, or each sample's loss (N,) (``per_sample``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LABEL_LOSSES = ("ce", "gce", "sce")
SCE_LOG_ZERO = -4.0  # A: Wang et al.'s clamp of log 0 in the reverse cross-entropy

LabelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _log_p_label(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) log-probability of each sample's label, in float32."""
    return F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)


def generalized_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, q: float = 0.7, per_sample: bool = False
) -> torch.Tensor:
    """Mean over the batch of ``(1 - p_y^q) / q`` (each sample's, (N,), with ``per_sample``).

    p_y^q is computed as exp(q * log p_y): its gradient stays finite where p_y underflows to 0
    (pow's backward would multiply 0 by inf there)."""
    loss = (1.0 - torch.exp(q * _log_p_label(logits, target))) / q
    return loss if per_sample else loss.mean()


def symmetric_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    per_sample: bool = False,
) -> torch.Tensor:
    """Mean over the batch of ``alpha * (-log p_y) + beta * (-A) * (1 - p_y)``, A = SCE_LOG_ZERO (each
    sample's, (N,), with ``per_sample``)."""
    log_p = _log_p_label(logits, target)
    loss = alpha * -log_p + beta * -SCE_LOG_ZERO * (1.0 - log_p.exp())
    return loss if per_sample else loss.mean()


def make_label_loss(
    name: str = "ce",
    *,
    label_smoothing: float = 0.0,
    gce_q: float = 0.7,
    sce_alpha: float = 0.1,
    sce_beta: float = 1.0,
    per_sample: bool = False,
) -> LabelLoss:
    """The label loss ``name`` (one of LABEL_LOSSES) with its settings, as ``loss(logits, target)``:
    the mean over the batch, or with ``per_sample`` each sample's (N,) (the methods that rank or
    select samples by their loss, harness.collab.methods).

    ``label_smoothing`` eps: cross-entropy against (1 - eps) * one-hot + eps / K (torch's
    definition); only with ``ce`` (GCE and SCE are robust losses of their own; the config refuses
    the combination)."""
    if name not in LABEL_LOSSES:
        raise ValueError(f"unknown label loss {name!r}; choose from {', '.join(LABEL_LOSSES)}")
    if label_smoothing and name != "ce":
        raise ValueError(f"label smoothing applies to cross-entropy (ce), not to {name}")
    if name == "gce":
        return lambda logits, target: generalized_cross_entropy(
            logits, target, q=gce_q, per_sample=per_sample
        )
    if name == "sce":
        return lambda logits, target: symmetric_cross_entropy(
            logits, target, alpha=sce_alpha, beta=sce_beta, per_sample=per_sample
        )
    reduction = "none" if per_sample else "mean"
    if label_smoothing:
        return lambda logits, target: F.cross_entropy(
            logits.float(), target, label_smoothing=label_smoothing, reduction=reduction
        )
    return lambda logits, target: F.cross_entropy(logits.float(), target, reduction=reduction)

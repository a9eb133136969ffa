"""Backpropagation rescaling (section 3.2 of Song & Chai): where a tensor feeds B branches, an op
that is the identity forward and multiplies the gradient by 1/B backward (`GradScale`), so the
gradient reaching the shared layers keeps the scale of a single network whatever the number of heads.
The alternative the paper rejects, scaling the summed loss by 1/H (`loss_scale`), and none at all are
the other modes (`RESCALE_MODES`).
"""

from __future__ import annotations

import torch
from torch import nn


class GradScale(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        # A view, not x itself: returning an input unchanged from a Function confuses autograd.
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` on the way back."""
    return GradScale.apply(x, scale)


class BackpropRescale(nn.Module):
    """Module form of :class:`GradScale`, placed where a tensor fans out to ``1 / scale`` branches."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_scale(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


# Backpropagation rescaling (the paper's method), the loss scaled by 1/H instead (the alternative the
# paper rejects), or neither.
RESCALE_MODES = ("backprop", "loss", "none")


def rescale_mode(value: object) -> str:
    """The rescale mode named by ``value``; True and False, the old spelling, mean backprop and none."""
    if value is True or value is False:
        return "backprop" if value else "none"
    if value in RESCALE_MODES:
        return str(value)
    raise ValueError(f"rescale must be one of {', '.join(RESCALE_MODES)}, got {value!r}")


def loss_scale(rescale: str, heads: int) -> float:
    """What the summed loss is multiplied by: 1/H for rescale "loss", else 1."""
    return 1.0 / heads if rescale_mode(rescale) == "loss" else 1.0

"""Small-loss selection without host syncs: the forget-rate schedule, the kept count, the kept mask.

Co-teaching, Co-teaching+ and JoCoR keep the ``1 - R`` fraction of a batch with the smallest loss.
The official codes sort on the host (``np.argsort``) and index the kept samples, a shape that depends
on the data. Here the step is captured in a CUDA graph, so selection is a fixed-shape (B,) bool mask
computed from per-sample loss ranks on the device, and the kept count is computed on the device from
the keep fraction held in a tensor that `SelectingMethod.set_epoch` refreshes.
"""

from __future__ import annotations

import torch

from harness.collab.methods.base import Method, PerSampleLoss, check_epoch, check_forget_rate, check_schedule


def forget_rate(epoch: int, tau: float, T_k: int = 10, exponent: float = 1.0) -> float:
    """Co-teaching's forget rate for 1-based ``epoch``: ``tau * min(T**exponent / T_k, 1)``.

    T = epoch - 1 is the number of epochs completed before this one (Han et al. 2018, Algorithm 1
    updates R(T) at the end of epoch T), so the first epoch keeps every sample and the full rate
    ``tau`` is reached after T_k epochs. The paper writes the kept fraction, ``R(T) = 1 - forget_rate``.
    """
    check_epoch(epoch)
    T = epoch - 1
    return tau * min(T**exponent / T_k, 1.0)


def keep_count(keep: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """0-dim int64: ``floor(keep * n)``, the number of samples kept out of ``n``.

    ``keep`` is a float64 0-dim tensor holding the Python float ``1 - R``; ``n`` a Python int or an
    integer tensor. The official codes count ``int((1 - R) * n)``: a product of two doubles, rounded
    once, then truncated. A float64 product on the device is the same IEEE operation, so floor of it is
    the same integer for every R and n. In float32 it is not: (1 - 0.16) * 75 gives 63 in double and 62
    in float32.
    """
    n = n.to(torch.float64) if isinstance(n, torch.Tensor) else n
    return torch.floor(keep * n).to(torch.int64)


def small_loss_mask(loss: torch.Tensor, k: torch.Tensor, among: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool: the ``k`` samples with the smallest ``loss`` (B,), or of those in ``among`` (B,) bool.

    Ties are broken by batch position (a stable sort); ``k`` is a 0-dim int64 tensor, at most B (at
    most ``among.sum()`` with ``among``). Ranks come from one sort and a scatter, not a second sort."""
    order = loss.detach().argsort(stable=True)  # ascending loss
    if among is not None:
        # the pool first, each part still in loss order: a stable sort of the ordered samples by "not in pool"
        order = order[(~among[order]).to(torch.uint8).argsort(stable=True)]
    positions = torch.arange(loss.shape[0], device=loss.device)
    rank = torch.empty_like(order).scatter_(0, order, positions)
    return rank < k


def masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``loss`` (B,) over ``mask`` (B,) bool; 0 (with zero gradient) when the mask is empty.

    ``where`` rather than ``loss * mask``: a dropped sample's inf or NaN loss must not reach the sum."""
    return torch.where(mask, loss, 0.0).sum() / mask.sum().clamp(min=1)


class SelectingMethod(Method):
    """A method that keeps the ``1 - R`` small-loss fraction, R following `forget_rate`.

    ``forget_rate``: tau in [0, 1), the rate reached after ``T_k`` epochs (the caller resolves
    ``auto``, e.g. to the noise rate); ``exponent``: c in ``T**c``. Until `set_epoch` is called the
    method is at epoch 1 (keeps every sample)."""

    pairs = True
    selects = True
    knobs: tuple[str, ...] = ("forget_rate", "T_k", "exponent")

    def __init__(
        self,
        *,
        heads: int,
        forget_rate: float,
        T_k: int = 10,
        exponent: float = 1.0,
        label_loss: PerSampleLoss | None = None,
        device="cpu",
    ):
        super().__init__(heads=heads, label_loss=label_loss, device=device)
        self.forget_rate = check_forget_rate(self.name, forget_rate)
        self.T_k, self.exponent = check_schedule(self.name, T_k, exponent)
        # float64: keep_count's floor must see the same double as Python's int((1 - R) * n)
        self._keep = torch.ones((), dtype=torch.float64, device=self.device)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._keep.fill_(1.0 - self.rate(epoch))

    def rate(self, epoch: int) -> float:
        """The forget rate R at 1-based ``epoch``."""
        return forget_rate(epoch, self.forget_rate, self.T_k, self.exponent)

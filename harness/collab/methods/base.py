"""What every method is (`Method`), the registry of methods and the checks of their arguments.

A method is the training objective of H classifier heads trained together: it takes the heads' logits
and the (possibly noisy) labels of one batch and returns the scalar loss to backpropagate. It holds no
parameters; what changes during training (a forget rate, a switch at a start epoch) lives in device
tensors that `set_epoch` refreshes between epochs, so a step captured once in a CUDA graph reads the
current values on every replay.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits (B, K), target (B,) int64) -> (B,) float32``: each sample's label loss."""

METHODS: dict[str, type[Method]] = {}


def cross_entropy_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) cross-entropy of each sample, in float32 whatever the logits' dtype."""
    return F.cross_entropy(logits.float(), target, reduction="none")


class Method:
    """The objective of H heads trained together; subclasses set the class variables below.

    ``heads``: H, the number of (B, K) logits tensors every call takes. ``label_loss``: each head's
    per-sample label loss (None: cross-entropy). ``device``: where the method's schedule tensors live
    (the logits' device).
    """

    name: ClassVar[str]  # registry key
    pairs: ClassVar[bool] = False  # True: exactly two heads
    selects: ClassVar[bool] = False  # True: each head's loss uses part of the batch (a mask is returned)
    knobs: ClassVar[tuple[str, ...]] = ()  # the keyword settings the method takes beside the three above
    per_sample_labels: ClassVar[bool] = True  # its label loss gives each sample's loss (else the mean)

    def __init__(self, *, heads: int, label_loss: PerSampleLoss | None = None, device="cpu"):
        if not isinstance(heads, int) or isinstance(heads, bool):
            raise ValueError(f"{self.name}: heads must be an int, got {heads!r}")
        if self.pairs and heads != 2:
            raise ValueError(
                f"{self.name} trains exactly two heads (a pair that teach each other), got {heads}"
            )
        if heads < 2:
            raise ValueError(f"{self.name} needs at least two heads (they teach each other), got {heads}")
        self.heads = heads
        self.label_loss = label_loss or cross_entropy_per_sample
        self.device = torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        """Refresh the device tensors for 1-based ``epoch``, the epoch about to be trained.

        Call outside CUDA-graph capture; it only writes into existing tensors (fill_), so a captured
        step keeps reading the same storage."""
        check_epoch(epoch)

    def __call__(
        self, logits: list[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``logits``: H tensors (B, K), any float dtype (computed in float32); ``target`` (B,) int64.

        Returns the scalar loss to backpropagate (the heads' losses summed) and, for methods that
        select, the (H, B) bool mask of the samples each head's loss used (None otherwise)."""
        raise NotImplementedError

    def _float_logits(self, logits: list[torch.Tensor]) -> list[torch.Tensor]:
        """The logits in float32, after checking there is one (B, K) tensor per head."""
        if len(logits) != self.heads:
            raise ValueError(
                f"{self.name} was built for {self.heads} heads, got {len(logits)} logits tensors"
            )
        return [z.float() for z in logits]

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.knobs)
        return f"{type(self).__name__}(heads={self.heads}{', ' if settings else ''}{settings})"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add ``cls`` to METHODS under ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} is already registered ({METHODS[cls.name].__qualname__})")
    METHODS[cls.name] = cls
    return cls


def build_method(name: str, **kw) -> Method:
    """The method ``name`` built with keyword arguments ``kw`` (heads, label_loss, device and its knobs)."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    allowed = ("heads", "label_loss", "device", *cls.knobs)
    unknown = [k for k in kw if k not in allowed]
    if unknown:
        raise ValueError(
            f"{name}: unknown setting {unknown[0]!r}; it takes {', '.join(allowed)}"
            + ("" if cls.knobs else " (no knobs of its own)")
        )
    return cls(**kw)


# --- argument checks, shared by the methods ----------------------------------------------------


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_epoch(epoch) -> None:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise ValueError(f"epoch must be a 1-based int, got {epoch!r}")


def check_forget_rate(name: str, tau) -> float:
    if not _is_real(tau) or not 0.0 <= tau < 1.0:
        raise ValueError(f"{name}: forget_rate must be a number in [0, 1), got {tau!r}")
    return float(tau)


def check_schedule(name: str, T_k, exponent) -> tuple[int, float]:
    if not isinstance(T_k, int) or isinstance(T_k, bool) or T_k < 1:
        raise ValueError(
            f"{name}: T_k must be an int >= 1 (epochs to reach the full forget rate), got {T_k!r}"
        )
    if not _is_real(exponent) or not exponent > 0:
        raise ValueError(f"{name}: exponent must be a number > 0, got {exponent!r}")
    return T_k, float(exponent)

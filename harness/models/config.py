"""The `model` section of a trial config: the backbone every head is built from (each key declared
once, harness.keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.keys import key
from harness.models.backbones import ARCHS


@dataclass
class ModelConfig:
    arch: str = key("cnn_small", "the backbone architecture", choices=lambda: list(ARCHS), what="arch")
    zero_init_residual: bool = key(
        True,
        "start every residual block as the identity (its last BN at 0); false is the plain He init, whose "
        "CIFAR ResNets can collapse in their first steps at lr 0.1",
    )

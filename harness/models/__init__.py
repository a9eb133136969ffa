"""The backbones every head is built from, split into stages so a collaborative graph can fork
between them: CIFAR ResNet-20/32/56/110, WRN-28-10, DenseNet-40, ImageNet ResNet-50 and a small CNN
(`ARCHS`, `build_backbone`, `register_model`).

- `backbones`: the archs and their stages; `config`: the `model` section of a trial config.

Imports torch and harness.keys; nothing above them.
"""

from harness.models.backbones import (
    ARCHS,
    Backbone,
    build_backbone,
    count_parameters,
    list_archs,
    num_stages,
    register_model,
    zero_init_residual_,
)

__all__ = [
    "ARCHS",
    "Backbone",
    "build_backbone",
    "count_parameters",
    "list_archs",
    "num_stages",
    "register_model",
    "zero_init_residual_",
]

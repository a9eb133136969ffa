"""Label corruption for noise-robustness experiments; numpy at its core.

``corrupt(labels, NoiseSpec(kind, rate, ...), num_classes=K, seed=s)`` returns ``NoisyLabels``
(noisy labels, flip mask, realized K x K transition matrix, realized rate). Kinds are
registered in ``noise.registry``; torch is imported only to read CIFAR-N files (kind 'human').
"""

# Importing the kind modules registers them; their order is the order of KINDS.
# isort: off
from noise import kinds as _kinds  # noqa: F401  (registers none .. matrix)
from noise import instance as _instance  # noqa: F401  (registers instance)
from noise import human as _human  # noqa: F401  (registers human)

# isort: on
from noise.cifar import LABEL_SETS
from noise.corruption import NoisyLabels, corrupt
from noise.human import check_label_file, load_human_labels
from noise.registry import kind_names, register_kind
from noise.safeload import UnsafeFileError
from noise.spec import NoiseSpec
from noise.transition import realized_transition

KINDS: tuple[str, ...] = kind_names()

__all__ = [
    "KINDS",
    "LABEL_SETS",
    "NoiseSpec",
    "NoisyLabels",
    "UnsafeFileError",
    "check_label_file",
    "corrupt",
    "kind_names",
    "load_human_labels",
    "realized_transition",
    "register_kind",
]

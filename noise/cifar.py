"""CIFAR class indices and the class mappings of the ``asymmetric`` noise kind."""

from __future__ import annotations

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Patrini et al. 2017: truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.
CIFAR10_ASYMMETRIC: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# The standard CIFAR-100 fine label -> superclass (coarse label) mapping, indexed by fine label.
# It agrees with the clean_label / clean_coarse_label pairs of CIFAR-100N (a test checks this).
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


def cifar100_next_in_superclass() -> dict[int, int]:
    """Fine label -> the next fine label (by index, cyclic) of the same superclass.

    This is the CIFAR-100 asymmetric noise of Han et al. 2018 (co-teaching): within each of
    the 20 superclasses of 5 classes, class i flips to the following one.
    """
    members: dict[int, list[int]] = {}
    for fine, coarse in enumerate(CIFAR100_COARSE):
        members.setdefault(coarse, []).append(fine)
    mapping = {}
    for group in members.values():
        for pos, fine in enumerate(group):
            mapping[fine] = group[(pos + 1) % len(group)]
    return mapping


# dataset name -> (number of classes, true class -> flipped class)
ASYMMETRIC_MAPS: dict[str, tuple[int, dict[int, int]]] = {
    "cifar10": (10, CIFAR10_ASYMMETRIC),
    "cifar100": (100, cifar100_next_in_superclass()),
}


# CIFAR-N (Wei et al. 2022) label sets: name -> (key in the official .pt file, number of classes).
LABEL_SETS: dict[str, tuple[str, int]] = {
    "aggre": ("aggre_label", 10),
    "worse": ("worse_label", 10),
    "random1": ("random_label1", 10),
    "random2": ("random_label2", 10),
    "random3": ("random_label3", 10),
    "noisy": ("noisy_label", 100),
}
CIFAR_N_CLEAN_KEY = "clean_label"

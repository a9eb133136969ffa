"""The `collab` section of a trial config: the training graph of H heads and the objective they learn
from (each key declared once, harness.keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.collab.graph import TOPOLOGIES
from harness.collab.rescale import RESCALE_MODES
from harness.keys import at_least, choice_problem, described, in_range, key

# simultaneous: every head's loss in every step (the paper); alternating: one head's loss a step, in turn
UPDATE_MODES = ("simultaneous", "alternating")


@dataclass
class CollabConfig:
    topology: str = key("individual", "how the heads share layers", choices=TOPOLOGIES, what="topology")
    heads: int = key(1, "classifier heads trained together (individual: 1)", check=at_least(1))
    rescale: str | bool = key(
        "backprop",
        "backprop: backpropagation rescaling at every fork (the paper); loss: the summed loss scaled by "
        "1/H instead; none",
        check=described(
            # true and false are the old spelling of backprop and none (a deprecation warning says so)
            lambda v: None if isinstance(v, bool) else choice_problem(v, list(RESCALE_MODES), "rescale mode"),
            "one of " + ", ".join(RESCALE_MODES),
        ),
    )
    split: int | list | None = key(
        None,
        "stage boundaries where the heads fork (simple: one, hierarchical: log2 heads); null: the arch's",
    )
    T: float = key(
        2.0, "temperature of the soft targets", check=in_range(0, math.inf, lo_open=True), packs=True
    )
    beta: float = key(
        0.5, "weight of the label term against the soft target", check=in_range(0, 1), packs=True
    )
    soft_rampup_epochs: int = key(
        0,
        "the soft target's weight grows linearly from 0 (plain cross-entropy per head) to the paper's "
        "objective over these first epochs; 0: the paper's objective from the first step",
        check=at_least(0, " epochs (0: no ramp)"),
        packs=True,
    )
    kept_head: int = key(0, "the head kept for inference (test/acc)", check=at_least(0), packs=True)
    update: str = key(
        "simultaneous",
        "simultaneous: every head's loss each step (the paper); alternating: one head's a step, in turn",
        choices=UPDATE_MODES,
        what="update mode",
    )

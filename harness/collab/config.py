"""The `collab` section of a trial config: the training graph of H heads, the method they learn from
and its knobs (each key declared once, harness.keys; the knobs a method reads: harness.collab.methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.collab.graph import TOPOLOGIES
from harness.collab.methods import METHODS
from harness.collab.methods.rules import AUTO
from harness.collab.rescale import RESCALE_MODES
from harness.keys import at_least, choice_problem, described, in_range, key


def _forget_rate(value: float | str) -> str | None:
    if value == AUTO:
        return None
    if isinstance(value, str):
        return f"must be auto or a number in [0, 1), got {value!r}"
    return None if 0 <= value < 1 else f"must be auto or a number in [0, 1), got {value}"


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
        "simultaneous: every head's loss each step (the paper); alternating: one head's a step, in turn (cl only)",
        choices=UPDATE_MODES,
        what="update mode",
    )
    method: str = key(
        "cl",
        "the objective the heads learn from (docs/methods.md): cl (collaborative learning), dml (Deep "
        "Mutual Learning), coteaching, coteaching_plus, jocor (two networks or two heads that select "
        "samples for each other)",
        choices=lambda: list(METHODS),
        what="method",
    )
    forget_rate: float | str = key(
        "auto",
        "coteaching, coteaching_plus, jocor: the share of each batch left out at full strength; auto: "
        "the trial's noise rate (noise.rate, halved for asymmetric noise; human and matrix noise: the "
        "share of its training labels that are wrong)",
        check=described(_forget_rate, "auto or in [0, 1)"),
        packs=True,
    )
    forget_epochs: int = key(
        10,
        "the epochs over which the forget rate grows to its full value (Co-teaching's T_k)",
        check=at_least(1),
        packs=True,
    )
    forget_exponent: float = key(
        1.0,
        "the forget rate's growth: rate * min(T**c / T_k, 1) after T epochs (Co-teaching's c)",
        check=in_range(0, math.inf, lo_open=True),
        packs=True,
    )
    init_epoch: int = key(
        20,
        "coteaching_plus: the first epoch trained on the samples the two heads disagree on (the official "
        "code's init_epoch: 20 on CIFAR-10)",
        check=at_least(0),
        packs=True,
    )
    jocor_lambda: float = key(
        0.9,
        "jocor: the weight of the heads' agreement (symmetric KL) against their label losses (0.9: the "
        "official README's CIFAR-10 value)",
        check=in_range(0, 1),
        packs=True,
    )

"""How a trial config picks and sets a method: the knobs each method is built with (`method_knobs`),
the forget rate `auto` resolved from the trial's noise (`resolve_forget_rate`), and the rules a
config must keep (`method_problems`), each problem named by its key.
"""

from __future__ import annotations

from typing import Any

from harness.collab.methods.base import METHODS

AUTO = "auto"
# noise kinds whose nominal rate noise.rate says how many labels are wrong
RATED_KINDS = ("symmetric", "uniform", "pairflip", "asymmetric", "instance")
# noise kinds whose labels carry their own rate (the share that differs from the clean labels, known
# once they are drawn or read): CIFAR-N's label sets, a transition matrix
GIVEN_KINDS = ("human", "matrix")


def resolve_forget_rate(
    forget_rate: float | str, noise_kind: str, noise_rate: float, labels_rate: float | None = None
) -> float:
    """The forget rate tau a selecting method trains with: a number as given, or `auto`: the trial's
    noise rate: its nominal noise.rate, halved for asymmetric noise (JoCoR's rule, for every method
    alike); for human and matrix noise the rate of its training labels (`labels_rate`, the share that
    differs from the clean labels), as the CIFAR-N benchmarks set it."""
    if forget_rate != AUTO:
        return float(forget_rate)
    if noise_kind in GIVEN_KINDS:
        if labels_rate is None:
            raise ValueError(f"forget_rate auto for {noise_kind} noise needs the labels' own rate")
        return labels_rate
    return noise_rate / 2 if noise_kind == "asymmetric" else noise_rate


def method_knobs(collab: Any, noise: Any, labels_rate: float | None = None) -> dict[str, Any]:
    """The knobs of `collab.method` from the config's collab and noise sections (its own only);
    `labels_rate`: the share of the trial's training labels that are wrong (`resolve_forget_rate`)."""
    every = {
        "T": collab.T,
        "beta": collab.beta,
        "forget_rate": resolve_forget_rate(collab.forget_rate, noise.kind, noise.rate, labels_rate),
        "T_k": collab.forget_epochs,
        "exponent": collab.forget_exponent,
        "init_epoch": collab.init_epoch,
        "lambda_": collab.jocor_lambda,
    }
    return {k: v for k, v in every.items() if k in METHODS[collab.method].knobs}


def method_problems(collab: Any, noise: Any) -> list[tuple[str, str]]:
    """What keeps a config's method from training, as (dotted key, message); [] when nothing."""
    method = METHODS.get(collab.method)
    if method is None or method.name == "cl":
        return []
    problems = []
    name = method.name
    if method.pairs and (collab.heads != 2 or collab.topology == "individual"):
        problems.append(
            (
                "collab.heads",
                f"{name} trains exactly two networks that teach each other: heads 2 on topology instances "
                f"(two full networks, as published), simple or hierarchical (sharing layers); got "
                f"{collab.topology} with {collab.heads} heads",
            )
        )
    elif collab.topology == "individual" or collab.heads < 2:
        problems.append(
            ("collab.heads", f"{name} needs at least two heads that teach each other, got {collab.heads}")
        )
    if collab.update != "simultaneous":
        problems.append(
            (
                "collab.update",
                f"alternating updates are collaborative learning's (one head's loss a step); {name} "
                "updates its heads at once: use simultaneous",
            )
        )
    if collab.soft_rampup_epochs:
        problems.append(
            (
                "collab.soft_rampup_epochs",
                f"the soft-target ramp is collaborative learning's; {name} has none",
            )
        )
    rated = noise.kind in GIVEN_KINDS or (noise.kind in RATED_KINDS and noise.rate > 0)
    if method.selects and collab.forget_rate == AUTO and not rated:
        problems.append(
            (
                "collab.forget_rate",
                f"auto takes the trial's noise rate, but noise kind {noise.kind} at rate {noise.rate:g} has "
                "none: give a number in [0, 1) (e.g. 0.2, where the rate is unknown)",
            )
        )
    return problems

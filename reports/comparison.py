"""Everything a report compares, computed from a sweep's trials: the trial frame, the methods in
their order, who is paired with whom, every table and the learning curves (`compare`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.contract import TRAIN_KEPT, TRAIN_KEPT_PRECISION, TRAIN_MEMORIZED
from reports import tables
from reports.cost import cost_table
from reports.frame import trial_frame
from reports.gains import baselines, gains_table
from reports.methods import method_keys
from reports.runs import Trial


@dataclass
class Comparison:
    """What `compare` computed. ``tables``: name -> long-form table, in the order of the CSVs
    (``accuracy``, ``selection``, ``gains``, ``calibration``, ``detection``, ``cost``,
    ``memorization``, ``kept``, ``collapsed``, ``failed``; columns documented where each is made)."""

    frame: pd.DataFrame  # one row per trial (reports.frame.trial_frame)
    keys: list[str]  # the params that tell the methods apart
    methods: list[str]  # in the report's order
    pairs: dict[str, str]  # method -> the individual-training method it is paired with
    tables: dict[str, pd.DataFrame]
    curves: pd.DataFrame  # per-epoch means over seeds (reports.tables.curves)
    curve_conditions: list[str]  # the noise conditions the learning curves are drawn for
    # the noise conditions where some method selected samples (empty: no method does; no such section)
    kept_conditions: list[str]
    notes: list[str] = field(default_factory=list)


def compare(trials: list[Trial], *, metric: str, mode: str) -> Comparison:
    """Every table of the report of ``trials`` (with their histories loaded), ranked by ``metric``
    at the epoch ``mode`` says (``reports.frame.trial_frame``)."""
    frame, notes = trial_frame(trials, metric=metric, mode=mode)
    if not frame.usable.any():
        notes.append(f"no finished run logged {metric!r}; every aggregate below is empty")
    keys = method_keys(trials)
    pairs = baselines(frame, keys)
    by_name = {
        "accuracy": tables.accuracy_table(frame, metric=metric),
        "selection": tables.selection_table(frame, metric=metric),
        "gains": gains_table(frame, metric=metric, pairs=pairs),
        "calibration": tables.calibration_table(frame),
        "detection": tables.detection_table(frame),
        "cost": cost_table(frame, pairs=pairs),
        "memorization": tables.memorization_table(frame),
        "kept": tables.kept_table(frame),
        "collapsed": tables.collapsed_table(frame),
        "failed": tables.failed_table(frame, metric=metric),
    }
    if len(collapsed := by_name["collapsed"]):
        notes.append(
            f"{len(collapsed)} run(s) ended collapsed and are left out of every mean and paired gain "
            "(see 'Collapsed runs')"
        )
    return Comparison(
        frame=frame,
        keys=keys,
        methods=list(frame.sort_values("method_order").method.unique()),
        pairs=pairs,
        tables=by_name,
        curves=tables.curves(trials, frame, (metric, TRAIN_MEMORIZED, TRAIN_KEPT_PRECISION, TRAIN_KEPT)),
        curve_conditions=_curve_conditions(by_name["accuracy"]),
        kept_conditions=_kept_conditions(by_name["kept"]),
        notes=notes,
    )


def _kept_conditions(kept: pd.DataFrame, limit: int = 6) -> list[str]:
    """The conditions (in the report's order) where some method logged its kept share."""
    return list(dict.fromkeys(kept[(kept.kept_n > 0) | (kept.kept_precision_n > 0)].condition))[:limit]


def _curve_conditions(acc: pd.DataFrame, limit: int = 4) -> list[str]:
    """The highest rate of each noise kind (the hardest setting), or the clean one if that is all."""
    conds = acc.drop_duplicates("condition")
    chosen = []
    for kind, here in conds.groupby("noise_kind", sort=False):
        if kind == "none":
            continue
        if kind == "human":
            worse = here[here.noise_label_set.isin(["worse", "noisy"])]
            chosen.append((worse if len(worse) else here).condition.iloc[-1])
        else:
            chosen.append(here.sort_values("noise_rate").condition.iloc[-1])
    return chosen[:limit] or list(conds.condition[:1])

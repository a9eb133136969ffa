"""What the report says: its header and one section per table, each with the notes that tell a reader
how its numbers were made (`report_header`, `report_sections`)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.contract import (
    PACK_TAG,
    TRAIN_COLLAPSED,
    TRAIN_KEPT,
    TRAIN_KEPT_PRECISION,
    VAL_ACC_NOISY,
    WORLD_SIZE_TAG,
    is_fraction_metric,
)
from reports import rows
from reports.comparison import Comparison
from reports.frame import SELECTION_RULES
from reports.render import Section
from reports.runs import Sweep


def report_header(
    sweep: Sweep, uri: str, c: Comparison, *, metric: str, mode: str
) -> tuple[str, list[tuple[str, str]]]:
    """The report's title and its (name, value) lines: what was compared, from where, over which runs."""
    collapsed, failed = c.tables["collapsed"], c.tables["failed"]
    sweep_line = (
        f"{sweep.name} (run {sweep.parent_run_id})"
        if sweep.parent_run_id
        else f"{sweep.name} (no parent run)"
    )
    meta = [
        ("Experiment", sweep.experiment_name),
        ("Sweep", sweep_line),
        ("Tracking URI", uri),
        (
            "Metric",
            f"{metric}, {SELECTION_RULES[mode]}",
        ),
        ("Methods vary in", ", ".join(c.keys) or "nothing (one method)"),
        (
            "Trials",
            f"{len(sweep.trials)} runs, {int(c.frame.usable.sum())} aggregated, {len(collapsed)} collapsed "
            f"(left out), {len(failed)} missing or failed",
        ),
        ("Generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    return f"Collaborative learning under label noise: {sweep.name}", meta


def report_sections(
    c: Comparison, files: dict[str, Path], *, metric: str, mode: str, notes: list[str]
) -> list[Section]:
    """The sections in the report's order; ``files`` names the plots (``cost.png`` -> its path)."""
    t = c.tables
    sections = [
        accuracy_section(t["accuracy"], c.methods, files["accuracy_vs_noise.png"], metric=metric, mode=mode),
        selection_section(t["selection"], files["selection_vs_noise.png"], metric=metric),
        gains_section(t["gains"], metric=metric),
        calibration_section(t["calibration"]),
        detection_section(t["detection"]),
        cost_section(t["cost"], files["cost.png"]),
        memorization_section(t["memorization"]),
        *(
            [kept_section(t["kept"], files["kept_precision.png"], c.kept_conditions)]
            if c.kept_conditions
            else []
        ),
        curves_section(files["learning_curves.png"], c.curve_conditions),
        collapsed_section(t["collapsed"], metric=metric),
        failed_section(t["failed"]),
    ]
    if notes:
        sections.append(Section("Notes", notes=list(notes)))
    return sections


def accuracy_section(
    acc: pd.DataFrame, methods: list[str], image: Path, *, metric: str, mode: str
) -> Section:
    what = f"{metric} ({'%' if is_fraction_metric(metric) else 'as logged'}) at the {SELECTION_RULES[mode]}"
    return Section(
        f"{metric} by noise condition and method",
        *rows.accuracy_rows(acc, methods),
        notes=[
            f"{what}: mean ± standard deviation (ddof=1) over seeds (number of seeds). "
            "Failed, missing and collapsed runs are not averaged in."
        ],
        images=[image],
    )


def selection_section(selection: pd.DataFrame, image: Path, *, metric: str) -> Section:
    section = Section(
        f"{metric}: last epoch, best epoch (oracle) and selected by noisy validation",
        *rows.selection_rows(selection),
        images=[image],
        notes=[
            "Each run's value three ways: at its last epoch; at its best epoch, chosen by looking at the "
            "test set (an oracle: no practitioner has clean test labels to choose with, and it overstates "
            f"robust methods); and at the epoch of its highest {VAL_ACC_NOISY}, the accuracy on the "
            "held-out split (data.val_fraction) against labels corrupted with the trial's own noise, "
            "which is what a practitioner can select on (ties: the earliest such epoch). Mean ± std over "
            "seeds (n), and the mean chosen epoch."
        ],
    )
    if not (selection[selection.rule == "val"].n > 0).any():
        section.notes.append(
            f"Selected by noisy validation is n/a: no run logged {VAL_ACC_NOISY} (set data.val_fraction, "
            "e.g. 0.05, to hold out a noisy validation split)."
        )
    return section


def gains_section(gains: pd.DataFrame, *, metric: str) -> Section:
    section = Section("Gain over individual training (paired by seed)")
    if not len(gains):
        section.notes.append(
            "Skipped: no method trains individually (collab.topology = individual), "
            "so there is no baseline to pair with."
        )
        return section
    section.headers, section.rows = rows.gains_by_rule_rows(gains)
    section.notes.append(
        "Difference method − baseline over the seeds both finished in the same noise condition, "
        "under each selection rule: mean [95% confidence interval from the t distribution with n−1 "
        "degrees of freedom] (pairs); no interval for fewer than 2 pairs. Plain individual training "
        "(cross-entropy, no label smoothing) is the baseline of the cheap baselines too."
        + (" Units: percentage points." if is_fraction_metric(metric) else "")
    )
    return section


def calibration_section(calibration: pd.DataFrame) -> Section:
    return Section(
        "Calibration on the test set (last epoch)",
        *rows.calibration_rows(calibration),
        notes=[
            "ECE: expected calibration error, 15 equal-width confidence bins (percent). NLL: mean "
            "negative log-likelihood of the true class (nats). Kept head, and the heads' ensemble (mean of "
            "their softmax; the kept head itself for one head). Lower is better. n/a where not logged."
        ],
    )


def detection_section(detection: pd.DataFrame) -> Section:
    return Section(
        "Noise detection: finding the flipped training labels (after the last epoch)",
        *rows.detection_rows(detection),
        notes=[
            "Each training sample is scored in eval mode without augmentation: by the kept head's loss on "
            "its given label, and (several heads) by the disagreement of the heads' consensus (mean "
            "softmax) with it. AUROC against the known flip mask (human noise: annotator's label ≠ clean "
            "label); precision = recall when flagging as many samples as are flipped (the realized rate, "
            "'Flipped'). 0.5 is chance. n/a where undefined (no flipped label; consensus of one head)."
        ],
    )


def cost_section(cost: pd.DataFrame, image: Path) -> Section:
    section = Section("Cost per method", *rows.cost_rows(cost), images=[image])
    section.notes += [
        "Over each method's finished runs (all noise conditions and seeds) that trained the same "
        f"way: Workers = data-parallel processes per run ({WORLD_SIZE_TAG}), Pack = trials trained "
        f"together as one step on one device ({PACK_TAG}; 1: alone).",
        "Computed once per run, on a copy of its training graph (median over runs): step GFLOPs = "
        "forward, loss and backward at the run's batch size; step memory = parameters, gradients, "
        "optimizer state and the tensors saved for backward; inference GFLOPs = one image through the "
        "kept head. (xN.NN): the ratio to the individual-training method it is paired with (x1.00 for "
        "that method itself); compare ratios only between runs of the same batch size. n/a where no run "
        "logged it (runs from before these metrics existed).",
        "Measured: time per epoch, images/s and TFLOP/s (the step's counted FLOPs over the measured training "
        "time, on any device): median over epochs, mean over runs; "
        "peak GPU memory: maximum over epochs (GPU runs), beside the computed step memory (the allocator's "
        "cache, workspaces and the data on the device come on top). Last column: whether the exported "
        "inference network has the same parameter count as individual training's.",
    ]
    setups = cost.drop_duplicates(["workers", "pack"])
    if len(setups) > 1:
        section.notes.append(
            f"The runs trained in {len(setups)} different setups (workers x pack): compare times and memory "
            "only between rows of the same setup."
        )
    mismatch = cost[cost.inference_matches_individual == "no"]
    if len(mismatch):
        section.notes.append(
            "Inference parameter count differs from individual training for: " + ", ".join(mismatch.method)
        )
    return section


def memorization_section(mem: pd.DataFrame) -> Section:
    return Section(
        "Memorization of flipped labels (last epoch)",
        *rows.memorization_rows(mem),
        notes=[
            "Memorized: share of flipped training samples predicted as their wrong label. "
            "Train acc. vs clean labels: accuracy on the training set against the true labels. "
            "n/a where the condition has no flipped labels or the run did not log them."
        ],
    )


def kept_section(kept: pd.DataFrame, image: Path, conditions: list[str]) -> Section:
    return Section(
        "Sample selection: kept share and its label precision (last epoch)",
        *rows.kept_rows(kept),
        images=[image],
        notes=[
            f"Methods that train each head on part of the batch (Co-teaching, Co-teaching+, JoCoR) log "
            f"{TRAIN_KEPT}, the share of the batch a head trained on (mean over heads), and "
            f"{TRAIN_KEPT_PRECISION}, the share of those samples whose given label is the true one "
            "(Co-teaching's label precision). Clean labels in the data: 100 − the realized noise rate "
            "(mean over runs), the label precision of training on every sample. n/a for methods that train on every sample. "
            f"Curves: mean over seeds per epoch (band: ±1 std) for: {', '.join(conditions)}."
        ],
    )


def curves_section(image: Path, conditions: list[str]) -> Section:
    return Section(
        "Learning curves",
        images=[image],
        notes=[f"Mean over seeds per epoch (band: ±1 std) for: {', '.join(conditions)}."],
    )


def collapsed_section(collapsed: pd.DataFrame, *, metric: str) -> Section:
    section = Section("Collapsed runs")
    if len(collapsed):
        section.headers, section.rows = rows.collapsed_rows(collapsed, percent=is_fraction_metric(metric))
    section.notes.append(
        f"A run is collapsed when its last epoch logged {TRAIN_COLLAPSED} = 1: the kept head predicted one "
        "class for at least 95% of the evaluation images, or of each training batch on average (its "
        "features have died and its output no longer depends on the image). It finished, but its "
        "numbers measure the optimization, not the method, so it is left out of every mean and "
        "paired gain above." + ("" if len(collapsed) else " None of this sweep's runs collapsed.")
    )
    return section


def failed_section(failed: pd.DataFrame) -> Section:
    section = Section("Missing and failed runs")
    if len(failed):
        section.headers, section.rows = rows.failed_rows(failed)
    else:
        section.notes.append("None: every run finished and logged the metric.")
    return section

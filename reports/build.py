"""``harness report``: one sweep's MLflow runs -> tables (CSV, Markdown, HTML) and plots (PNG).

``build_report`` does the work; ``reports.cli`` is the command-line adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness.contract import (
    TEST_ACC,
    TRAIN_COLLAPSED,
    TRAIN_MEMORIZED,
    VAL_ACC_NOISY,
    default_tracking_uri,
    is_fraction_metric,
    sqlite_path,
)
from reports import plots, render, rows, tables
from reports.cost import cost_table
from reports.frame import trial_frame
from reports.gains import baselines, gains_table
from reports.latex import write_latex
from reports.methods import method_keys
from reports.runs import HISTORY_KEYS, load_histories, select_sweep


@dataclass
class ReportResult:
    """What ``build_report`` wrote and computed.

    ``files``: file name (``report.html``, ``accuracy.csv``, ``accuracy_vs_noise.png``, ...) -> path.
    ``tables``: ``accuracy``, ``selection``, ``gains``, ``calibration``, ``detection``, ``cost``,
    ``memorization``, ``collapsed``, ``failed`` as long-form DataFrames, exactly as written to the CSVs
    (columns documented in ``reports.tables``).
    """

    out_dir: Path
    files: dict[str, Path]
    tables: dict[str, pd.DataFrame]
    experiment: str
    sweep_name: str
    sweep_run_id: str | None
    logged_to_mlflow: bool
    notes: list[str] = field(default_factory=list)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


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


def build_report(
    *,
    experiment: str | None = None,
    sweep_run_id: str | None = None,
    out_dir: Path | None = None,
    metric: str = TEST_ACC,
    mode: str = "final",
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
    latex: bool = False,
) -> ReportResult:
    """Write the comparison report of one sweep into ``out_dir`` and return what was written.

    Selects the sweep by ``sweep_run_id`` (its parent run) or the latest sweep parent run of
    ``experiment`` (of any experiment when both are None). ``metric`` is compared at the final epoch
    (``mode="final"``) or at its best epoch (``mode="best"``: max, min for losses). ``out_dir``
    defaults to ``reports-out/<experiment>/`` in the working directory. When ``log_to_mlflow``, the files are logged on the
    sweep's parent run under the artifact path ``report/`` (skipped, with a note, without a parent).
    Whatever ``mode`` says, the report also shows ``metric`` three ways side by side (last epoch, best
    epoch on test, selected by noisy validation), in its own table and in the paired gains.
    ``latex``: also write ``tables.tex`` (booktabs; ``reports.latex``).

    Raises ValueError for an unknown experiment or run id, a store without runs, a ``metric`` that no
    run logged, or a bad ``mode``.
    """
    if mode not in ("final", "best"):
        raise ValueError(f"mode must be 'final' or 'best', got {mode!r}")
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        # Opening a missing SQLite store would silently create an empty one.
        raise ValueError(
            f"no MLflow store at {db} (tracking URI {uri}); run a sweep first or set MLFLOW_TRACKING_URI"
        )
    client = MlflowClient(tracking_uri=uri)
    sweep = select_sweep(client, experiment=experiment, sweep_run_id=sweep_run_id)
    known = sorted({k for t in sweep.trials for k in t.metrics})
    if metric not in known and any(t.status == "FINISHED" for t in sweep.trials):
        raise ValueError(
            f"metric {metric!r} was not logged by any run of sweep {sweep.name!r}; metrics: {', '.join(known)}"
        )
    load_histories(client, sweep.trials, (metric, *HISTORY_KEYS))
    notes = list(sweep.notes)
    if sweep.planned_trials is not None and sweep.planned_trials != len(sweep.trials):
        notes.append(f"the sweep planned {sweep.planned_trials} trials; {len(sweep.trials)} runs were logged")

    frame, frame_notes = trial_frame(sweep.trials, metric=metric, mode=mode)
    notes += frame_notes
    if not frame.usable.any():
        notes.append(f"no finished run logged {metric!r}; every aggregate below is empty")
    keys = method_keys(sweep.trials)
    methods = list(frame.sort_values("method_order").method.unique())
    pairs = baselines(frame, keys)
    acc = tables.accuracy_table(frame, metric=metric)
    selection = tables.selection_table(frame, metric=metric)
    gains = gains_table(frame, metric=metric, pairs=pairs)
    calibration = tables.calibration_table(frame)
    detection = tables.detection_table(frame)
    cost = cost_table(frame, pairs=pairs)
    mem = tables.memorization_table(frame)
    failed = tables.failed_table(frame, metric=metric)
    collapsed = tables.collapsed_table(frame)
    if len(collapsed):
        notes.append(
            f"{len(collapsed)} run(s) ended collapsed and are left out of every mean and paired gain "
            "(see 'Collapsed runs')"
        )
    curve_conds = _curve_conditions(acc)
    curves = tables.curves(sweep.trials, frame, (metric, TRAIN_MEMORIZED))

    out = Path(out_dir) if out_dir is not None else Path("reports-out") / _safe_name(sweep.experiment_name)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    table_map = {
        "accuracy": acc,
        "selection": selection,
        "gains": gains,
        "calibration": calibration,
        "detection": detection,
        "cost": cost,
        "memorization": mem,
        "collapsed": collapsed,
        "failed": failed,
    }
    for name, table in table_map.items():
        files[f"{name}.csv"] = out / f"{name}.csv"
        table.to_csv(files[f"{name}.csv"], index=False)
    for png in (
        plots.accuracy_vs_noise(
            acc, metric=metric, mode=mode, methods=methods, path=out / "accuracy_vs_noise.png"
        ),
        plots.selection_vs_noise(
            selection, metric=metric, methods=methods, path=out / "selection_vs_noise.png"
        ),
        plots.learning_curves(
            curves, metric=metric, conditions=curve_conds, methods=methods, path=out / "learning_curves.png"
        ),
        plots.cost_bars(cost, methods=methods, path=out / "cost.png"),
    ):
        files[png.name] = png

    sections = _sections(
        acc,
        selection,
        gains,
        calibration,
        detection,
        cost,
        mem,
        collapsed,
        failed,
        files,
        metric=metric,
        mode=mode,
        methods=methods,
        keys=keys,
        curve_conds=curve_conds,
        notes=notes,
    )
    n_usable = int(frame.usable.sum())
    meta = [
        ("Experiment", sweep.experiment_name),
        (
            "Sweep",
            f"{sweep.name} (run {sweep.parent_run_id})"
            if sweep.parent_run_id
            else f"{sweep.name} (no parent run)",
        ),
        ("Tracking URI", uri),
        (
            "Metric",
            f"{metric}, {'final epoch' if mode == 'final' else 'best epoch (oracle: chosen on test)'}",
        ),
        ("Methods vary in", ", ".join(keys) or "nothing (one method)"),
        (
            "Trials",
            f"{len(sweep.trials)} runs, {n_usable} aggregated, {len(collapsed)} collapsed (left out), "
            f"{len(failed)} missing or failed",
        ),
        ("Generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    title = f"Collaborative learning under label noise: {sweep.name}"
    files["report.md"] = render.write_markdown(out / "report.md", title=title, meta=meta, sections=sections)
    files["report.html"] = render.write_html(out / "report.html", title=title, meta=meta, sections=sections)
    if latex:
        files["tables.tex"] = write_latex(
            out / "tables.tex",
            selection=selection,
            calibration=calibration,
            detection=detection,
            methods=methods,
            metric=metric,
            title=title,
        )

    logged = False
    if log_to_mlflow and sweep.parent_run_id is None:
        notes.append("no sweep parent run to attach the report to; not logged to MLflow")
    elif log_to_mlflow:
        try:
            client.log_artifacts(sweep.parent_run_id, str(out), artifact_path="report")
            logged = True
        except (MlflowException, OSError) as err:
            # The files are on disk already; a store that refuses artifacts should not lose them.
            notes.append(f"could not log the report to MLflow run {sweep.parent_run_id}: {err}")
    return ReportResult(
        out_dir=out,
        files=files,
        tables=table_map,
        experiment=sweep.experiment_name,
        sweep_name=sweep.name,
        sweep_run_id=sweep.parent_run_id,
        logged_to_mlflow=logged,
        notes=notes,
    )


def _sections(
    acc,
    selection,
    gains,
    calibration,
    detection,
    cost,
    mem,
    collapsed,
    failed,
    files,
    *,
    metric,
    mode,
    methods,
    keys,
    curve_conds,
    notes,
):
    what = f"{metric} ({'%' if is_fraction_metric(metric) else 'as logged'}) at the " + (
        "final epoch" if mode == "final" else "best epoch (oracle: chosen on the test set)"
    )
    s_acc = render.Section(
        f"{metric} by noise condition and method",
        *rows.accuracy_rows(acc, methods),
        notes=[
            f"{what}: mean ± standard deviation (ddof=1) over seeds (number of seeds). "
            "Failed, missing and collapsed runs are not averaged in."
        ],
        images=[files["accuracy_vs_noise.png"]],
    )
    s_select = render.Section(
        f"{metric}: last epoch, best epoch (oracle) and selected by noisy validation",
        *rows.selection_rows(selection),
        images=[files["selection_vs_noise.png"]],
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
        s_select.notes.append(
            f"Selected by noisy validation is n/a: no run logged {VAL_ACC_NOISY} (set data.val_fraction, "
            "e.g. 0.05, to hold out a noisy validation split)."
        )
    s_gain = render.Section("Gain over individual training (paired by seed)")
    if len(gains):
        s_gain.headers, s_gain.rows = rows.gains_by_rule_rows(gains)
        s_gain.notes.append(
            "Difference method − baseline over the seeds both finished in the same noise condition, "
            "under each selection rule: mean [95% confidence interval from the t distribution with n−1 "
            "degrees of freedom] (pairs); no interval for fewer than 2 pairs. Plain individual training "
            "(cross-entropy, no label smoothing) is the baseline of the cheap baselines too."
            + (" Units: percentage points." if is_fraction_metric(metric) else "")
        )
    else:
        s_gain.notes.append(
            "Skipped: no method trains individually (collab.topology = individual), "
            "so there is no baseline to pair with."
        )
    s_calib = render.Section(
        "Calibration on the test set (last epoch)",
        *rows.calibration_rows(calibration),
        notes=[
            "ECE: expected calibration error, 15 equal-width confidence bins (percent). NLL: mean "
            "negative log-likelihood of the true class (nats). Kept head, and the heads' ensemble (mean of "
            "their softmax; the kept head itself for one head). Lower is better. n/a where not logged."
        ],
    )
    s_detect = render.Section(
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
    s_cost = render.Section("Cost per method", *rows.cost_rows(cost), images=[files["cost.png"]])
    s_cost.notes.append(
        "Mean over each method's finished runs (all noise conditions and seeds) that trained the same "
        "way: Workers = data-parallel processes per run (harness.world_size), Pack = trials trained "
        "together as one step on one device (harness.pack; 1: alone). Peak GPU memory: "
        "maximum over epochs (n/a for CPU-only runs); time per epoch and images/s: median over "
        "epochs. Last column: whether the exported inference network has the same parameter "
        "count as individual training's."
    )
    setups = cost.drop_duplicates(["workers", "pack"])
    if len(setups) > 1:
        s_cost.notes.append(
            f"The runs trained in {len(setups)} different setups (workers x pack): compare times and memory "
            "only between rows of the same setup."
        )
    mismatch = cost[cost.inference_matches_individual == "no"]
    if len(mismatch):
        s_cost.notes.append(
            "Inference parameter count differs from individual training for: " + ", ".join(mismatch.method)
        )
    s_mem = render.Section(
        "Memorization of flipped labels (final epoch)",
        *rows.memorization_rows(mem),
        notes=[
            "Memorized: share of flipped training samples predicted as their wrong label. "
            "Train acc. vs clean labels: accuracy on the training set against the true labels. "
            "n/a where the condition has no flipped labels or the run did not log them."
        ],
    )
    s_curves = render.Section(
        "Learning curves",
        images=[files["learning_curves.png"]],
        notes=[f"Mean over seeds per epoch (band: ±1 std) for: {', '.join(curve_conds)}."],
    )
    s_collapsed = render.Section("Collapsed runs")
    if len(collapsed):
        s_collapsed.headers, s_collapsed.rows = rows.collapsed_rows(
            collapsed, percent=is_fraction_metric(metric)
        )
    s_collapsed.notes.append(
        f"A run is collapsed when its last epoch logged {TRAIN_COLLAPSED} = 1: the kept head predicted one "
        "class for at least 95% of the evaluation images, or of each training batch on average (its "
        "features have died and its output no longer depends on the image). It finished, but its "
        "numbers measure the optimization, not the method, so it is left out of every mean and "
        "paired gain above." + ("" if len(collapsed) else " None of this sweep's runs collapsed.")
    )
    s_failed = render.Section("Missing and failed runs")
    if len(failed):
        s_failed.headers, s_failed.rows = rows.failed_rows(failed)
    else:
        s_failed.notes.append("None: every run finished and logged the metric.")
    sections = [s_acc, s_select, s_gain, s_calib, s_detect, s_cost, s_mem, s_curves, s_collapsed, s_failed]
    if notes:
        sections.append(render.Section("Notes", notes=list(notes)))
    return sections

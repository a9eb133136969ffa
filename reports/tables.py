"""Comparison tables: aggregate the trial frame (``reports.frame``) over seeds per condition x method.

Fractions (accuracies, memorized share) are shown in percent (``unit = "%"``); differences of
fractions in percentage points (``unit = "pp"``, ``reports.gains``). Standard deviations use ddof=1
(NaN for a single seed).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.contract import is_fraction_metric
from reports.frame import CONDITION_COLUMNS, SELECTION_RULES, cells, ordered
from reports.runs import Trial


def _summary(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


def accuracy_table(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds of the selected metric, per noise condition x method.

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, mean, std, n, unit.
    Every condition x method seen in the sweep has a row (n = 0 when no run finished).
    """
    scale, unit = (100.0, "%") if is_fraction_metric(metric) else (1.0, "")
    rows = []
    for c, method, sel in cells(frame):
        mean, std, n = _summary(sel.value * scale)
        rows.append(
            {
                **{k: c[k] for k in CONDITION_COLUMNS},
                "method": method,
                "mean": mean,
                "std": std,
                "n": n,
                "unit": unit,
            }
        )
    return pd.DataFrame(rows)


def selection_table(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """``metric`` under each selection rule, side by side: mean, std (ddof=1) and n over seeds, and the
    mean selected epoch, per noise condition x method x rule (SELECTION_RULES order).

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, rule, rule_name, mean, std, n,
    epoch_mean, unit. The same usable runs as the accuracy table; a run without a noisy held-out split
    has no ``val`` value (n counts the runs that have one).
    """
    scale, unit = (100.0, "%") if is_fraction_metric(metric) else (1.0, "")
    rows = []
    for c, method, sel in cells(frame):
        for rule, name in SELECTION_RULES.items():
            mean, std, n = _summary(sel[f"value_{rule}"] * scale)
            epochs = sel[f"epoch_{rule}"][sel[f"value_{rule}"].notna()].astype(float)
            rows.append(
                {
                    **{k: c[k] for k in CONDITION_COLUMNS},
                    "method": method,
                    "rule": rule,
                    "rule_name": name,
                    "mean": mean,
                    "std": std,
                    "n": n,
                    "epoch_mean": float(epochs.mean()) if len(epochs) else math.nan,
                    "unit": unit,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[*CONDITION_COLUMNS, "method", "rule", "rule_name", "mean", "std", "n", "epoch_mean", "unit"],
    )


def _last_values_table(frame: pd.DataFrame, columns: dict[str, float]) -> pd.DataFrame:
    """Mean, std and n over seeds of each frame column in ``columns`` (column -> scale), per cell."""
    rows = []
    for c, method, sel in cells(frame):
        row = {**{k: c[k] for k in CONDITION_COLUMNS}, "method": method}
        for col, scale in columns.items():
            mean, std, n = _summary(sel[col] * scale)
            row.update({f"{col}_mean": mean, f"{col}_std": std, f"{col}_n": n})
        rows.append(row)
    names = [f"{col}_{s}" for col in columns for s in ("mean", "std", "n")]
    return pd.DataFrame(rows, columns=[*CONDITION_COLUMNS, "method", *names])


def calibration_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Last-epoch calibration on the test set per noise condition x method: ECE (%, 15 bins) and NLL
    (nats) of the kept head and of the heads' ensemble.

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, then ``<col>_mean``,
    ``<col>_std``, ``<col>_n`` for col in ece, nll, ece_ensemble, nll_ensemble (n = 0 where no run
    logged it).
    """
    return _last_values_table(frame, {"ece": 100.0, "nll": 1.0, "ece_ensemble": 100.0, "nll_ensemble": 1.0})


def detection_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Noise detection after the last epoch per noise condition x method: AUROC of the kept head's loss
    and of the heads' consensus as flipped-label detectors, precision (= recall) when flagging as many
    training samples as are flipped (%), and the realized noise rate (%).

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, then ``<col>_mean``,
    ``<col>_std``, ``<col>_n`` for col in realized_rate, detect_auroc, detect_precision,
    detect_auroc_consensus, detect_precision_consensus. n = 0 where undefined (no flipped label, or one
    head for the consensus) or not logged: shown as n/a, never as 0.
    """
    return _last_values_table(
        frame,
        {
            "realized_rate": 100.0,
            "detect_auroc": 1.0,
            "detect_precision": 100.0,
            "detect_auroc_consensus": 1.0,
            "detect_precision_consensus": 100.0,
        },
    )


def kept_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Sample selection at the last epoch per noise condition x method (%): the share of the batch each
    head trained on (kept), the share of those samples whose given label is the true one (Co-teaching's
    label precision), and the share of clean labels in the training set (1 - the realized noise rate:
    the label precision of keeping every sample, for comparison).

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, then ``<col>_mean``,
    ``<col>_std``, ``<col>_n`` for col in kept, kept_precision, clean_labels. n = 0 for methods that
    train on every sample (they log no selection): shown as n/a.
    """
    clean = frame.assign(clean_labels=1.0 - frame.realized_rate)
    return _last_values_table(clean, {"kept": 100.0, "kept_precision": 100.0, "clean_labels": 100.0})


def memorization_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Last-epoch memorized share of flipped labels and train accuracy against the clean labels (%).

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, memorized_mean,
    memorized_std, memorized_n, acc_clean_mean, acc_clean_std, acc_clean_n. Counts only runs that
    are usable for the accuracy table (finished, one per seed).
    """
    rows = []
    for c, method, sel in cells(frame):
        row = {**{k: c[k] for k in CONDITION_COLUMNS}, "method": method}
        for col in ("memorized", "acc_clean"):
            mean, std, n = _summary(sel[col] * 100.0)
            row.update({f"{col}_mean": mean, f"{col}_std": std, f"{col}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)


def collapsed_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished runs whose kept head ended collapsed (tag harness.collapsed = true), left out of the
    aggregates. Columns: run_name, run_id, condition, method, seed, value (the metric, as a fraction
    where it is one), epochs (how many it logged: fewer than planned when run.stop_on_collapse ended it)."""
    rows = frame[(frame.status == "FINISHED") & frame.collapsed]
    columns = ["run_name", "run_id", "condition", "method", "seed", "value", "epochs"]
    return rows[columns].reset_index(drop=True).astype({"seed": "Int64"})


def failed_table(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """Runs left out of the aggregates, and grid points with no run at all.

    Columns: run_name, run_id, status, error, condition, method, seed. Status is the MLflow status
    (FAILED, RUNNING, KILLED, ...), FINISHED for a run that never logged ``metric``, or ABSENT for a
    (condition, method, seed) of the sweep's grid that has no run.
    """
    rows = []
    for _, r in frame[~frame.usable].iterrows():
        if r.status == "FINISHED" and (r.collapsed or not math.isnan(r.value)):
            continue  # collapsed (a table of its own) or a duplicate (reported in the notes)
        error = r.error
        if r.status == "FINISHED":
            error = f"metric {metric!r} was not logged"
        elif not error:
            error = "run did not finish"
        seed = None if pd.isna(r.seed) else int(r.seed)
        rows.append(
            {
                "run_name": r.run_name,
                "run_id": r.run_id,
                "status": r.status,
                "error": error,
                "condition": r.condition,
                "method": r.method,
                "seed": seed,
            }
        )
    seeds = sorted({int(s) for s in frame.seed.dropna()})
    present = set(zip(frame.condition, frame.method, frame.seed))
    for (cond,) in ordered(frame, ["condition"]):
        for (method,) in ordered(frame, ["method"]):
            for seed in seeds:
                if (cond, method, seed) not in present:
                    rows.append(
                        {
                            "run_name": "",
                            "run_id": "",
                            "status": "ABSENT",
                            "error": "no run logged for this grid point",
                            "condition": cond,
                            "method": method,
                            "seed": seed,
                        }
                    )
    return pd.DataFrame(
        rows, columns=["run_name", "run_id", "status", "error", "condition", "method", "seed"]
    ).astype({"seed": "Int64"})


def curves(trials: list[Trial], frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch mean and std over seeds of each key, per condition x method, from usable runs.

    Columns: condition, method, key, step, mean, std, n (values as logged, fractions not scaled).
    """
    usable = frame[frame.usable].set_index("run_id")
    rows = []
    for t in trials:
        if t.run_id not in usable.index:
            continue
        r = usable.loc[t.run_id]
        for key in keys:
            for step, value in t.history.get(key, []):
                rows.append(
                    {"condition": r.condition, "method": r.method, "key": key, "step": step, "value": value}
                )
    long = pd.DataFrame(rows, columns=["condition", "method", "key", "step", "value"])
    agg = long.groupby(["condition", "method", "key", "step"]).value.agg(["mean", "std", "count"])
    return agg.rename(columns={"count": "n"}).reset_index()

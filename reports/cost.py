"""What each method costs to train and to run: computed FLOPs and memory of a step (each also relative
to individual training), measured time, throughput and GPU memory, and parameter counts."""

from __future__ import annotations

import math

import pandas as pd

from reports.frame import COST_METRICS, ordered

# The table's columns, in order (`cost_table`)
COST_COLUMNS = [
    "method",
    "workers",
    "pack",
    "n_runs",
    "step_gflops",
    "step_gflops_x",
    "step_mem_mb",
    "step_mem_mb_x",
    "peak_mem_mb",
    "infer_gflops",
    "infer_gflops_x",
    "time_epoch_s",
    "img_per_s",
    "tflops",
    "train_params",
    "inference_params",
    "individual_inference_params",
    "inference_matches_individual",
]


def cost_table(frame: pd.DataFrame, *, pairs: dict[str, str]) -> pd.DataFrame:
    """Cost per method and setup over all its finished runs (every noise condition and seed).

    A setup is how the runs trained: ``workers`` (data-parallel processes, harness.world_size) and
    ``pack`` (trials packed into one step, from harness.pack; 1: alone). Times and memory depend on
    it, so each setup of a method has a row of its own rather than a mean across setups.

    Columns (COST_COLUMNS): method, workers, pack, n_runs; computed once per run (median over runs):
    step_gflops (forward, loss and backward at the run's batch size), step_mem_mb (parameters,
    gradients, optimizer state and saved tensors), infer_gflops (one image through the kept head),
    each with ``<col>_x``, its ratio to the method's individual-training baseline (1.0 for that
    baseline itself; ``pairs`` says which); measured: peak_mem_mb (mean of per-run maxima; NaN on
    CPU-only runs), time_epoch_s, img_per_s and tflops (mean of per-run medians over epochs; TFLOP/s
    where the runs logged perf/tflops), train_params, inference_params (median over runs), individual_inference_params
    (of the method's baseline), inference_matches_individual ("yes", "no" or "n/a"). NaN (never 0)
    where no run logged it, e.g. runs from before the cost metrics existed.
    """
    done = frame[frame.status == "FINISHED"]
    rows = []
    for (method,) in ordered(frame, ["method"]):
        setups = frame[frame.method == method].drop_duplicates(["workers", "pack"])
        for workers, pack in sorted(zip(setups.workers, setups.pack), key=lambda s: _nan_last(*s)):
            sel = done[(done.method == method) & _equal(done.workers, workers) & _equal(done.pack, pack)]
            rows.append(_setup_row(sel, method=method, workers=workers, pack=pack))
    table = pd.DataFrame(rows)
    base_of = _baseline_of(table, pairs)
    by_method = done.groupby("method")
    for col in COST_METRICS:
        ref = by_method[col].median()
        table[f"{col}_x"] = [
            own / ref.get(base_of.get(m), math.nan) for m, own in zip(table.method, table[col])
        ]
    ref = table.groupby("method").inference_params.median().to_dict()
    table["individual_inference_params"] = [ref.get(base_of.get(m), math.nan) for m in table.method]
    table["inference_matches_individual"] = [
        _same_count(o, b) for o, b in zip(table.inference_params, table.individual_inference_params)
    ]
    return table[COST_COLUMNS]


def _setup_row(sel: pd.DataFrame, *, method: str, workers: float, pack: float) -> dict[str, object]:
    """One method's cost in one setup, from its finished runs ``sel``."""
    return {
        "method": method,
        "workers": workers,
        "pack": pack,
        "n_runs": len(sel),
        **{col: sel[col].median() for col in COST_METRICS},
        "peak_mem_mb": sel.peak_mem_mb.mean(),
        "time_epoch_s": sel.time_epoch_s.mean(),
        "img_per_s": sel.img_per_s.mean(),
        "tflops": sel.tflops.mean(),
        "train_params": sel.train_params.median(),
        "inference_params": sel.inference_params.median(),
    }


def _baseline_of(table: pd.DataFrame, pairs: dict[str, str]) -> dict[str, str]:
    """Method -> the individual-training method its cost is compared with (itself for a baseline)."""
    individual = set(pairs.values()) | ({m for m in table.method if m == "individual"})
    return {**{m: m for m in individual}, **pairs}


def _same_count(own: float, base: float) -> str:
    if math.isnan(own) or math.isnan(base):
        return "n/a"
    return "yes" if own == base else "no"


def _equal(column: pd.Series, value: float) -> pd.Series:
    """column == value, where NaN (a tag that could not be read) equals NaN."""
    return column.isna() if math.isnan(value) else column == value


def _nan_last(*values: float) -> tuple:
    return tuple((math.isnan(v), 0 if math.isnan(v) else v) for v in values)

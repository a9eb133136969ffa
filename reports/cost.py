"""What each method costs to train and to run: memory, time, throughput and parameter counts."""

from __future__ import annotations

import math

import pandas as pd

from reports.frame import ordered


def cost_table(frame: pd.DataFrame, *, pairs: dict[str, str]) -> pd.DataFrame:
    """Cost per method and setup over all its finished runs (every noise condition and seed).

    A setup is how the runs trained: ``workers`` (data-parallel processes, harness.world_size) and
    ``pack`` (trials packed into one step, from harness.pack; 1: alone). Times and memory depend on
    it, so each setup of a method has a row of its own rather than a mean across setups.

    Columns: method, workers, pack, n_runs, peak_mem_mb (mean of per-run maxima; NaN on CPU-only runs),
    time_epoch_s and img_per_s (mean of per-run medians over epochs), train_params,
    inference_params (median over runs), individual_inference_params (of the method's baseline),
    inference_matches_individual ("yes", "no" or "n/a").
    """
    done = frame[frame.status == "FINISHED"]
    rows = []
    for (method,) in ordered(frame, ["method"]):
        setups = frame[frame.method == method].drop_duplicates(["workers", "pack"])
        for workers, pack in sorted(zip(setups.workers, setups.pack), key=lambda s: _nan_last(*s)):
            sel = done[(done.method == method) & _equal(done.workers, workers) & _equal(done.pack, pack)]
            rows.append(
                {
                    "method": method,
                    "workers": workers,
                    "pack": pack,
                    "n_runs": len(sel),
                    "peak_mem_mb": sel.peak_mem_mb.mean(),
                    "time_epoch_s": sel.time_epoch_s.mean(),
                    "img_per_s": sel.img_per_s.mean(),
                    "train_params": sel.train_params.median(),
                    "inference_params": sel.inference_params.median(),
                }
            )
    table = pd.DataFrame(rows)
    ref = table.groupby("method").inference_params.median().to_dict()
    individual = set(pairs.values()) | ({m for m in table.method if m == "individual"})
    base_of = {**{m: m for m in individual}, **pairs}
    table["individual_inference_params"] = [ref.get(base_of.get(m), math.nan) for m in table.method]

    def check(own: float, base: float) -> str:
        if math.isnan(own) or math.isnan(base):
            return "n/a"
        return "yes" if own == base else "no"

    table["inference_matches_individual"] = [
        check(o, b) for o, b in zip(table.inference_params, table.individual_inference_params)
    ]
    return table


def _equal(column: pd.Series, value: float) -> pd.Series:
    """column == value, where NaN (a tag that could not be read) equals NaN."""
    return column.isna() if math.isnan(value) else column == value


def _nan_last(*values: float) -> tuple:
    return tuple((math.isnan(v), 0 if math.isnan(v) else v) for v in values)

"""The report's tables as rows of strings for people: ``mean ± std (n)`` cells, signed gains with
their interval, counts with thousands separators, and n/a (never 0) for what was not logged."""

from __future__ import annotations

import math

import pandas as pd


def _num(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def mean_std_n(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``85.20 ± 1.10 (3)``; ``85.20 (1)`` for one seed; ``n/a (0)`` when nothing finished."""
    n = int(n)
    if n == 0:
        return "n/a (0)"
    if n == 1 or math.isnan(std):
        return f"{_num(mean, digits)} ({n})"
    return f"{_num(mean, digits)} ± {_num(std, digits)} ({n})"


def accuracy_rows(acc: pd.DataFrame, methods: list[str]) -> tuple[list[str], list[list[str]]]:
    """Noise condition x method, cells ``mean ± std (n)``."""
    headers = ["Noise", *methods]
    rows = []
    for cond in dict.fromkeys(acc.condition):
        here = acc[acc.condition == cond].set_index("method")
        rows.append(
            [
                cond,
                *[mean_std_n(*here.loc[m, ["mean", "std", "n"]]) if m in here.index else "" for m in methods],
            ]
        )
    return headers, rows


def _gain_cell(mean: float, low: float, high: float, n: int) -> str:
    """``+1.23 [-0.45, +2.91] (3)``; ``+1.23 (1)`` without an interval; ``n/a (0)`` without pairs."""
    n = int(n)
    if n == 0 or math.isnan(mean):
        return "n/a (0)"
    if math.isnan(low):
        return f"{mean:+.2f} ({n})"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] ({n})"


RULE_HEADERS = {
    "last": "Last epoch",
    "best": "Best epoch (oracle, chosen on test)",
    "val": "Selected by noisy validation",
}


def gains_by_rule_rows(gains: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Noise, method, baseline, then the paired gain under each selection rule: ``mean [95% CI] (pairs)``."""
    unit = f" ({gains.unit.iloc[0]})" if len(gains) and gains.unit.iloc[0] else ""
    headers = ["Noise", "Method", "Baseline", *(f"Gain, {h.lower()}{unit}" for h in RULE_HEADERS.values())]
    rows = []
    for r in gains.to_dict("records"):
        cells = [
            _gain_cell(r[f"diff_mean_{k}"], r[f"ci_low_{k}"], r[f"ci_high_{k}"], r[f"n_pairs_{k}"])
            for k in RULE_HEADERS
        ]
        rows.append([r["condition"], r["method"], r["baseline"], *cells])
    return headers, rows


def selection_rows(selection: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Noise, method, then ``mean ± std (n)`` under each selection rule (with the mean chosen epoch for
    the best and the noisy-validation epoch)."""
    unit = f" ({selection.unit.iloc[0]})" if len(selection) and selection.unit.iloc[0] else ""
    headers = ["Noise", "Method", *(f"{h}{unit}" for h in RULE_HEADERS.values())]
    rows = []
    for (cond, method), here in selection.groupby(["condition", "method"], sort=False):
        by_rule = here.set_index("rule")
        cells = []
        for rule in RULE_HEADERS:
            r = by_rule.loc[rule]
            cell = mean_std_n(r["mean"], r["std"], r["n"])
            if rule != "last" and int(r["n"]) > 0 and not math.isnan(r["epoch_mean"]):
                cell += f", epoch {r['epoch_mean']:.0f}"
            cells.append(cell)
        rows.append([cond, method, *cells])
    return headers, rows


def _stat_cells(r: dict, columns: list[str], digits: dict[str, int]) -> list[str]:
    return [mean_std_n(r[f"{c}_mean"], r[f"{c}_std"], r[f"{c}_n"], digits.get(c, 2)) for c in columns]


def calibration_rows(calibration: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["Noise", "Method", "ECE (%)", "NLL", "ECE, ensemble (%)", "NLL, ensemble"]
    columns = ["ece", "nll", "ece_ensemble", "nll_ensemble"]
    digits = {"nll": 3, "nll_ensemble": 3}
    rows = [
        [r["condition"], r["method"], *_stat_cells(r, columns, digits)]
        for r in calibration.to_dict("records")
    ]
    return headers, rows


def detection_rows(detection: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = [
        "Noise",
        "Method",
        "Flipped (%)",
        "AUROC, kept head's loss",
        "Precision = recall (%)",
        "AUROC, heads' consensus",
        "Precision = recall, consensus (%)",
    ]
    columns = [
        "realized_rate",
        "detect_auroc",
        "detect_precision",
        "detect_auroc_consensus",
        "detect_precision_consensus",
    ]
    digits = {"detect_auroc": 3, "detect_auroc_consensus": 3}
    rows = [
        [r["condition"], r["method"], *_stat_cells(r, columns, digits)] for r in detection.to_dict("records")
    ]
    return headers, rows


def kept_rows(kept: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Kept share and its label precision (``mean ± std (n)``), and the clean share of the training
    labels beside them (its mean: the same data for every method of a condition)."""
    headers = [
        "Noise",
        "Method",
        "Kept (%)",
        "Label precision of the kept (%)",
        "Clean labels in the data (%)",
    ]
    rows = [
        [
            r["condition"],
            r["method"],
            *_stat_cells(r, ["kept", "kept_precision"], {}),
            _num(r["clean_labels_mean"]),
        ]
        for r in kept.to_dict("records")
    ]
    return headers, rows


def _count(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.0f}"


def amount(v: float) -> str:
    """A cost for people: ``1,234`` from 100 on, ``27.30`` from 1, ``0.0691`` below; n/a for NaN."""
    if math.isnan(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def relative(v: float, ratio: float) -> str:
    """``2.00 (x2.00)``: a cost and its ratio to individual training's; the cost alone without one."""
    if math.isnan(v):
        return "n/a"
    return amount(v) if math.isnan(ratio) else f"{amount(v)} (x{ratio:.2f})"


def cost_rows(cost: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Computed cost with its ratio to individual training, then measured time and TFLOP/s (where
    logged; and, where any run had a GPU, peak GPU memory beside the computed step memory), then parameter counts."""
    gpu = bool(cost.peak_mem_mb.notna().any())
    tflops = bool(cost.tflops.notna().any())
    headers = [
        "Method",
        "Workers",
        "Pack",
        "Runs",
        "Step GFLOPs (x individual)",
        "Step memory, MB (x individual)",
        *(["Peak GPU memory (MB)"] if gpu else []),
        "Inference GFLOPs/image (x individual)",
        "Time/epoch (s)",
        "Images/s",
        *(["TFLOP/s"] if tflops else []),
        "Training params",
        "Inference params",
        "Inference params = individual",
    ]
    rows = [
        [
            r.method,
            _count(r.workers),
            _count(r.pack),
            str(r.n_runs),
            relative(r.step_gflops, r.step_gflops_x),
            relative(r.step_mem_mb, r.step_mem_mb_x),
            *([_num(r.peak_mem_mb, 0)] if gpu else []),
            relative(r.infer_gflops, r.infer_gflops_x),
            _num(r.time_epoch_s, 2),
            _count(r.img_per_s),
            *([amount(r.tflops)] if tflops else []),
            _count(r.train_params),
            _count(r.inference_params),
            r.inference_matches_individual,
        ]
        for r in cost.itertuples()
    ]
    return headers, rows


def memorization_rows(mem: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["Noise", "Method", "Memorized flipped labels (%)", "Train acc. vs clean labels (%)"]
    rows = [
        [
            r.condition,
            r.method,
            mean_std_n(r.memorized_mean, r.memorized_std, r.memorized_n),
            mean_std_n(r.acc_clean_mean, r.acc_clean_std, r.acc_clean_n),
        ]
        for r in mem.itertuples()
    ]
    return headers, rows


def collapsed_rows(collapsed: pd.DataFrame, *, percent: bool) -> tuple[list[str], list[list[str]]]:
    headers = ["Run", "Noise", "Method", "Seed", "Last value", "Epochs", "Run id"]
    scale = 100.0 if percent else 1.0
    rows = [
        [
            r.run_name,
            r.condition,
            r.method,
            "" if pd.isna(r.seed) else str(r.seed),
            _num(r.value * scale),
            str(r.epochs),
            r.run_id,
        ]
        for r in collapsed.itertuples()
    ]
    return headers, rows


def failed_rows(failed: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["Run", "Status", "Error", "Noise", "Method", "Seed", "Run id"]
    rows = [
        [
            r.run_name,
            r.status,
            r.error,
            r.condition,
            r.method,
            "" if pd.isna(r.seed) else str(r.seed),
            r.run_id,
        ]
        for r in failed.itertuples()
    ]
    return headers, rows

"""Who is compared with whom (`baselines`) and the paired-by-seed gains over individual training."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from harness.contract import is_fraction_metric
from reports.frame import CONDITION_COLUMNS, SELECTION_RULES, ordered
from reports.params import HEADS_PARAM, RECIPE_DEFAULTS, TOPOLOGY_PARAM, parse_value


def _method_params(frame: pd.DataFrame, method: str, keys: list[str]) -> dict[str, object]:
    row = frame[frame.method == method].iloc[0]
    return {k: row[k] for k in keys if k in frame.columns}


def _plain_recipe(frame: pd.DataFrame, method: str) -> bool:
    """Whether ``method`` trains with the default recipe (RECIPE_DEFAULTS: cross-entropy, no smoothing;
    collab.method cl, which individual training logs too)."""
    row = frame[frame.method == method].iloc[0]
    return all(
        parse_value(row[k]) == parse_value(default)
        for k, default in RECIPE_DEFAULTS.items()
        if k in frame.columns and row[k] is not None
    )


def baselines(frame: pd.DataFrame, keys: list[str]) -> dict[str, str]:
    """The individual-training method each method is compared with (empty if there is none).

    Individual training with the plain recipe (cross-entropy, no label smoothing) is the baseline:
    it has no partner. A cheap baseline (individual with another label loss or with smoothing) is
    paired with plain individual training, so its gain reads next to collaborative learning's. Any
    other method is paired with the individual one that agrees on the most other method params
    (architecture and data first, then the recipe: hierarchical-4+gce with individual+gce).
    """
    individual = list(frame[frame.topology == "individual"].method.unique())
    if not individual:
        return {}
    plain = [m for m in individual if _plain_recipe(frame, m)]
    others = [k for k in keys if k not in (TOPOLOGY_PARAM, HEADS_PARAM)]
    result = {}
    for (method,) in ordered(frame, ["method"]):
        if method in plain or (method in individual and not plain):
            continue
        mine = _method_params(frame, method, others)

        def agreement(base: str, mine: dict = mine) -> tuple[int, int]:
            theirs = _method_params(frame, base, others)
            same = [k for k in others if mine[k] == theirs[k]]
            # Agreement on architecture and data matters more than on collab.* settings.
            return sum(not k.startswith("collab.") for k in same), sum(k.startswith("collab.") for k in same)

        candidates = plain if method in individual else individual
        result[method] = max(candidates, key=agreement)
    return result


def _paired(usable: pd.DataFrame, condition: str, method: str, base: str, column: str, scale: float) -> dict:
    """Paired-by-seed difference of ``column`` (method - base) in one condition, with a 95% t interval."""
    here = usable[usable.condition == condition]
    a = here[here.method == method].set_index("seed")[column].dropna()
    b = here[here.method == base].set_index("seed")[column].dropna()
    seeds = sorted(set(a.index) & set(b.index))
    d = (a.loc[seeds] - b.loc[seeds]).to_numpy(dtype=float) * scale
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {"diff_mean": mean, "diff_std": std, "ci_low": mean - half, "ci_high": mean + half, "n_pairs": n}


GAIN_COLUMNS = ["diff_mean", "diff_std", "ci_low", "ci_high", "n_pairs"]


def gains_table(frame: pd.DataFrame, *, metric: str, pairs: dict[str, str]) -> pd.DataFrame:
    """Paired-by-seed difference (method - baseline) per noise condition, with a 95% t interval.

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, baseline, diff_mean,
    diff_std, ci_low, ci_high, n_pairs (of the report's value: last or best epoch), then the same
    five with the suffix ``_<rule>`` for each of SELECTION_RULES (last, best, val), then unit. The
    interval is ``mean +- t_{0.975, n-1} * std / sqrt(n)`` over the n seeds both methods finished
    (and, per rule, have a value under it) (NaN for n < 2).
    """
    scale, unit = (100.0, "pp") if is_fraction_metric(metric) else (1.0, "")
    usable = frame[frame.usable & frame.seed.notna()]
    rows = []
    conds = frame.drop_duplicates("condition").sort_values("condition_order")
    for _, c in conds.iterrows():
        for method, base in pairs.items():
            row = {**{k: c[k] for k in CONDITION_COLUMNS}, "method": method, "baseline": base}
            row |= _paired(usable, c.condition, method, base, "value", scale)
            for rule in SELECTION_RULES:
                paired = _paired(usable, c.condition, method, base, f"value_{rule}", scale)
                row |= {f"{k}_{rule}": v for k, v in paired.items()}
            rows.append({**row, "unit": unit})
    ruled = [f"{k}_{rule}" for rule in SELECTION_RULES for k in GAIN_COLUMNS]
    return pd.DataFrame(
        rows, columns=[*CONDITION_COLUMNS, "method", "baseline", *GAIN_COLUMNS, *ruled, "unit"]
    )

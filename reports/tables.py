"""Turn trials into comparison tables: group by noise condition and method, aggregate over seeds.

Conventions: a *noise condition* is ``(noise.kind, noise.rate)`` (``noise.label_set`` for human noise);
a *method* is the combination of the params that vary across the sweep's trials, other than
``noise.*``, ``run.*`` and bookkeeping keys. Fractions (accuracies, memorized share) are shown in
percent (``unit = "%"``); differences of fractions in percentage points (``unit = "pp"``).
Standard deviations use ddof=1 (NaN for a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from harness.contract import (
    GPU_PEAK_MEM_MB,
    INFERENCE_PARAMS,
    NOISE_REALIZED_RATE,
    PERF_IMG_PER_S,
    TEST_ECE,
    TEST_ECE_ENSEMBLE,
    TEST_NLL,
    TEST_NLL_ENSEMBLE,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_DETECT_AUROC,
    TRAIN_DETECT_AUROC_CONSENSUS,
    TRAIN_DETECT_PRECISION,
    TRAIN_DETECT_PRECISION_CONSENSUS,
    TRAIN_MEMORIZED,
    TRAIN_PARAMS,
    VAL_ACC_NOISY,
    is_fraction_metric,
    lower_is_better,
)
from reports.runs import Trial

# Params that never define a method: the noise condition, the seed and run bookkeeping.
NON_METHOD_PREFIXES = ("noise.", "run.", "sweep.", "tune.", "harness.")
NON_METHOD_KEYS = frozenset({"data.root", "data.download", "data.num_workers"})
TOPOLOGY_ORDER = {"individual": 0, "instances": 1, "simple": 2, "hierarchical": 3}
CONDITION_COLUMNS = ["noise_kind", "noise_rate", "noise_label_set", "condition"]
# The training recipe's label loss: a run logged before these keys existed trained with the default.
# A method that changes them is another method, named ``<topology>+gce``, ``<topology>+ls0.1`` (label
# smoothing 0.1) by `method_label`.
RECIPE_DEFAULTS = {"optim.label_loss": "ce", "optim.label_smoothing": "0.0"}

# How the epoch whose value a run reports is chosen (`select_epoch`), and what the report calls it.
SELECTION_RULES = {
    "last": "last epoch",
    "best": "best epoch (oracle: chosen on the test set)",
    "val": "selected by noisy validation",
}


def method_param(params: dict[str, str], key: str) -> str | None:
    """A run's param ``key``, or its recipe default (RECIPE_DEFAULTS) when the run did not log it."""
    return params.get(key, RECIPE_DEFAULTS.get(key) if params else None)


def parse_value(text: str | None) -> object:
    """An MLflow param string as int, float, bool or the string itself (None stays None)."""
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return text


def _fmt_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def method_keys(trials: Iterable[Trial]) -> list[str]:
    """Params that tell the sweep's methods apart: topology and heads first, then sorted by name.

    A param counts if its value differs between trials (a missing param counts as a value) and it
    splits the trials further than the keys before it: a setting derived from others (e.g. the
    default ``collab.split`` of each topology) adds nothing and is left out. Trials without any params
    (failed before logging their config) are ignored here.
    """
    trials = [t for t in trials if t.params]
    names = {k for t in trials for k in t.params}
    candidates = [
        k
        for k in sorted(names, key=lambda k: ({"collab.topology": 0, "collab.heads": 1}.get(k, 2), k))
        if not k.startswith(NON_METHOD_PREFIXES) and k not in NON_METHOD_KEYS
    ]
    keys: list[str] = []
    groups = 1
    for key in candidates:
        split = len({tuple(method_param(t.params, k) for k in (*keys, key)) for t in trials})
        if split > groups:
            keys.append(key)
            groups = split
    return sorted(keys)


def method_label(params: dict[str, str], keys: list[str]) -> str:
    """A readable name for one method: ``individual``, ``hierarchical-4``, ``hierarchical-4 T=2``, ``T=4``,
    ``individual+gce``, ``individual+ls0.1``.

    Topology and heads read as one token; a label loss other than cross-entropy and label smoothing
    are appended to it (``+gce``, ``+sce``, ``+ls<eps>``: a cheap baseline is a method of its own);
    ``model.arch`` and ``data.name`` read as their value; other keys as ``<last dotted part>=<value>``.
    """
    topo = params.get("collab.topology", "individual")
    token = topo if topo == "individual" else f"{topo}-{params.get('collab.heads', '?')}"
    recipe = ""
    if "optim.label_loss" in keys and (loss := method_param(params, "optim.label_loss")) != "ce":
        recipe += f"+{loss}"
    smoothing = parse_value(method_param(params, "optim.label_smoothing"))
    if "optim.label_smoothing" in keys and isinstance(smoothing, int | float) and smoothing > 0:
        recipe += f"+ls{smoothing:g}"
    parts = []
    if {"collab.topology", "collab.heads", *RECIPE_DEFAULTS} & set(keys):
        parts.append(token + recipe)
    for key in keys:
        if key in ("collab.topology", "collab.heads", *RECIPE_DEFAULTS):
            continue
        value = _fmt_value(parse_value(params.get(key)))
        parts.append(value if key in ("model.arch", "data.name") else f"{key.rsplit('.', 1)[-1]}={value}")
    # A single method: name it by its topology so the tables still say what was trained.
    return " ".join(parts) if parts else token


def _method_sort_key(params: dict[str, str], keys: list[str]) -> tuple:
    key: list = [TOPOLOGY_ORDER.get(params.get("collab.topology", "individual"), 9)]
    for k in keys:
        v = parse_value(method_param(params, k))
        # Numbers before strings, both ordered among themselves.
        key.append((0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v)))
    return tuple(key)


def noise_condition(params: dict[str, str]) -> tuple[str, float, str, str]:
    """``(kind, rate, label_set, label)``; rate is NaN for human noise (its rate is not a param)."""
    kind = params.get("noise.kind", "none")
    label_set = params.get("noise.label_set") or ""
    if label_set in ("None", "null"):
        label_set = ""
    if kind == "human":
        return kind, math.nan, label_set, f"human {label_set}".strip()
    if kind == "none":
        return kind, 0.0, label_set, "clean"
    rate = float(parse_value(params.get("noise.rate", "0")) or 0.0)
    return kind, rate, label_set, f"{kind} {rate * 100:g}%"


def _summary(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


def _last(history: list[tuple[int, float]]) -> float:
    return history[-1][1] if history else math.nan


def select_epoch(
    history: list[tuple[int, float]],
    rule: str,
    *,
    metric: str,
    selector: list[tuple[int, float]] | None = None,
) -> tuple[int | None, float]:
    """(epoch, value) of ``history`` (``metric``'s (epoch, value) pairs) under a SELECTION_RULES rule.

    ``last``: the final epoch. ``best``: the best value (max; min where lower is better), which
    looks at the test set: an oracle no practitioner has. ``val``: the epoch of the highest
    ``selector`` value (the noisy held-out accuracy), the metric taken at that epoch. Ties go to the
    earliest epoch. (None, NaN) when there is nothing to choose from, or the metric was not logged
    at the chosen epoch.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {', '.join(SELECTION_RULES)}, got {rule!r}")
    if not history:
        return None, math.nan
    if rule == "last":
        return history[-1]
    if rule == "best":
        sign = -1.0 if lower_is_better(metric) else 1.0
        # max() keeps the first of equal keys: the earliest epoch
        return max(history, key=lambda sv: sign * sv[1])
    if not selector:
        return None, math.nan
    epoch = max(selector, key=lambda sv: sv[1])[0]
    return epoch, dict(history).get(epoch, math.nan)


def _median(history: list[tuple[int, float]]) -> float:
    return float(np.median([v for _, v in history])) if history else math.nan


# Columns of `trial_frame` read from a run's last logged values: calibration at the final epoch, noise
# detection (logged once, after the last epoch) and the realized noise rate.
FINAL_METRICS = {
    "ece": TEST_ECE,
    "nll": TEST_NLL,
    "ece_ensemble": TEST_ECE_ENSEMBLE,
    "nll_ensemble": TEST_NLL_ENSEMBLE,
    "detect_auroc": TRAIN_DETECT_AUROC,
    "detect_auroc_consensus": TRAIN_DETECT_AUROC_CONSENSUS,
    "detect_precision": TRAIN_DETECT_PRECISION,
    "detect_precision_consensus": TRAIN_DETECT_PRECISION_CONSENSUS,
    "realized_rate": NOISE_REALIZED_RATE,
}


def trial_frame(trials: list[Trial], *, metric: str, mode: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per trial with its condition, method, seed and the values the tables need.

    Columns: run_id, run_name, status, error, start_time, seed, noise_kind, noise_rate,
    noise_label_set, condition, condition_order, method, method_order, topology, value (``metric`` at the final
    epoch or best over epochs, as logged), value_<rule> and epoch_<rule> (``metric`` and its epoch under
    each of SELECTION_RULES: last, best, val), memorized, acc_clean (final epoch), time_epoch_s,
    img_per_s (median over epochs: robust to first-epoch warm-up and compilation), peak_mem_mb (max
    over epochs), train_params, inference_params, collapsed (tagged harness.collapsed), workers and
    pack (data-parallel processes and packed trials it trained with; NaN where unreadable), usable
    (finished with a metric value, not collapsed, not a duplicate), the FINAL_METRICS columns (ece, nll,
    ece_ensemble, nll_ensemble, detect_auroc, detect_auroc_consensus, detect_precision,
    detect_precision_consensus, realized_rate; NaN where not logged), plus one column per method
    param. Returns the frame and notes.
    """
    if mode not in ("final", "best"):
        raise ValueError(f"mode must be 'final' or 'best', got {mode!r}")
    keys = method_keys(trials)
    rows = []
    for t in trials:
        kind, rate, label_set, cond = noise_condition(t.params)
        seed = parse_value(t.params.get("run.seed"))
        h = t.history
        selected = {}
        for rule in SELECTION_RULES:
            epoch, value = select_epoch(h.get(metric, []), rule, metric=metric, selector=h.get(VAL_ACC_NOISY))
            selected |= {f"value_{rule}": value, f"epoch_{rule}": epoch}
        rows.append(
            {
                "run_id": t.run_id,
                "run_name": t.name,
                "status": t.status,
                "error": t.error or "",
                "start_time": t.start_time,
                "seed": seed if isinstance(seed, int) else None,
                "noise_kind": kind,
                "noise_rate": rate,
                "noise_label_set": label_set,
                "condition": cond,
                "method": method_label(t.params, keys),
                "topology": t.params.get("collab.topology", "individual" if t.params else ""),
                "_method_key": _method_sort_key(t.params, keys),
                **selected,
                "value": selected["value_last" if mode == "final" else "value_best"],
                "memorized": _last(h.get(TRAIN_MEMORIZED, [])),
                "acc_clean": _last(h.get(TRAIN_ACC_CLEAN, [])),
                "time_epoch_s": _median(h.get(TIME_EPOCH_S, [])),
                "img_per_s": _median(h.get(PERF_IMG_PER_S, [])),
                "peak_mem_mb": max((v for _, v in h.get(GPU_PEAK_MEM_MB, [])), default=math.nan),
                "train_params": t.metrics.get(TRAIN_PARAMS, math.nan),
                "inference_params": t.metrics.get(INFERENCE_PARAMS, math.nan),
                "collapsed": t.collapsed,
                "workers": t.world_size,
                "pack": t.pack_size,
                "epochs": len(h.get(metric, [])),
                # final-epoch calibration and end-of-training noise detection (NaN where not logged)
                **{col: t.metrics.get(key, math.nan) for col, key in FINAL_METRICS.items()},
                **{k: method_param(t.params, k) for k in keys},
            }
        )
    frame = pd.DataFrame(rows)
    notes: list[str] = []
    # Clean first, human noise (no rate) last, synthetic kinds by name and rate in between.
    cond_order = (
        frame[["noise_kind", "noise_rate", "noise_label_set", "condition"]]
        .drop_duplicates("condition")
        .assign(_rank=lambda d: d.noise_kind.map(lambda k: {"none": 0, "human": 2}.get(k, 1)))
        .sort_values(["_rank", "noise_kind", "noise_rate", "noise_label_set"], na_position="last")
    )
    frame["condition_order"] = frame.condition.map({c: i for i, c in enumerate(cond_order.condition)})
    methods = sorted(
        frame.drop_duplicates("method")[["method", "_method_key"]].itertuples(index=False), key=lambda r: r[1]
    )
    frame["method_order"] = frame.method.map({m: i for i, (m, _) in enumerate(methods)})
    frame = frame.drop(columns="_method_key")

    finished = frame.status == "FINISHED"
    has_value = frame.value.notna()
    # A collapsed run finished, but its numbers say nothing about the method: never average it in.
    frame["usable"] = finished & has_value & ~frame.collapsed
    # One value per (condition, method, seed): a retried trial must not count twice.
    usable = frame[frame.usable].sort_values("start_time", ascending=False)
    dup = usable.duplicated(["condition", "method", "seed"]) & usable.seed.notna()
    if dup.any():
        frame.loc[usable.index[dup], "usable"] = False
        notes.append(
            f"{int(dup.sum())} duplicate finished run(s) for the same condition, method and seed; "
            "the latest of each was kept"
        )
    frame = frame.sort_values(["condition_order", "method_order", "seed"], na_position="last")
    return frame.reset_index(drop=True), notes


def _ordered(frame: pd.DataFrame, by: list[str]) -> list[tuple]:
    return list(frame.drop_duplicates(by).sort_values([f"{c}_order" for c in by])[by].itertuples(index=False))


def _cells(frame: pd.DataFrame):
    """(condition row, method, its usable runs) for every condition x method seen in the sweep, in order."""
    usable = frame[frame.usable]
    conds = frame.drop_duplicates("condition").sort_values("condition_order")
    for _, c in conds.iterrows():
        for (method,) in _ordered(frame, ["method"]):
            yield c, method, usable[(usable.condition == c.condition) & (usable.method == method)]


def accuracy_table(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds of the selected metric, per noise condition x method.

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, mean, std, n, unit.
    Every condition x method seen in the sweep has a row (n = 0 when no run finished).
    """
    scale, unit = (100.0, "%") if is_fraction_metric(metric) else (1.0, "")
    rows = []
    for c, method, sel in _cells(frame):
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
    for c, method, sel in _cells(frame):
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


def _final_table(frame: pd.DataFrame, columns: dict[str, float]) -> pd.DataFrame:
    """Mean, std and n over seeds of each frame column in ``columns`` (column -> scale), per cell."""
    rows = []
    for c, method, sel in _cells(frame):
        row = {**{k: c[k] for k in CONDITION_COLUMNS}, "method": method}
        for col, scale in columns.items():
            mean, std, n = _summary(sel[col] * scale)
            row.update({f"{col}_mean": mean, f"{col}_std": std, f"{col}_n": n})
        rows.append(row)
    names = [f"{col}_{s}" for col in columns for s in ("mean", "std", "n")]
    return pd.DataFrame(rows, columns=[*CONDITION_COLUMNS, "method", *names])


def calibration_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch calibration on the test set per noise condition x method: ECE (%, 15 bins) and NLL
    (nats) of the kept head and of the heads' ensemble.

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, then ``<col>_mean``,
    ``<col>_std``, ``<col>_n`` for col in ece, nll, ece_ensemble, nll_ensemble (n = 0 where no run
    logged it).
    """
    return _final_table(frame, {"ece": 100.0, "nll": 1.0, "ece_ensemble": 100.0, "nll_ensemble": 1.0})


def detection_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Noise detection after the last epoch per noise condition x method: AUROC of the kept head's loss
    and of the heads' consensus as flipped-label detectors, precision (= recall) when flagging as many
    training samples as are flipped (%), and the realized noise rate (%).

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, then ``<col>_mean``,
    ``<col>_std``, ``<col>_n`` for col in realized_rate, detect_auroc, detect_precision,
    detect_auroc_consensus, detect_precision_consensus. n = 0 where undefined (no flipped label, or one
    head for the consensus) or not logged: shown as n/a, never as 0.
    """
    return _final_table(
        frame,
        {
            "realized_rate": 100.0,
            "detect_auroc": 1.0,
            "detect_precision": 100.0,
            "detect_auroc_consensus": 1.0,
            "detect_precision_consensus": 100.0,
        },
    )


def _method_params(frame: pd.DataFrame, method: str, keys: list[str]) -> dict[str, object]:
    row = frame[frame.method == method].iloc[0]
    return {k: row[k] for k in keys if k in frame.columns}


def _plain_recipe(frame: pd.DataFrame, method: str) -> bool:
    """Whether ``method`` trains with the default label loss (cross-entropy, no smoothing)."""
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
    others = [k for k in keys if k not in ("collab.topology", "collab.heads")]
    result = {}
    for (method,) in _ordered(frame, ["method"]):
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
    diff_std, ci_low, ci_high, n_pairs (of the report's value: final or best epoch), then the same
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
    for (method,) in _ordered(frame, ["method"]):
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


def memorization_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch memorized share of flipped labels and train accuracy against the clean labels (%).

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, memorized_mean,
    memorized_std, memorized_n, acc_clean_mean, acc_clean_std, acc_clean_n. Counts only runs that
    are usable for the accuracy table (finished, one per seed).
    """
    rows = []
    for c, method, sel in _cells(frame):
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
    for (cond,) in _ordered(frame, ["condition"]):
        for (method,) in _ordered(frame, ["method"]):
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

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
    PERF_IMG_PER_S,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_MEMORIZED,
    TRAIN_PARAMS,
    is_fraction_metric,
    lower_is_better,
)
from reports.runs import Trial

# Params that never define a method: the noise condition, the seed and run bookkeeping.
NON_METHOD_PREFIXES = ("noise.", "run.", "sweep.", "tune.", "harness.")
NON_METHOD_KEYS = frozenset({"data.root", "data.download", "data.num_workers"})
TOPOLOGY_ORDER = {"individual": 0, "instances": 1, "simple": 2, "hierarchical": 3}
CONDITION_COLUMNS = ["noise_kind", "noise_rate", "noise_label_set", "condition"]


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
        split = len({tuple(t.params.get(k) for k in (*keys, key)) for t in trials})
        if split > groups:
            keys.append(key)
            groups = split
    return sorted(keys)


def method_label(params: dict[str, str], keys: list[str]) -> str:
    """A readable name for one method: ``individual``, ``hierarchical-4``, ``hierarchical-4 T=2``, ``T=4``.

    Topology and heads read as one token; ``model.arch`` and ``data.name`` as their value; other keys
    as ``<last dotted part>=<value>``.
    """
    parts = []
    if "collab.topology" in keys or "collab.heads" in keys:
        topo = params.get("collab.topology", "individual")
        parts.append(topo if topo == "individual" else f"{topo}-{params.get('collab.heads', '?')}")
    for key in keys:
        if key in ("collab.topology", "collab.heads"):
            continue
        value = _fmt_value(parse_value(params.get(key)))
        parts.append(value if key in ("model.arch", "data.name") else f"{key.rsplit('.', 1)[-1]}={value}")
    if parts:
        return " ".join(parts)
    # A single method: name it by its topology so the tables still say what was trained.
    topo = params.get("collab.topology", "individual")
    return topo if topo == "individual" else f"{topo}-{params.get('collab.heads', '?')}"


def _method_sort_key(params: dict[str, str], keys: list[str]) -> tuple:
    key: list = [TOPOLOGY_ORDER.get(params.get("collab.topology", "individual"), 9)]
    for k in keys:
        v = parse_value(params.get(k))
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


def _select(history: list[tuple[int, float]], mode: str, metric: str) -> float:
    if not history:
        return math.nan
    if mode == "final":
        return history[-1][1]
    values = [v for _, v in history]
    # "best" is the maximum except where lower is better (losses, times)
    return min(values) if lower_is_better(metric) else max(values)


def _median(history: list[tuple[int, float]]) -> float:
    return float(np.median([v for _, v in history])) if history else math.nan


def trial_frame(trials: list[Trial], *, metric: str, mode: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per trial with its condition, method, seed and the values the tables need.

    Columns: run_id, run_name, status, error, start_time, seed, noise_kind, noise_rate,
    noise_label_set, condition, condition_order, method, method_order, topology, value (``metric`` at the final
    epoch or best over epochs, as logged), memorized, acc_clean (final epoch), time_epoch_s,
    img_per_s (median over epochs: robust to first-epoch warm-up and compilation), peak_mem_mb (max
    over epochs), train_params, inference_params, collapsed (tagged harness.collapsed), workers and
    pack (data-parallel processes and packed trials it trained with; NaN where unreadable), usable
    (finished with a metric value, not collapsed, not a duplicate), plus one column per method param. Returns the frame and notes.
    """
    if mode not in ("final", "best"):
        raise ValueError(f"mode must be 'final' or 'best', got {mode!r}")
    keys = method_keys(trials)
    rows = []
    for t in trials:
        kind, rate, label_set, cond = noise_condition(t.params)
        seed = parse_value(t.params.get("run.seed"))
        h = t.history
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
                "value": _select(h.get(metric, []), mode, metric),
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
                **{k: t.params.get(k) for k in keys},
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


def _method_params(frame: pd.DataFrame, method: str, keys: list[str]) -> dict[str, object]:
    row = frame[frame.method == method].iloc[0]
    return {k: row[k] for k in keys if k in frame.columns}


def baselines(frame: pd.DataFrame, keys: list[str]) -> dict[str, str]:
    """The individual-training method each method is compared with (empty if there is none).

    With several individual methods (e.g. the architecture varies), a method is paired with the
    individual one that agrees on the most other method params.
    """
    individual = list(frame[frame.topology == "individual"].method.unique())
    if not individual:
        return {}
    others = [k for k in keys if k not in ("collab.topology", "collab.heads")]
    result = {}
    for (method,) in _ordered(frame, ["method"]):
        if method in individual:
            continue
        mine = _method_params(frame, method, others)

        def agreement(base: str, mine: dict = mine) -> tuple[int, int]:
            theirs = _method_params(frame, base, others)
            same = [k for k in others if mine[k] == theirs[k]]
            # Agreement on architecture and data matters more than on collab.* settings.
            return sum(not k.startswith("collab.") for k in same), sum(k.startswith("collab.") for k in same)

        result[method] = max(individual, key=agreement)
    return result


def gains_table(frame: pd.DataFrame, *, metric: str, pairs: dict[str, str]) -> pd.DataFrame:
    """Paired-by-seed difference (method - baseline) per noise condition, with a 95% t interval.

    Columns: noise_kind, noise_rate, noise_label_set, condition, method, baseline, diff_mean,
    diff_std, ci_low, ci_high, n_pairs, unit. The interval is
    ``mean +- t_{0.975, n-1} * std / sqrt(n)`` over the n seeds both methods finished (NaN for n < 2).
    """
    scale, unit = (100.0, "pp") if is_fraction_metric(metric) else (1.0, "")
    usable = frame[frame.usable & frame.seed.notna()]
    rows = []
    conds = frame.drop_duplicates("condition").sort_values("condition_order")
    for _, c in conds.iterrows():
        here = usable[usable.condition == c.condition]
        for method, base in pairs.items():
            a = here[here.method == method].set_index("seed").value
            b = here[here.method == base].set_index("seed").value
            seeds = sorted(set(a.index) & set(b.index))
            d = (a.loc[seeds] - b.loc[seeds]).to_numpy(dtype=float) * scale
            n = len(d)
            mean = float(d.mean()) if n else math.nan
            std = float(d.std(ddof=1)) if n > 1 else math.nan
            half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
            rows.append(
                {
                    **{k: c[k] for k in CONDITION_COLUMNS},
                    "method": method,
                    "baseline": base,
                    "diff_mean": mean,
                    "diff_std": std,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                    "n_pairs": n,
                    "unit": unit,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            *CONDITION_COLUMNS,
            "method",
            "baseline",
            "diff_mean",
            "diff_std",
            "ci_low",
            "ci_high",
            "n_pairs",
            "unit",
        ],
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

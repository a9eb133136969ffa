"""One row per trial (`trial_frame`): its noise condition, method, seed and the values the tables need.

Conventions: a *noise condition* is ``(noise.kind, noise.rate)`` (``noise.label_set`` for human noise);
a *method* is named by ``reports.methods``. `ordered` and `cells` walk the frame in the report's order.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.contract import (
    COST_INFER_GFLOPS,
    COST_STEP_GFLOPS,
    COST_STEP_MEM_MB,
    GPU_PEAK_MEM_MB,
    INFERENCE_PARAMS,
    NOISE_REALIZED_RATE,
    PERF_IMG_PER_S,
    PERF_TFLOPS,
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
    TRAIN_KEPT,
    TRAIN_KEPT_PRECISION,
    TRAIN_MEMORIZED,
    TRAIN_PARAMS,
    VAL_ACC_NOISY,
    lower_is_better,
)
from reports.methods import MethodNames, family, method_names
from reports.params import (
    NOISE_KIND_PARAM,
    NOISE_LABEL_SET_PARAM,
    NOISE_RATE_PARAM,
    SEED_PARAM,
    TOPOLOGY_PARAM,
    method_param,
    parse_value,
)
from reports.runs import Trial

CONDITION_COLUMNS = ["noise_kind", "noise_rate", "noise_label_set", "condition"]


# How the epoch whose value a run reports is chosen (`select_epoch`), and what the report calls it.
SELECTION_RULES = {
    "last": "last epoch",
    "best": "best epoch (oracle: chosen on the test set)",
    "val": "selected by noisy validation",
}
# The rules a report's main table and ``value`` column may use (``harness report --mode``).
MODES = ("last", "best")


def noise_condition(params: dict[str, str]) -> tuple[str, float, str, str]:
    """``(kind, rate, label_set, label)``; rate is NaN for human noise (its rate is not a param)."""
    kind = params.get(NOISE_KIND_PARAM, "none")
    label_set = params.get(NOISE_LABEL_SET_PARAM) or ""
    if label_set in ("None", "null"):
        label_set = ""
    if kind == "human":
        return kind, math.nan, label_set, f"human {label_set}".strip()
    if kind == "none":
        return kind, 0.0, label_set, "clean"
    rate = float(parse_value(params.get(NOISE_RATE_PARAM, "0")) or 0.0)
    return kind, rate, label_set, f"{kind} {rate * 100:g}%"


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

    ``last``: the last epoch. ``best``: the best value (max; min where lower is better), which
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


# Columns of `trial_frame` read from a run's last logged values: calibration at the last epoch, noise
# detection (logged once, after the last epoch) and the realized noise rate.
LAST_VALUE_METRICS = {
    "ece": TEST_ECE,
    "nll": TEST_NLL,
    "ece_ensemble": TEST_ECE_ENSEMBLE,
    "nll_ensemble": TEST_NLL_ENSEMBLE,
    "detect_auroc": TRAIN_DETECT_AUROC,
    "detect_auroc_consensus": TRAIN_DETECT_AUROC_CONSENSUS,
    "detect_precision": TRAIN_DETECT_PRECISION,
    "detect_precision_consensus": TRAIN_DETECT_PRECISION_CONSENSUS,
    "realized_rate": NOISE_REALIZED_RATE,
    # sample selection (Co-teaching and its kin; NaN for methods that train on every sample)
    "kept": TRAIN_KEPT,
    "kept_precision": TRAIN_KEPT_PRECISION,
}
# Columns of `trial_frame` with what one step costs, counted once per trial at its first epoch (NaN for
# runs logged before these metrics existed)
COST_METRICS = {
    "step_gflops": COST_STEP_GFLOPS,
    "step_mem_mb": COST_STEP_MEM_MB,
    "infer_gflops": COST_INFER_GFLOPS,
}


def trial_frame(trials: list[Trial], *, metric: str, mode: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per trial with its condition, method, seed and the values the tables need.

    Columns:
    - the run: run_id, run_name, status, error, start_time, seed; collapsed (tagged so), workers and
      pack (data-parallel processes and packed trials it trained with; NaN where unreadable);
    - its place: noise_kind, noise_rate, noise_label_set, condition, condition_order; method,
      method_order, topology, family (``reports.methods``), and one column per method param;
    - ``metric``: value (under the ``mode`` rule, one of MODES), value_<rule> and epoch_<rule> for
      each of SELECTION_RULES (last, best, val), epochs (how many it logged);
    - per epoch: memorized and acc_clean (last epoch); time_epoch_s, img_per_s and tflops (median over
      epochs: robust to first-epoch warm-up and compilation); peak_mem_mb (max over epochs);
    - once: train_params, inference_params, the COST_METRICS columns (step_gflops, step_mem_mb,
      infer_gflops) and the LAST_VALUE_METRICS columns (calibration, noise detection, realized_rate,
      kept, kept_precision);
    - usable: finished with a metric value, not collapsed, not a duplicate.
    NaN where a run did not log it. Returns the frame and notes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'last' or 'best', got {mode!r}")
    names = method_names(trials)
    frame = pd.DataFrame([_trial_row(t, names, metric=metric, mode=mode) for t in trials])
    frame = _add_order(frame)
    notes = _mark_usable(frame)
    frame = frame.sort_values(["condition_order", "method_order", "seed"], na_position="last")
    return frame.reset_index(drop=True), notes


def _trial_row(t: Trial, names: MethodNames, *, metric: str, mode: str) -> dict[str, object]:
    """One trial's row of `trial_frame`, before its order and usability are known."""
    kind, rate, label_set, cond = noise_condition(t.params)
    seed = parse_value(t.params.get(SEED_PARAM))
    h = t.history
    selected = _selected_values(h, metric)
    return {
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
        "method": names.label(t.params),
        "topology": t.params.get(TOPOLOGY_PARAM, "individual" if t.params else ""),
        "family": family(t.params) if t.params else "",
        "_method_key": names.sort_key(t.params),
        **selected,
        "value": selected[f"value_{mode}"],
        **_measurements(t),
        "epochs": len(h.get(metric, [])),
        # last-epoch calibration and end-of-training noise detection (NaN where not logged)
        **{col: t.metrics.get(key, math.nan) for col, key in LAST_VALUE_METRICS.items()},
        **{k: method_param(t.params, k) for k in names.keys},
    }


def _selected_values(history: dict[str, list[tuple[int, float]]], metric: str) -> dict[str, object]:
    """``value_<rule>`` and ``epoch_<rule>``: ``metric`` and its epoch under each of SELECTION_RULES."""
    selected: dict[str, object] = {}
    for rule in SELECTION_RULES:
        epoch, value = select_epoch(
            history.get(metric, []), rule, metric=metric, selector=history.get(VAL_ACC_NOISY)
        )
        selected |= {f"value_{rule}": value, f"epoch_{rule}": epoch}
    return selected


def _measurements(t: Trial) -> dict[str, object]:
    """What a trial measured besides the ranked metric: memorization, time, memory, cost, size, setup."""
    h = t.history
    return {
        "memorized": _last(h.get(TRAIN_MEMORIZED, [])),
        "acc_clean": _last(h.get(TRAIN_ACC_CLEAN, [])),
        "time_epoch_s": _median(h.get(TIME_EPOCH_S, [])),
        "img_per_s": _median(h.get(PERF_IMG_PER_S, [])),
        "tflops": _median(h.get(PERF_TFLOPS, [])),
        "peak_mem_mb": max((v for _, v in h.get(GPU_PEAK_MEM_MB, [])), default=math.nan),
        "train_params": t.metrics.get(TRAIN_PARAMS, math.nan),
        "inference_params": t.metrics.get(INFERENCE_PARAMS, math.nan),
        **{col: t.metrics.get(key, math.nan) for col, key in COST_METRICS.items()},
        "collapsed": t.collapsed,
        "workers": t.world_size,
        "pack": t.pack_size,
    }


def _add_order(frame: pd.DataFrame) -> pd.DataFrame:
    """``condition_order`` and ``method_order``: the report's row and column order."""
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
    return frame.drop(columns="_method_key")


def _mark_usable(frame: pd.DataFrame) -> list[str]:
    """Set ``usable``: finished, with a value, not collapsed, the latest of its (condition, method,
    seed). Returns notes on what was left out."""
    finished = frame.status == "FINISHED"
    has_value = frame.value.notna()
    # A collapsed run finished, but its numbers say nothing about the method: never average it in.
    frame["usable"] = finished & has_value & ~frame.collapsed
    # One value per (condition, method, seed): a retried trial must not count twice.
    usable = frame[frame.usable].sort_values("start_time", ascending=False)
    dup = usable.duplicated(["condition", "method", "seed"]) & usable.seed.notna()
    if not dup.any():
        return []
    frame.loc[usable.index[dup], "usable"] = False
    return [
        f"{int(dup.sum())} duplicate finished run(s) for the same condition, method and seed; "
        "the latest of each was kept"
    ]


def ordered(frame: pd.DataFrame, by: list[str]) -> list[tuple]:
    return list(frame.drop_duplicates(by).sort_values([f"{c}_order" for c in by])[by].itertuples(index=False))


def cells(frame: pd.DataFrame):
    """(condition row, method, its usable runs) for every condition x method seen in the sweep, in order."""
    usable = frame[frame.usable]
    conds = frame.drop_duplicates("condition").sort_values("condition_order")
    for _, c in conds.iterrows():
        for (method,) in ordered(frame, ["method"]):
            yield c, method, usable[(usable.condition == c.condition) & (usable.method == method)]

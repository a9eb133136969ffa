"""Read one sweep from MLflow: pick the parent run, list its trials, fetch params and metric histories.

What the sweep side writes, and under which names, is harness.contract (the writer's promise, read
here): one parent run per sweep, one child run per trial, ``ERROR_TAG`` on failure, ``COLLAPSED_TAG =
"true"`` on a run whose kept head ended collapsed, ``WORLD_SIZE_TAG`` and ``PACK_TAG`` (how it
trained: its data-parallel processes, and ``"<pack id>:<pack size>"`` when packed), params flattened with dots and metrics logged per
epoch with ``step = epoch`` (1-based).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run, ViewType
from mlflow.exceptions import MlflowException

from harness.contract import (
    COLLAPSED_TAG,
    ERROR_TAG,
    GPU_PEAK_MEM_MB,
    PACK_TAG,
    PARENT_TAG,
    PERF_IMG_PER_S,
    PERF_TFLOPS,
    RUN_KIND_TAG,
    SWEEP_NAME_TAG,
    SWEEP_RUN,
    SWEEP_TRIALS_PARAM,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_KEPT,
    TRAIN_KEPT_PRECISION,
    TRAIN_MEMORIZED,
    TRIAL_RUN,
    VAL_ACC_NOISY,
    WORLD_SIZE_TAG,
)
from reports.params import WORKERS_PARAM

# Metrics whose per-epoch history the report needs (besides the ranked metric); the noisy held-out
# accuracy picks the epoch of the "selected by noisy validation" rule; the kept share and its label
# precision are drawn per epoch.
HISTORY_KEYS = (
    TRAIN_MEMORIZED,
    TRAIN_ACC_CLEAN,
    TIME_EPOCH_S,
    PERF_IMG_PER_S,
    PERF_TFLOPS,
    PERF_TFLOPS,
    GPU_PEAK_MEM_MB,
    VAL_ACC_NOISY,
    TRAIN_KEPT,
    TRAIN_KEPT_PRECISION,
)


@dataclass
class Trial:
    """One trial run. ``history[key]`` is a list of ``(step, value)`` sorted by step (step = epoch)."""

    run_id: str
    name: str
    status: str
    error: str | None
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    collapsed: bool = False  # the run ended collapsed: finished, but its numbers mean nothing
    # how it trained, which its times and memory depend on: data-parallel processes, trials packed
    # into its step (1: alone); NaN where a tag cannot be read
    world_size: float = 1
    pack_size: float = 1


@dataclass
class Sweep:
    """The runs one report covers; ``parent_run_id`` is None when the experiment has no sweep parent."""

    experiment_name: str
    experiment_id: str
    parent_run_id: str | None
    name: str
    trials: list[Trial]
    notes: list[str] = field(default_factory=list)
    planned_trials: int | None = None  # the parent's ``sweep.trials`` param, when logged


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_names(client: MlflowClient) -> list[str]:
    return sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000))


def _sweep_parents(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    return _search_all(client, experiment_ids, f"tags.`{RUN_KIND_TAG}` = '{SWEEP_RUN}'")


def _describe_sweeps(client: MlflowClient, experiment_ids: list[str]) -> str:
    parents = _sweep_parents(client, experiment_ids)
    if not parents:
        return "no sweep runs"
    return ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in parents[:20])


def select_sweep(client: MlflowClient, *, experiment: str | None, sweep_run_id: str | None) -> Sweep:
    """The runs to report on, without their metric histories (see ``load_histories``).

    - ``sweep_run_id``: that parent run's children (it must lie in ``experiment`` when both are given).
    - ``experiment`` only: the latest sweep parent run in it; if it has none, every non-sweep run in it
      (e.g. ``harness train`` runs), with a note.
    - neither: the latest sweep parent run in any experiment.

    Raises ValueError, naming what exists, for an unknown experiment or run id or when nothing is found.
    """
    exp = _experiment(client, experiment)
    notes: list[str] = []
    if sweep_run_id is not None:
        parent = _given_parent(client, sweep_run_id, exp)
    else:
        parent = _latest_parent(client, exp, notes)
    if parent is not None:
        exp = client.get_experiment(parent.info.experiment_id)
        name, runs = _children(client, parent, exp)
    else:
        assert exp is not None  # _latest_parent raises when there is neither
        name, runs = _runs_without_parent(client, exp, notes)
    trials = [_trial(r) for r in runs if r.data.tags.get(RUN_KIND_TAG) in (None, TRIAL_RUN)]
    if not trials:
        kinds = sorted({str(r.data.tags.get(RUN_KIND_TAG)) for r in runs})
        raise ValueError(f"{name!r} has no trial runs (run kinds found: {', '.join(kinds)})")
    return Sweep(
        experiment_name=exp.name,
        experiment_id=exp.experiment_id,
        parent_run_id=parent.info.run_id if parent is not None else None,
        name=name,
        trials=trials,
        notes=notes,
        planned_trials=_planned(parent),
    )


def _experiment(client: MlflowClient, experiment: str | None) -> Experiment | None:
    """The experiment named ``experiment`` (None for None); ValueError naming those there are."""
    if experiment is None:
        return None
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(
            f"experiment {experiment!r} not found in the MLflow store; "
            f"experiments: {', '.join(_experiment_names(client)) or 'none'}"
        )
    return exp


def _experiment_ids(client: MlflowClient, exp: Experiment | None) -> list[str]:
    return [exp.experiment_id] if exp else [e.experiment_id for e in client.search_experiments()]


def _given_parent(client: MlflowClient, sweep_run_id: str, exp: Experiment | None) -> Run:
    """The sweep parent run ``sweep_run_id``, checked to be one (and to lie in ``exp`` if given)."""
    try:
        parent = client.get_run(sweep_run_id)
    except MlflowException as err:
        raise ValueError(
            f"sweep run {sweep_run_id!r} not found; sweep runs: "
            f"{_describe_sweeps(client, _experiment_ids(client, exp))}"
        ) from err
    if exp is not None and parent.info.experiment_id != exp.experiment_id:
        raise ValueError(
            f"sweep run {sweep_run_id!r} is not in experiment {exp.name!r}; sweep runs there: "
            f"{_describe_sweeps(client, [exp.experiment_id])}"
        )
    kind = parent.data.tags.get(RUN_KIND_TAG)
    if kind not in (None, SWEEP_RUN):
        raise ValueError(
            f"run {sweep_run_id!r} has {RUN_KIND_TAG}={kind!r}, not a sweep parent run; pass the "
            f"sweep's run id (its parent is {parent.data.tags.get(PARENT_TAG, 'unknown')})"
        )
    return parent


def _latest_parent(client: MlflowClient, exp: Experiment | None, notes: list[str]) -> Run | None:
    """The newest sweep parent run in ``exp`` (in any experiment for None); None when ``exp`` has no
    sweep run (its runs are reported instead); ValueError when no experiment has one."""
    parents = _sweep_parents(client, _experiment_ids(client, exp))
    if not parents:
        if exp is None:
            raise ValueError(
                "no sweep runs in the MLflow store; pass --experiment NAME; experiments: "
                f"{', '.join(_experiment_names(client)) or 'none'}"
            )
        return None
    parent = parents[0]  # newest first
    if len(parents) > 1:
        notes.append(
            f"{len(parents)} sweep runs found; reporting the latest, {parent.info.run_name} "
            f"({parent.info.run_id}); choose another with --sweep RUN_ID"
        )
    return parent


def _children(client: MlflowClient, parent: Run, exp: Experiment) -> tuple[str, list[Run]]:
    """The sweep's name and the runs of its parent run."""
    runs = _search_all(client, [exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    name = parent.data.tags.get(SWEEP_NAME_TAG) or parent.info.run_name or parent.info.run_id
    if not runs:
        raise ValueError(f"sweep run {parent.info.run_id} ({name}) has no trial runs")
    return name, runs


def _runs_without_parent(client: MlflowClient, exp: Experiment, notes: list[str]) -> tuple[str, list[Run]]:
    """An experiment without sweep runs (e.g. ``harness train`` runs): its name and all its runs."""
    runs = [r for r in _search_all(client, [exp.experiment_id]) if r.data.tags.get(RUN_KIND_TAG) != SWEEP_RUN]
    if not runs:
        raise ValueError(
            f"experiment {exp.name!r} has no runs; experiments: {', '.join(_experiment_names(client))}"
        )
    notes.append(f"experiment {exp.name!r} has no sweep parent run; reporting all its {len(runs)} runs")
    return exp.name, runs


def _trial(r: Run) -> Trial:
    return Trial(
        run_id=r.info.run_id,
        name=r.info.run_name or r.info.run_id,
        status=r.info.status,
        error=r.data.tags.get(ERROR_TAG),
        start_time=r.info.start_time or 0,
        params=dict(r.data.params),
        metrics=dict(r.data.metrics),
        collapsed=r.data.tags.get(COLLAPSED_TAG) == "true",
        world_size=_count_tag(r.data.tags.get(WORLD_SIZE_TAG) or r.data.params.get(WORKERS_PARAM)),
        pack_size=_count_tag((r.data.tags.get(PACK_TAG) or "").rpartition(":")[2]),
    )


def _count_tag(text: str | None) -> float:
    """A positive count from a tag (absent or empty: 1, the trial trained alone); NaN when unreadable."""
    if not text:
        return 1
    return int(text) if text.isdigit() and int(text) > 0 else math.nan


def _planned(parent: Run | None) -> int | None:
    value = parent.data.params.get(SWEEP_TRIALS_PARAM) if parent is not None else None
    return int(value) if value is not None and value.isdigit() else None


def load_histories(client: MlflowClient, trials: list[Trial], keys: tuple[str, ...]) -> None:
    """Fill ``trial.history`` for the given metric keys (those the run logged), finished runs only."""
    for trial in trials:
        if trial.status != "FINISHED":
            continue
        for key in keys:
            if key not in trial.metrics or key in trial.history:
                continue
            # A step logged twice (e.g. a resumed trial) keeps its latest value.
            by_step: dict[int, tuple[int, float]] = {}
            for m in client.get_metric_history(trial.run_id, key):
                if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                    by_step[m.step] = (m.timestamp, m.value)
            trial.history[key] = sorted((step, v) for step, (_, v) in by_step.items())

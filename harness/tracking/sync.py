"""`harness sync DIR`: an exported sweep's results into MLflow, as if the sweep had run under Ray.

One parent run for the sweep (a harness.tracking.SweepRun, as under Ray), one child run per started
trial, logged with its `start_trial` like a Ray trial: params (the config as run: config.yaml plus `harness run`'s
--device/--data-root), every epoch's metrics at step = epoch, tags, the artifacts of
checkpoint/artifacts/, and a status. `harness report --experiment NAME` then reads it as it reads
a Ray sweep.

Status: finished or collapsed -> FINISHED (TrialLogger.finish sets harness.collapsed from the final
metrics), failed -> FAILED with harness.error, running (not ended when synced) -> RUNNING while
logged, then KILLED with harness.unfinished=true and a run description saying so. Trials never
started get no run, as under Ray.

Identity and duplicates. A sweep in a store is (experiment, sweep name); a trial is its key
(harness.trial_key, a digest of its config) under the sweep's parent run, the key `harness sweep`
gives the same trial. The rule:
- Parent: the newest sweep run of that name in the experiment that this export made, or whose
  trials share a key with it (a `harness sweep` of the same file, an earlier sync); else a new one.
- A trial whose run this export logged (harness.export_id) is continued with what is new (epochs
  after the last logged step, artifacts when it ended, its status), or left alone when nothing
  changed since the last sync (harness.synced). A FINISHED run is never taken back.
- A trial with a run from elsewhere (`harness sweep`, another export): a FINISHED or RUNNING run is
  kept and the export's copy is not logged; a FAILED or KILLED one gives way when the export's
  trial ended: it is deleted (`mlflow runs restore --run-id ID` brings it back) and the export's
  run logged instead.
So every trial has one run, and the first finished result stays.

Everything in DIR is read and checked before the store is opened: unusable input logs nothing
(exit 2). A sync that fails midway leaves runs RUNNING or KILLED that the next sync completes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness import config as C
from harness.contract import (
    ERROR_TAG,
    EXPORT_TAG,
    LAUNCHER_TAG,
    NOTE_TAG,
    PARENT_TAG,
    RUN_KIND_TAG,
    SWEEP_NAME_TAG,
    SWEEP_RUN,
    SYNCED_TAG,
    TRIAL_KEY_TAG,
    UNFINISHED_TAG,
)
from harness.run import export as X
from harness.run.layout import TrialFolder
from harness.run.state import TrialState
from harness.tracking import SweepRun, experiment_id

ACTIONS = ("logged", "updated", "up to date", "kept", "not started")  # what a sync does with a trial folder


def read_export(root: Path):
    """(export, [(trial, config)]) with every folder read and checked, or the list of problems."""
    try:
        export = X.open_export(root)
    except X.ExportError as exc:
        return [str(exc)]
    problems, trials = [], []
    for path in export.trial_dirs:
        try:
            trial = X.read_trial(path, export)
            trials.append((trial, X.trial_config(trial, trial.runtime.get("overrides"), need_data=False)))
        except X.ExportError as exc:
            problems.append(str(exc))
    if not export.trial_dirs:
        problems.append(f"{export.root}: holds no trial folders")
    return problems or (export, trials)


def open_sweep_run(client, export: X.Export, keys: set[str]):
    """The parent run to log under (the rule in the module docstring), open, and how it was found."""

    exp_id = experiment_id(client, export.experiment)
    parents = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_KIND_TAG}` = '{SWEEP_RUN}' and tags.`{SWEEP_NAME_TAG}` = '{export.sweep}'",
        order_by=["attributes.start_time DESC"],
    )
    found, how = None, "new"
    for run in parents:
        if run.data.tags.get(EXPORT_TAG) == export.id:
            found, how = run.info.run_id, "made by an earlier sync of this export"
            break
        children = client.search_runs(
            [exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'", max_results=5000
        )
        if keys & {c.data.tags.get(TRIAL_KEY_TAG) for c in children}:
            found, how = run.info.run_id, f"joined: {_made_by(run)} holds trials of this sweep"
            break
    sweep_run = SweepRun.open(
        client=client,
        experiment=export.experiment,
        sweep_name=export.sweep,
        sweep_file=str(export.sweep_file),
        num_trials=len(export.trial_dirs),
        run_id=found,
        tags={EXPORT_TAG: export.id, LAUNCHER_TAG: "run"},
    )
    return sweep_run, how


def _made_by(run) -> str:
    tags = run.data.tags
    if EXPORT_TAG in tags:
        return f"the sync of export {tags[EXPORT_TAG]}"
    return {"train": "harness train"}.get(tags.get(LAUNCHER_TAG, ""), "harness sweep")


def sync_trial(sweep_run, export: X.Export, trial: X.TrialDir, cfg: C.TrialConfig):
    """Log one trial folder under `sweep_run` (a harness.tracking.SweepRun); return (what was done,
    details, the trial run's status after)."""
    run = sweep_run.find_trial(trial.key)
    if trial.state is TrialState.PENDING:
        return "not started", "no run", run.info.status if run else None
    want = trial.state.run_status
    replaced = ""
    if run is not None and run.data.tags.get(EXPORT_TAG) != export.id:
        status, run_id = run.info.status, run.info.run_id
        if status in ("FINISHED", "RUNNING") or not trial.state.ok:
            return "kept", f"the {status} run {run_id} of {_made_by(run)}", status
        sweep_run.client.delete_run(run_id)
        replaced = f"; replaced the {status} run {run_id} of {_made_by(run)} (deleted, restorable)"
        run = None
    if run is not None and run.info.status == "FINISHED" and want != "FINISHED":
        return "kept", f"FINISHED in the store; this copy of the trial is {trial.state}", "FINISHED"
    stamp = _stamp(trial)
    if run is not None and run.info.status == want and run.data.tags.get(SYNCED_TAG) == stamp:
        return "up to date", "", want

    tags = {**trial.runtime.get("tags", {}), LAUNCHER_TAG: "run", EXPORT_TAG: export.id}
    logger = sweep_run.start_trial(cfg, name=trial.name, key=trial.key, index=trial.index, tags=tags)
    logged_before = logger.last_step
    for row in trial.history:
        logger.log_epoch(row["epoch"], row)
    old_tags = run.data.tags if run is not None else {}
    stale = {ERROR_TAG, UNFINISHED_TAG, NOTE_TAG}
    if trial.state is TrialState.FAILED:
        stale -= {ERROR_TAG}
    elif trial.state is TrialState.RUNNING:
        stale -= {UNFINISHED_TAG, NOTE_TAG}
    for key in stale & set(old_tags):
        logger.client.delete_tag(logger.run_id, key)
    if trial.state.ok:
        artifacts = TrialFolder(trial.path).artifacts
        # the last epoch's metrics, as the Ray callback finishes a run (metrics.json adds only the sizes
        # logged at epoch 1)
        logger.finish(trial.history[-1], artifacts if artifacts.is_dir() else None, status=want)
    elif trial.state is TrialState.FAILED:
        logger.finish(status=want, error=trial.error or f"unknown error (see {trial.path / X.ERROR_FILE})")
    else:
        logger.set_tags(
            {
                UNFINISHED_TAG: "true",
                NOTE_TAG: f"Unfinished when synced: epoch {trial.last_epoch} of {cfg.optim.epochs}. "
                "`harness run` resumes the trial; a later `harness sync` continues this run.",
            }
        )
        logger.finish(status=want)
    logger.set_tags({SYNCED_TAG: stamp})
    new = max(trial.last_epoch - logged_before, 0)
    detail = (
        f"{new} new epoch(s), {want}{' (unfinished)' if trial.state is TrialState.RUNNING else ''}{replaced}"
    )
    return ("logged" if run is None else "updated"), detail, want


def _stamp(trial: X.TrialDir) -> str:
    """What a sync logs of a trial: its state, last epoch and error. Same stamp, nothing new to log."""
    error = hashlib.sha1((trial.error or "").encode()).hexdigest()[:8] if trial.error else ""
    return f"{trial.state}@{trial.last_epoch}" + (f":{error}" if error else "")


def sync_table(rows) -> str:
    lines = [("#", "trial", "folder", "MLflow")]
    for trial, action, detail, _ in rows:
        state = (
            str(trial.state)
            if trial.state is not TrialState.RUNNING
            else f"running ({trial.last_epoch} epochs)"
        )
        lines.append((str(trial.index), trial.name, state, f"{action}: {detail}" if detail else action))
    widths = [max(len(r[i]) for r in lines) for i in range(3)]
    text = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]).rstrip() for r in lines]
    text.insert(1, "  ".join(["-" * w for w in widths] + ["------"]))
    actions = [action for _, action, *_ in rows]
    counts = [f"{actions.count(a)} {a}" for a in ACTIONS if a in actions]
    text.append(f"{len(rows)} trial folder(s): " + ", ".join(counts))
    return "\n".join(text)

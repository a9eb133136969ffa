"""Ray Tune orchestration of a validated sweep: one Tune trial per pack of trials (a trial alone being
a pack of one), each trial of the sweep a grid point with a seed.

- Ray: a local instance by default (`address="local"`, whatever else runs on the machine),
  an existing cluster with `address` (or RAY_ADDRESS). On a cluster every node needs this
  package installed, the data under the same paths, and `storage` on a shared file system.
- Trials: `trainable` (harness.cluster.trainable, the one module of ours a trial's process
  imports: no MLflow there) trains its trials with harness.run.lifecycle.train_trials and reports every
  round of epochs with `ray.tune.report(result, checkpoint=...)` (harness.cluster.report: every
  trial's metrics and state, the trials' folders as the checkpoint). It fails when one of its
  trials failed, and Ray retries it from its last checkpoint `max_failures` times: the trials that
  ended are reported again from their checkpoints, not retrained. The other Tune trials go on.
- Storage: `<storage>/<sweep name>/` holds Ray's experiment state, the trials' checkpoints (the
  last two per Tune trial) and `harness_sweep.json` (the MLflow parent run and the trial keys,
  written by harness.tracking.SweepRun), so `resume=True` continues the same Tune experiment and
  the same MLflow runs.
- Tracking: the sweep's `harness.tracking.SweepRun` owns its parent run; the Tune callback
  (harness.cluster.callback) logs each trial into its own run on the driver, the store's only writer.
- Each Tune trial's config holds its `harness.cluster.transport.PackSpec` (the identity and config
  tree of each of its trials); `resources` are per Tune trial.
- Data-parallel trials (`resources.workers` > 1): the Tune trial drives a Ray Train TorchTrainer
  of that many workers (harness.cluster.raytrain), each with the file's per-worker cpu/gpu; their Ray
  Train runs live in `<storage>/<sweep name>/ray_train/`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from harness import tracking
from harness.cluster.callback import MlflowTuneCallback, reconcile
from harness.cluster.launch import check_resources, concurrent_trials, experiment_dir
from harness.cluster.outcomes import SweepOutcome, trial_outcomes
from harness.cluster.raytrain import DRIVER_CPU
from harness.cluster.trainable import LAUNCH_KEY, trainable
from harness.cluster.transport import SPEC_KEY, tune_units
from harness.config.sweepfile import Sweep
from harness.contract import (
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TIME_EPOCH_S,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
)
from harness.run.mps import shared_by_children

# The live table's columns: result key -> heading
PROGRESS_COLUMNS = {
    "epoch": "epoch",
    TEST_ACC: "test acc",
    TEST_ACC_ENSEMBLE: "ens acc",
    TRAIN_LOSS: "loss",
    TRAIN_MEMORIZED: "memorized",
    TIME_EPOCH_S: "s/epoch",
}


def trial_name(trial) -> str:
    return trial.config[SPEC_KEY]["name"]


def trial_dirname(trial) -> str:
    return trial.config[SPEC_KEY]["dirname"]


# Ray's settings for a sweep (a local Ray started here inherits them)
RAY_ENVIRONMENT = {
    # our columns in the live table need Tune's classic reporter (the new one ignores reporters)
    "RAY_AIR_NEW_OUTPUT": "0",
    # keeping the last two checkpoints forces a state snapshot every other epoch; with epochs of a
    # second (the CPU quickstart) Tune warns about it each time. It is cheap: silence the warning
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ray Train workers' print() once, not also through its logging
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # a Tune trial whose trials all failed in their first epoch reports their failure without any
    # metric (the sweep file's metric was checked when it was read): Tune must accept that report
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


def run_sweep(
    sweep: Sweep,
    *,
    storage: Path,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    max_failures: int | None = None,
    mps: bool = False,
) -> SweepOutcome:
    """Run (or resume) a validated sweep; returns how each trial ended. Call check_launch first.

    Uses the Ray instance of this process when there is one, else starts (and stops) a local
    Ray or connects to the cluster at `address` / RAY_ADDRESS. With `mps` the local Ray it
    starts, and so every trial, runs under a private CUDA MPS daemon (harness.run.mps).
    """
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import ray

    exp_dir = experiment_dir(storage, sweep)
    started_ray = not ray.is_initialized()
    with contextlib.ExitStack() as cleanup:
        if mps:
            if not started_ray:
                raise ValueError("--mps must start the local Ray itself, but this process has one running")
            daemon = cleanup.enter_context(shared_by_children())
            print(f"CUDA MPS: trials sharing a GPU run their kernels at once (daemon in {daemon.root})")
        if started_ray:
            address = _start_ray(address, num_cpus, num_gpus)
            cleanup.callback(ray.shutdown)
        fitting = check_resources(sweep, ray.cluster_resources(), local=started_ray and address == "local")
        if overwrite and exp_dir.exists():
            shutil.rmtree(exp_dir)
        sweep_run = tracking.SweepRun.open_for(sweep, exp_dir, resume=resume)
        print(
            f"MLflow: experiment {sweep.experiment!r}, sweep run {sweep_run.run_id} ({sweep_run.tracking_uri})"
        )
        tuner = _tuner(sweep, exp_dir, sweep_run, resume=resume, max_failures=max_failures, fitting=fitting)
        try:
            results = tuner.fit()
        except BaseException as exc:  # a second Ctrl-C, or Tune itself failing: close the sweep run
            sweep_run.abort(exc)
            raise
        outcomes = trial_outcomes(sweep, results, exp_dir)
        reconcile(sweep_run, results, outcomes)
        sweep_run.close(o.run_status for o in outcomes)
        runs_url = tracking.runs_table_url(sweep_run.tracking_uri, sweep_run.experiment_id)
        return SweepOutcome(
            outcomes, exp_dir, sweep_run.run_id, sweep_run.tracking_uri, sweep_run.problems, runs_url
        )


def _start_ray(address: str | None, num_cpus: float | None, num_gpus: float | None) -> str:
    """Start a local Ray, or connect to the cluster at `address` / RAY_ADDRESS; the address."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    local = address == "local"
    ray.init(
        address=address,
        num_cpus=num_cpus if local else None,
        num_gpus=num_gpus if local else None,
        include_dashboard=False,
        logging_level="WARNING",
    )
    return address


def _tuner(sweep: Sweep, exp_dir: Path, sweep_run, *, resume: bool, max_failures: int | None, fitting):
    """The Tuner of the sweep's Tune trials: restored on --resume (finished trials stay finished;
    unfinished and errored ones go on from their last checkpoint), else new."""
    from ray import tune

    param_space = {SPEC_KEY: tune.grid_search(tune_units(sweep))}
    if sweep.workers > 1:  # a Tune trial drives a Ray Train run of the trial's workers
        fn = tune.with_resources(trainable, {"cpu": DRIVER_CPU})
        param_space[LAUNCH_KEY] = {
            "storage": str(exp_dir / "ray_train"),
            "cpu": sweep.resources["cpu"],
            "gpu": sweep.resources["gpu"],
            "max_failures": sweep.max_failures if max_failures is None else max_failures,
        }
    else:
        fn = tune.with_resources(trainable, {"cpu": sweep.resources["cpu"], "gpu": sweep.resources["gpu"]})
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        return tune.Tuner.restore(
            str(exp_dir), trainable=fn, param_space=param_space, resume_unfinished=True, resume_errored=True
        )
    return _new_tuner(sweep, fn, param_space, exp_dir, MlflowTuneCallback(sweep_run), max_failures, fitting)


def _new_tuner(
    sweep: Sweep, fn, param_space, exp_dir: Path, callback, max_failures: int | None, fitting: int | None
):
    from ray import tune
    from ray.tune import CLIReporter

    columns = dict(PROGRESS_COLUMNS)
    columns.setdefault(sweep.metric, sweep.metric)
    reporter = CLIReporter(
        metric_columns=columns,
        parameter_columns={f"{SPEC_KEY}/index": "#"},
        max_progress_rows=max(20, min(len(sweep.trials), 100)),
        max_report_frequency=10,
        max_column_length=40,
        sort_by_metric=False,
    )
    return tune.Tuner(
        fn,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            max_concurrent_trials=concurrent_trials(sweep.max_concurrent, fitting),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # one Python + torch start-up per worker, not per trial
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=str(exp_dir.parent),
            callbacks=[callback],
            progress_reporter=reporter,
            verbose=1,
            failure_config=tune.FailureConfig(
                max_failures=sweep.max_failures if max_failures is None else max_failures
            ),
            # the last two: the newest may be half-written when a node dies
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )

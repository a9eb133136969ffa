"""Ray Tune orchestration of a validated sweep: one Tune trial per grid point and seed.

- Ray: a local instance by default (`address="local"`, whatever else runs on the machine),
  an existing cluster with `address` (or RAY_ADDRESS). On a cluster every node needs this
  package installed, the data under the same paths, and `storage` on a shared file system.
- Trials: `trainable` runs `harness.run.trial.run_trial` and reports every epoch with
  `ray.tune.report(metrics, checkpoint=...)`; a failed trial is retried from its last
  checkpoint `max_failures` times; the others go on.
- Storage: `<storage>/<sweep name>/` holds Ray's experiment state, the trials' checkpoints (the
  last two per trial) and `harness_sweep.json` (the MLflow parent run and the trial keys, written
  by harness.tracking.SweepRun), so `resume=True` continues the same Tune experiment and the same
  MLflow runs.
- Tracking: the sweep's `harness.tracking.SweepRun` owns its parent run; its Tune callback logs
  the trials on the driver, the store's only writer.
- Each Tune trial's config holds its `harness.sweepfile.TrialSpec` (identity, config tree, and the
  function that trains it: `trial_fn`, `harness.run.trial:run_trial` unless a test names another).
- Data-parallel trials (`resources.workers` > 1): the Tune trial drives a Ray Train TorchTrainer
  of that many workers (harness.cluster.raytrain), each with the file's per-worker cpu/gpu; their Ray
  Train runs live in `<storage>/<sweep name>/ray_train/`.
- Packs (`pack: N`): a pack of compatible trials is one Tune trial (its config holds a
  `harness.sweepfile.PackSpec`; `resources` are then per pack) that trains them as one step
  (harness.run.pack.run_pack). It reports every member's latest metrics and status in each result
  (MEMBERS_RESULT_KEY) and checkpoints every member's folder together, so a retried pack resumes
  each member from its own checkpoint and does not retrain those that ended. It fails (and Ray
  retries it) when one of its members failed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from pathlib import Path
from typing import Any

from harness import config as C
from harness.cluster.launch import check_resources, concurrent_trials, experiment_dir
from harness.cluster.outcomes import SweepOutcome, trial_outcomes
from harness.cluster.raytrain import DEFAULT_TRIAL_FN, DRIVER_CPU
from harness.cluster.transport import SPEC_KEY, PackSpec, TrialSpec, is_pack, tune_units
from harness.config.sweepfile import Sweep
from harness.contract import (
    MEMBERS_RESULT_KEY,
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TIME_EPOCH_S,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
)

LAUNCH_KEY = "launch"  # a data-parallel sweep's Ray Train settings, in every Tune trial's config
# The live table's columns: result key -> heading
PROGRESS_COLUMNS = {
    "epoch": "epoch",
    TEST_ACC: "test acc",
    TEST_ACC_ENSEMBLE: "ens acc",
    TRAIN_LOSS: "loss",
    TRAIN_MEMORIZED: "memorized",
    TIME_EPOCH_S: "s/epoch",
}


def trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial, reporting (and checkpointing) every epoch."""
    from ray import tune

    from harness.contract import ENV_RESULT_KEY
    from harness.run.runtime import runtime_tags

    if is_pack(config):
        _train_pack(PackSpec.from_config(config))
        return
    spec = TrialSpec.from_config(config)
    if LAUNCH_KEY in config:  # data-parallel: this trial drives a Ray Train run
        from harness.cluster.raytrain import run_under_tune

        run_under_tune(spec.config, spec.fn, config[LAUNCH_KEY], name=spec.dirname)
        return
    module, _, attr = spec.fn.partition(":")
    run_trial = getattr(importlib.import_module(module), attr)
    cfg = C.build_config(spec.config)
    env = runtime_tags(cfg.run.device)
    # Ray gives each trial a working folder of its own; checkpoints are copied to storage on report.
    out_dir = Path.cwd() / "harness_trial"
    shutil.rmtree(out_dir, ignore_errors=True)
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(checkpoint.to_directory(str(out_dir / "restored")))
        print(f"resuming {spec.name} from {checkpoint.path}")

    def on_epoch(epoch: int, metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        result = {**metrics, "epoch": epoch, ENV_RESULT_KEY: env}
        ckpt = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        tune.report(result, checkpoint=ckpt)

    try:
        run_trial(cfg, out_dir=out_dir, on_epoch=on_epoch, resume_from=resume_from)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


class PackFailed(RuntimeError):
    """Members of a pack failed (each is recorded as failed): the pack fails, so Ray retries them."""


def _train_pack(pack: PackSpec) -> None:
    """The Tune trial of a pack: its members trained as one step, every member's state in each report."""
    from ray import tune

    from harness.contract import ENV_RESULT_KEY
    from harness.run.pack import MemberResult, PackMember, member_log, run_pack
    from harness.run.runtime import runtime_tags
    from harness.run.trial import CHECKPOINT_FILE, fit_options
    from harness.train.loop import stops_on_collapse

    configs = [C.build_config(m.config) for m in pack.members]
    env = runtime_tags(configs[0].run.device)
    # The pack's checkpoint is this folder: one subfolder per member, as a lone trial's out_dir.
    out_dir = Path.cwd() / "harness_pack"
    shutil.rmtree(out_dir, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        checkpoint.to_directory(str(out_dir))
        print(f"resuming {pack.name} from {checkpoint.path}")
    entries = {m.key: {"status": "training"} for m in pack.members}
    wrote = False

    def recorder(spec: TrialSpec, cfg: C.TrialConfig):
        def on_epoch(epoch: int, metrics: dict[str, float], ckpt_dir: Path | None) -> None:
            nonlocal wrote
            last = epoch >= cfg.optim.epochs or stops_on_collapse(fit_options(cfg), metrics)
            status = MemberResult.ended(metrics).status if last else "training"
            entries[spec.key] = {**metrics, "epoch": epoch, "status": status}
            wrote = wrote or ckpt_dir is not None

        return on_epoch

    def report() -> None:
        nonlocal wrote
        result = _pack_result(entries)
        result[ENV_RESULT_KEY], result[MEMBERS_RESULT_KEY] = env, entries
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(out_dir)) if wrote else None)
        wrote = False

    def on_round(ended) -> None:
        for i, result in ended.items():
            if result.status == "failed":
                key = pack.members[i].key
                entries[key] = {**entries[key], "status": "failed", "error": _error_text(result.error)}
        report()

    members = []
    for spec, cfg in zip(pack.members, configs):
        folder = out_dir / spec.dirname
        resume = folder / "checkpoint" if (folder / "checkpoint" / CHECKPOINT_FILE).is_file() else None
        members.append(PackMember(cfg, folder, recorder(spec, cfg), resume, member_log(spec.name)))
    results = run_pack(members, on_round=on_round)
    on_round(dict(enumerate(results)))  # the final report: every member's end
    failed = [(spec, r) for spec, r in zip(pack.members, results) if r.status == "failed"]
    if failed:
        names = "; ".join(f"{spec.name}: {_error_text(r.error)}" for spec, r in failed)
        raise PackFailed(f"{len(failed)} of the {len(results)} trials of {pack.name} failed: {names}")


def _pack_result(entries: dict[str, dict]) -> dict[str, float]:
    """A pack's report at the top level, for Tune's table and its metric: the mean over its members of
    each metric they report, and the latest epoch (each member's own metrics are in MEMBERS_RESULT_KEY)."""
    values: dict[str, list[float]] = {}
    for entry in entries.values():
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    result = {key: sum(v) / len(v) for key, v in values.items()}
    result["epoch"] = max(values.get("epoch", [0]))
    return result


def _error_text(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


def trial_name(trial) -> str:
    return trial.config[SPEC_KEY]["name"]


def trial_dirname(trial) -> str:
    return trial.config[SPEC_KEY]["dirname"]


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
    trial_fn: str = DEFAULT_TRIAL_FN,
    mps: bool = False,
) -> SweepOutcome:
    """Run (or resume) a validated sweep; returns how each trial ended. Call check_launch first.

    Uses the Ray instance of this process when there is one, else starts (and stops) a local
    Ray or connects to the cluster at `address` / RAY_ADDRESS. With `mps` the local Ray it
    starts, and so every trial, runs under a private CUDA MPS daemon (harness.run.mps).
    """
    # Our columns in the live table need Tune's classic reporter (the new one ignores reporters).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Keeping the last two checkpoints forces a state snapshot every other epoch; with epochs of a
    # second (the CPU quickstart) Tune warns about it each time. It is cheap: silence the warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray Train workers' print() once, not also through its logging (a local Ray inherits these)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    import ray
    from ray import tune

    from harness import tracking
    from harness.cluster.callback import MlflowTuneCallback, reconcile

    exp_dir = experiment_dir(storage, sweep)
    started_ray = not ray.is_initialized()
    shared_gpu = contextlib.ExitStack()
    if mps:
        if not started_ray:
            raise ValueError("--mps must start the local Ray itself, but this process has one running")
        from harness.run.mps import shared_by_children

        daemon = shared_gpu.enter_context(shared_by_children())
        print(f"CUDA MPS: trials sharing a GPU run their kernels at once (daemon in {daemon.root})")
    try:
        if started_ray:
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            local = address == "local"
            ray.init(
                address=address,
                num_cpus=num_cpus if local else None,
                num_gpus=num_gpus if local else None,
                include_dashboard=False,
                logging_level="WARNING",
            )
        fitting = check_resources(sweep, ray.cluster_resources(), local=started_ray and address == "local")
        if overwrite and exp_dir.exists():
            shutil.rmtree(exp_dir)
        sweep_run = tracking.SweepRun.open_for(sweep, exp_dir, resume=resume)
        print(
            f"MLflow: experiment {sweep.experiment!r}, sweep run {sweep_run.run_id} ({sweep_run.tracking_uri})"
        )
        units = tune_units(sweep, trial_fn, packed=trial_fn == DEFAULT_TRIAL_FN)
        param_space = {SPEC_KEY: tune.grid_search(units)}
        if sweep.workers > 1:
            fn = tune.with_resources(trainable, {"cpu": DRIVER_CPU})
            param_space[LAUNCH_KEY] = {
                "storage": str(exp_dir / "ray_train"),
                "cpu": sweep.resources["cpu"],
                "gpu": sweep.resources["gpu"],
                "max_failures": sweep.max_failures if max_failures is None else max_failures,
            }
        else:
            fn = tune.with_resources(
                trainable, {"cpu": sweep.resources["cpu"], "gpu": sweep.resources["gpu"]}
            )
        if resume and tune.Tuner.can_restore(str(exp_dir)):
            # Finished trials stay finished; unfinished and errored ones go on from their last checkpoint.
            tuner = tune.Tuner.restore(
                str(exp_dir),
                trainable=fn,
                param_space=param_space,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            tuner = _new_tuner(
                sweep, fn, param_space, exp_dir, MlflowTuneCallback(sweep_run), max_failures, fitting
            )
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
    finally:
        if started_ray:
            ray.shutdown()
        shared_gpu.close()


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

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
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import config as C
from harness.cluster.raytrain import DEFAULT_TRIAL_FN, DRIVER_CPU
from harness.config.sweepfile import SPEC_KEY, PackSpec, Sweep, TrialSpec, is_pack, trial_specs, tune_units
from harness.contract import (
    MEMBERS_RESULT_KEY,
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TIME_EPOCH_S,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
)
from harness.run.outcome import TrialOutcome, trial_table

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


@dataclass
class SweepOutcome:
    trials: list[TrialOutcome]
    experiment_dir: Path
    parent_run_id: str
    tracking_uri: str
    tracking_problems: list[str] = field(default_factory=list)
    runs_url: str | None = None  # the sweep's experiment in the MLflow UI

    @property
    def exit_code(self) -> int:
        """0 when every trial succeeded (and was tracked), 130 when interrupted, 1 otherwise."""
        if any(t.status == "unfinished" for t in self.trials):
            return 130
        return 0 if all(t.status == "ok" for t in self.trials) and not self.tracking_problems else 1


def experiment_dir(storage: Path, sweep: Sweep) -> Path:
    return Path(storage).resolve() / sweep.name


def check_launch(
    sweep: Sweep,
    *,
    storage: Path,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    mps: bool = False,
) -> list[str]:
    """Problems with how a sweep is to be launched, found before anything starts or is written."""
    problems = []
    exp_dir = experiment_dir(storage, sweep)
    if resume and overwrite:
        problems.append("--resume and --overwrite exclude each other")
    if mps:
        problems.extend(_mps_problems(sweep, address or os.environ.get("RAY_ADDRESS")))
    if address not in (None, "local") and (num_cpus is not None or num_gpus is not None):
        problems.append(
            "--num-cpus/--num-gpus declare the resources of a local Ray; a cluster (--address) has its own"
        )
    if resume:
        from harness.tracking import read_sweep_state

        state = read_sweep_state(exp_dir)
        if state is None:
            problems.append(
                f"nothing to resume: {exp_dir} holds no run of sweep {sweep.name!r} (run it without --resume)"
            )
        else:
            old, new = set(state.get("trials", {})), {t.key for t in sweep.trials}
            if old != new:
                problems.append(
                    f"the trials differ from the run in {exp_dir} ({len(new - old)} new, {len(old - new)} gone): "
                    "resume needs the same sweep file and --set options (or start anew with --overwrite)"
                )
    elif exp_dir.exists() and any(exp_dir.iterdir()) and not overwrite:
        problems.append(
            f"{exp_dir} holds an earlier run of sweep {sweep.name!r}: pass --resume to finish its unfinished "
            "trials, --overwrite to delete it and start over, or choose another --storage"
        )
    return problems


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

    from harness.contract import ENV_RESULT_KEY, MEMBERS_RESULT_KEY
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
        fitting = _check_resources(sweep, ray.cluster_resources(), local=started_ray and address == "local")
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
                sweep, fn, param_space, exp_dir, sweep_run.tune_callback(), max_failures, fitting
            )
        try:
            results = tuner.fit()
        except BaseException as exc:  # a second Ctrl-C, or Tune itself failing: close the sweep run
            sweep_run.abort(exc)
            raise
        outcomes = _outcomes(sweep, results, exp_dir)
        sweep_run.reconcile(results, outcomes)
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
            max_concurrent_trials=_concurrent(sweep.max_concurrent, fitting),
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


def _mps_problems(sweep: Sweep, address: str | None) -> list[str]:
    problems = []
    if address not in (None, "local"):
        problems.append(
            "--mps starts CUDA MPS for a local Ray; on a cluster run `nvidia-cuda-mps-control -d` on each node"
        )
    if not 0 < sweep.resources["gpu"] < 1:
        problems.append(
            f"--mps lets trials share a GPU, but resources.gpu is {sweep.resources['gpu']:g}: "
            "give each trial a fraction, e.g. 0.25"
        )
    from harness.run.mps import CONTROL

    if shutil.which(CONTROL) is None:
        problems.append(f"--mps needs {CONTROL} (the NVIDIA driver's compute utilities) on PATH")
    return problems


def _check_resources(sweep: Sweep, cluster: dict[str, float], *, local: bool) -> int | None:
    """Trials asking for more than the cluster has would wait for ever: say so now.

    Returns how many data-parallel trials fit at once (None for one-process trials): Ray Train
    starts a trial only when all its workers fit, and Tune would otherwise start the drivers of
    every trial, the extra ones waiting (and timing out) for workers (Ray's Train + Tune guide).
    """
    workers = sweep.workers
    per_worker = {"CPU": sweep.resources["cpu"], "GPU": sweep.resources["gpu"]}
    need = {kind: amount * workers for kind, amount in per_worker.items()}
    if workers > 1:
        need["CPU"] += DRIVER_CPU
    short = [kind for kind in need if need[kind] > cluster.get(kind, 0) + 1e-9]
    if short:
        message = "resources do not fit: " + "; ".join(
            f"{kind.lower()}: {_per_trial(kind, workers, per_worker[kind], need[kind])}, "
            f"the Ray cluster has {cluster.get(kind, 0):g}"
            for kind in short
        )
        if local:
            raise ValueError(f"{message} ({'; '.join(_local_fix(kind, need[kind]) for kind in short)})")
        print(f"warning: {message}; trials wait until the cluster grows", file=sys.stderr)
    if workers == 1:
        return None
    return max(1, min(int((cluster.get(kind, 0) + 1e-9) // need[kind]) for kind in need if need[kind] > 0))


def _local_fix(kind: str, need: float) -> str:
    """What makes a local Ray hold one trial: CPUs may be oversubscribed, GPUs must be there."""
    least = math.ceil(need - 1e-9)
    if kind == "CPU":
        return f"--num-cpus {least} lets a local Ray offer them, sharing the cores; or ask for less"
    return f"a local Ray offers the GPUs it finds; --num-gpus {least} only where the machine has them"


def _per_trial(kind: str, workers: int, per_worker: float, total: float) -> str:
    """`2 workers x 1 + 0.01 for the trial's driver = 2.01 per trial`: the whole sum a trial asks for."""
    if workers == 1:
        return f"{total:g} per trial"
    driver = f" + {DRIVER_CPU:g} for the trial's driver" if kind == "CPU" else ""
    return f"{workers} workers x {per_worker:g}{driver} = {total:g} per trial"


def _concurrent(asked: int | None, fitting: int | None) -> int | None:
    """Tune's max_concurrent_trials: the sweep file's, and no more data-parallel trials than fit."""
    if fitting is None:
        return asked
    return fitting if asked is None else min(asked, fitting)


def _outcomes(sweep: Sweep, results, exp_dir: Path) -> list[TrialOutcome]:
    """One outcome per trial of the sweep, from Tune's saved experiment state.

    Tune trial statuses come from the experiment state (a restored result's 'done' flag is not
    reliable); trials Tune never created (interrupted before they started) are 'unfinished'. A
    pack's members end as its last report says; those it had not ended share the pack's end.
    """
    from ray.tune import ExperimentAnalysis

    from harness.tracking import error_message

    statuses = {t.config[SPEC_KEY]["dirname"]: t.status for t in ExperimentAnalysis(str(exp_dir)).trials}
    outcomes: dict[str, TrialOutcome] = {}
    for result in results:
        status = statuses.get(result.config[SPEC_KEY]["dirname"])
        if result.error is not None or status == "ERROR":
            state, error = "failed", error_message(result.error)
        else:
            state, error = ("ok" if status == "TERMINATED" else "unfinished"), None
        metrics = dict(result.metrics or {})
        for spec in trial_specs(result.config):
            mine, my_state, my_error = metrics, state, error
            if is_pack(result.config):
                entry = (metrics.get(MEMBERS_RESULT_KEY) or {}).get(spec.key) or {}
                mine = {k: v for k, v in entry.items() if k not in ("status", "error")}
                mine["time_total_s"] = metrics.get("time_total_s")  # the pack's: they trained together
                member = entry.get("status")
                if member in ("finished", "collapsed"):
                    my_state, my_error = "ok", None
                elif member == "failed":
                    my_state, my_error = "failed", entry.get("error")
                elif state == "ok":  # a pack that ended without ending this member: should not happen
                    my_state = "unfinished"
            outcomes[spec.key] = TrialOutcome(
                spec.index, spec.name, spec.key, my_state, mine, my_error, str(result.path)
            )
    return [
        outcomes.get(t.key) or TrialOutcome(t.index, t.name, t.key, "unfinished", {}) for t in sweep.trials
    ]


def format_summary(outcome: SweepOutcome, metric: str = TEST_ACC) -> str:
    """The closing table (harness.run.outcome), then what to do after an interruption and where things are."""
    lines = trial_table(outcome.trials, metric)
    if any(t.status == "unfinished" for t in outcome.trials):
        lines.append("  interrupted: run the same command with --resume to finish the unfinished trials")
    for problem in outcome.tracking_problems:
        lines.append(f"  tracking: {problem}")
    lines.append(f"Ray results: {outcome.experiment_dir}")
    lines.append(f"MLflow: sweep run {outcome.parent_run_id} in {outcome.tracking_uri}")
    if outcome.runs_url:
        server = outcome.tracking_uri.startswith(("http://", "https://"))
        lines.append(f"  its runs: {outcome.runs_url}" + ("" if server else " (after `harness ui`)"))
    return "\n".join(lines)

"""MLflow tracking: where runs go, one parent run per sweep, one child run per trial.

The store is `MLFLOW_TRACKING_URI` when set (e.g. a team's MLflow server), else the SQLite file
`mlflow.db` in the working directory, as an absolute URI: Ray trials run in folders of their
own, where a relative `sqlite:///mlflow.db` would give each one an empty store of its own.

`SweepRun` owns a sweep's parent run from opening (or resuming) to closing; under Ray it hands
Tune the `MlflowTuneCallback` that logs every trial from the driver: one writer per store, as a
fresh SQLite store written by several processes at once fails, and a driver-side writer works on
a multi-node cluster where trials cannot reach the driver's disk. `TrialLogger` is one run for
one trial config; the sweep run starts one per trial and `harness train` uses it directly.

What is written under which name (tags, params, metrics) is harness.contract, the promise that
reports/ reads. Artifacts: the files of the final checkpoint's artifacts/ folder (config.yaml,
noise_transition.csv, metrics.json, inference_head.pt) at the run's artifact root.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from harness import config as C
from harness.config.sweepfile import PackSpec, Sweep, TrialSpec, is_pack, trial_specs
from harness.contract import (
    COLLAPSED_TAG,
    ENV_RESULT_KEY,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    LAUNCHER_TAG,
    MEMBERS_RESULT_KEY,
    MODEL_TRAINING,
    PACK_TAG,
    PARENT_TAG,
    RAY_TRIAL_TAG,
    REPLAY_RESULT_KEY,
    RETRIES_TAG,
    RUN_KIND_TAG,
    SWEEP_FILE_TAG,
    SWEEP_NAME_TAG,
    SWEEP_RUN,
    SWEEP_TRIALS_PARAM,
    TRAIN_CHECKPOINT_KEY,
    TRAIN_COLLAPSED,
    TRIAL_INDEX_TAG,
    TRIAL_KEY_TAG,
    TRIAL_RUN,
    WORLD_SIZE_TAG,
    default_tracking_uri,
)
from harness.run.outcome import TrialOutcome
from harness.run.runtime import code_tags, runtime_tags

try:  # the sweep callback needs Ray; `harness train` needs only MLflow
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - exercised where Ray is absent
    _TuneCallback = object

# Result keys Ray Tune adds to every report; everything else numeric is a trial metric.
RAY_RESULT_KEYS = frozenset(
    {
        "training_iteration",
        "time_total_s",
        "time_this_iter_s",
        "time_since_restore",
        "timestamp",
        "date",
        "timesteps_total",
        "timesteps_since_restore",
        "episodes_total",
        "iterations_since_restore",
        "pid",
        "hostname",
        "node_ip",
        "done",
        "trial_id",
        "experiment_tag",
        "should_checkpoint",
        "checkpoint_dir_name",
        "config",
        "epoch",
    }
)


def open_store(tracking_uri: str | None = None) -> MlflowClient:
    """A client on the store, created now if new.

    Creating the store (SQLite schema migrations) up front, from one process, keeps it out of
    any race between writers that start later.
    """
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    client.search_experiments(max_results=1)
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name`, created (or restored from the bin) if need be.

    Tagged as a model-training experiment where it is not tagged yet: MLflow 3's UI then opens it
    on its runs table instead of the GenAI overview.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


UI_HOST, UI_PORT = "127.0.0.1", 5000  # where `harness ui` serves the store by default
# MLflow 3's UI opens a page in "Model training" mode (runs table, model registry; not its GenAI
# navigation of traces and judges) when its address carries this; the mode is otherwise global
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def runs_table_url(tracking_uri: str, experiment_id: str, *, host: str = UI_HOST, port: int = UI_PORT) -> str:
    """The MLflow UI's runs table of an experiment, in Model training mode: on the server itself for
    an http(s) store, else on `harness ui` at host:port."""
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
    else:
        base = f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _numeric(metrics: Mapping[str, Any], skip: frozenset[str] = frozenset({"epoch"})) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _params(cfg: C.TrialConfig | Mapping[str, Any]) -> dict[str, str]:
    flat = C.to_flat(cfg) if isinstance(cfg, C.TrialConfig) else C.flatten(dict(cfg))
    out = {}
    for key, value in flat.items():
        text = str(value)
        # a 100 x 100 noise matrix does not fit a param; config.yaml (an artifact) holds it whole
        out[key] = (
            text
            if len(text) <= MAX_PARAM_VAL_LENGTH
            else text[: MAX_PARAM_VAL_LENGTH - 20] + " ...(truncated)"
        )
    return out


def find_child_run(client: MlflowClient, exp_id: str, parent_run_id: str, trial_key: str):
    """The run of trial `trial_key` under the sweep run `parent_run_id`, or None."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_KEY_TAG}` = '{trial_key}'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


class TrialLogger:
    """One MLflow run for one trial: params at start, metrics per epoch, artifacts and status at the end.

    Start it with `TrialLogger.start(cfg, ...)` (a sweep's child run; with `parent_run_id` and
    `trial_key` an existing run of the same trial is continued, not duplicated) or
    `TrialLogger.start_single(cfg, experiment=...)` (`harness train`). Epochs already logged
    (a trial retried or resumed from a checkpoint) are not logged twice.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, last_step: int = 0):
        self.client = client
        self.run_id = run_id
        self.last_step = last_step  # highest epoch logged so far
        self._last_keys: set[str] = set()
        self._env: dict | None = None  # the runtime tags last set from a report
        self.finished = False

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    @classmethod
    def start(
        cls,
        cfg: C.TrialConfig | Mapping[str, Any],
        *,
        experiment: str,
        run_name: str,
        parent_run_id: str | None = None,
        trial_key: str | None = None,
        tags: Mapping[str, str] | None = None,
        tracking_uri: str | None = None,
        client: MlflowClient | None = None,
    ) -> TrialLogger:
        """Start (or, for a known trial_key under parent_run_id, continue) the run of one trial."""
        client = client or open_store(tracking_uri)
        exp_id = experiment_id(client, experiment)
        params = _params(cfg)
        all_tags = {RUN_KIND_TAG: TRIAL_RUN, WORLD_SIZE_TAG: params.get("run.workers", "1"), **(tags or {})}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        if trial_key:
            all_tags[TRIAL_KEY_TAG] = trial_key
        existing = (
            find_child_run(client, exp_id, parent_run_id, trial_key) if parent_run_id and trial_key else None
        )
        if existing is not None:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
            params = {k: v for k, v in params.items() if k not in existing.data.params}
            logger = cls(client, run_id)
            logger.last_step, logger._last_keys = _last_logged(client, existing)
        else:
            run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
            logger = cls(client, run.info.run_id)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(logger.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        logger.set_tags(all_tags)
        return logger

    @classmethod
    def start_single(
        cls, cfg: C.TrialConfig, *, experiment: str = "harness-train", tracking_uri: str | None = None
    ) -> TrialLogger:
        """A run for `harness train`: one trial outside any sweep, tagged with code and runtime."""
        c, n = cfg.collab, cfg.noise
        name = (
            f"{cfg.data.name} {cfg.model.arch} {n.kind}-{n.rate:g} {c.topology}-{c.heads} seed{cfg.run.seed}"
        )
        tags = {**code_tags(), **runtime_tags(cfg.run.device), LAUNCHER_TAG: "train"}
        return cls.start(cfg, experiment=experiment, run_name=name, tags=tags, tracking_uri=tracking_uri)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def log_report(self, result: Mapping[str, Any]) -> None:
        """One report of the trial (a Ray Tune result, or rank 0's Ray Train report): its runtime tags
        when they change, the epochs it replays (a resumed data-parallel trial's history, which this
        run may lack: see REPLAY_RESULT_KEY), then its own epoch."""
        env = result.get(ENV_RESULT_KEY)
        if isinstance(env, dict) and env != self._env:
            self.set_tags(env)
            self._env = dict(env)
        for past in result.get(REPLAY_RESULT_KEY) or ():
            self.log_epoch(past.get("epoch"), past)
        self.log_epoch(result.get("epoch"), {k: v for k, v in result.items() if k not in RAY_RESULT_KEYS})

    def catch_up(self) -> None:
        """Learn which epochs the run holds when another process logged them (harness.cluster.raytrain.log_epochs)."""
        self.last_step, self._last_keys = _last_logged(self.client, self.client.get_run(self.run_id))

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Every numeric value in `metrics` (but 'epoch') at step = epoch; epochs logged before are skipped."""
        if epoch is None or epoch <= self.last_step:
            return
        values = _numeric(metrics)
        stamp = _now_ms()
        batch = [Metric(key, value, stamp, int(epoch)) for key, value in values.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        self.last_step, self._last_keys = int(epoch), set(values)

    def finish(
        self,
        final_metrics: Mapping[str, Any] | None = None,
        artifacts_dir: str | Path | None = None,
        *,
        status: str = "FINISHED",
        error: str | None = None,
    ) -> None:
        """Log what the epochs did not (final metrics, artifacts, error) and close the run with `status`.

        status: FINISHED, FAILED or KILLED (interrupted: a resumed sweep continues the run).
        """
        final = _numeric(final_metrics or {})
        step = int((final_metrics or {}).get("epoch") or self.last_step)
        missing = {k: v for k, v in final.items() if step > self.last_step or k not in self._last_keys}
        if missing:
            stamp = _now_ms()
            self.client.log_batch(
                self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in missing.items()]
            )
        if artifacts_dir is not None and Path(artifacts_dir).is_dir():
            self.client.log_artifacts(self.run_id, str(artifacts_dir))
        if error:
            self.set_tags({ERROR_TAG: error})
        if TRAIN_COLLAPSED in final:
            self.set_tags({COLLAPSED_TAG: "true" if final[TRAIN_COLLAPSED] else "false"})
        self.client.set_terminated(self.run_id, status=status)
        self.finished = True


def _dataframe_rows(result) -> list[dict]:
    """A Tune trial's reports, one row per epoch (its results' dataframe)."""
    return [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")


def _history(result, spec: TrialSpec) -> list[dict]:
    """A pack member's epochs as its own checkpoint (in the pack's last checkpoint) holds them."""
    if result.checkpoint is None:
        return []
    from harness.train.checkpoint import load_checkpoint

    with result.checkpoint.as_directory() as root:
        state = Path(root) / spec.dirname / "checkpoint" / "state.pt"
        return list(load_checkpoint(state)["history"]) if state.is_file() else []


def _last_logged(client: MlflowClient, run) -> tuple[int, set[str]]:
    """The highest step logged in `run` and the metrics logged at it."""
    steps = {
        key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=0)
        for key in run.data.metrics
    }
    last = max(steps.values(), default=0)
    return last, {key for key, step in steps.items() if step == last}


def error_message(exc: BaseException | None) -> str:
    """'RuntimeError: NaN loss at epoch 3' for a trial's exception (Ray's wrapper unwrapped)."""
    if exc is None:
        return "unknown error (see the trial's error.txt)"
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    if not isinstance(cause, Exception) or "Traceback" in text or "\n" in text:
        text = text.splitlines()[-1] if text else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _trial_error(trial) -> str:
    """The trial's last error, as error_message words it. Ray writes the exception to the trial's
    local folder first and syncs it to storage later, so read the local files when storage lags."""
    from ray import cloudpickle  # Ray's own copy, the one it pickled the error with

    for read in (
        trial.get_pickled_error,
        lambda: cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()),
    ):
        with contextlib.suppress(Exception):
            exc = read()
            if exc is not None:
                return error_message(exc)
    with contextlib.suppress(Exception):  # the text trace Ray keeps when the error did not pickle
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return error_message(None)


SWEEP_STATE_FILE = "harness_sweep.json"  # in a sweep's Ray folder: its store, parent run and trials


def read_sweep_state(folder: Path) -> dict | None:
    """What `SweepRun.open_for` wrote into a sweep's Ray folder, or None: sweep, sweep_file,
    tracking_uri, experiment, parent_run_id and trials ({key: name})."""
    path = Path(folder) / SWEEP_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


_PROBLEMS: dict[str, list[str]] = {}  # parent run id -> tracking problems seen in this process


class SweepRun:
    """A sweep's MLflow parent run, its one owner from opening to closing.

    Under Ray (harness.cluster.tune): `open_for` opens it (on --resume, the run the Ray folder's
    state file names), `tune_callback` hands Tune the callback that logs every trial from the
    driver, `reconcile` makes MLflow agree with Ray after Tune, and `close` sets the parent's
    status from its trials' (`abort` when Tune itself failed). `harness sync` opens or joins one
    with `open` and logs each exported trial with `start_trial`.

    Tracking trouble inside `guard` (a store that went away) is reported on stderr and kept in
    `problems`, and does not stop the trials: an hour of GPU time is worth more than a missing
    metric. Pickles without its client: the Tune callback carries it into Ray's experiment state.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        experiment: str,
        sweep_name: str,
        trial_tags: Mapping[str, str] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.trial_tags = dict(trial_tags or {})  # every trial run's, besides its own
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        # Shared by every copy in this process: Tuner.restore runs an unpickled copy of the callback,
        # and the runner reads the problems from its own.
        self.problems: list[str] = _PROBLEMS.setdefault(self.run_id, [])

    def __getstate__(self) -> dict:
        keep = ("tracking_uri", "run_id", "experiment", "sweep_name", "trial_tags")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_store(self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = experiment_id(self.client, self.experiment)
        return self._experiment_id

    @classmethod
    def open(
        cls,
        *,
        experiment: str,
        sweep_name: str,
        sweep_file: str,
        num_trials: int,
        tracking_uri: str | None = None,
        client: MlflowClient | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        trial_tags: Mapping[str, str] | None = None,
    ) -> SweepRun:
        """A new parent run for sweep `sweep_name` in `experiment` (tagged with `tags` besides ours),
        or, given `run_id`, that run RUNNING again. `trial_tags` go on every trial run it starts."""
        uri = client.tracking_uri if client is not None else tracking_uri or default_tracking_uri()
        client = client or open_store(uri)
        exp_id = experiment_id(client, experiment)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {
                RUN_KIND_TAG: SWEEP_RUN,
                SWEEP_NAME_TAG: sweep_name,
                SWEEP_FILE_TAG: sweep_file,
                **code_tags(),
                **(tags or {}),
            }
            run_id = client.create_run(exp_id, run_name=sweep_name, tags=all_tags).info.run_id
            client.log_param(run_id, SWEEP_TRIALS_PARAM, num_trials)
            if Path(sweep_file).is_file():
                client.log_artifact(run_id, sweep_file)
        run = cls(uri, run_id, experiment=experiment, sweep_name=sweep_name, trial_tags=trial_tags)
        run._client, run._experiment_id = client, exp_id
        return run

    @classmethod
    def open_for(cls, sweep: Sweep, folder: Path, *, resume: bool = False) -> SweepRun:
        """The parent run of a Ray sweep whose Tune experiment lives in `folder`: with `resume`, the
        run (in the store) that the folder's state file names, else a new one in the default store.
        Writes the state file; trial runs carry this process's code tags."""
        state = (read_sweep_state(folder) if resume else None) or {}
        sweep_file = str(Path(sweep.source).resolve())
        run = cls.open(
            experiment=sweep.experiment,
            sweep_name=sweep.name,
            sweep_file=sweep_file,
            num_trials=len(sweep.trials),
            tracking_uri=state.get("tracking_uri"),
            run_id=state.get("parent_run_id"),
            trial_tags=code_tags(),
        )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SWEEP_STATE_FILE).write_text(
            json.dumps(
                {
                    "sweep": sweep.name,
                    "sweep_file": sweep_file,
                    "tracking_uri": run.tracking_uri,
                    "experiment": sweep.experiment,
                    "parent_run_id": run.run_id,
                    "trials": {t.key: t.name for t in sweep.trials},
                },
                indent=2,
            )
        )
        return run

    def start_trial(
        self,
        config: C.TrialConfig | Mapping[str, Any],
        *,
        name: str,
        key: str,
        index: int,
        tags: Mapping[str, str] | None = None,
    ) -> TrialLogger:
        """The run of trial `key` under this parent: started, or continued where it exists."""
        return TrialLogger.start(
            config,
            experiment=self.experiment,
            run_name=name,
            parent_run_id=self.run_id,
            trial_key=key,
            tags={
                **self.trial_tags,
                **(tags or {}),
                SWEEP_NAME_TAG: self.sweep_name,
                TRIAL_INDEX_TAG: str(index),
            },
            client=self.client,
        )

    def find_trial(self, key: str):
        """The run of trial `key` under this parent, or None."""
        return find_child_run(self.client, self.experiment_id, self.run_id, key)

    def tune_callback(self) -> MlflowTuneCallback:
        """The Tune callback that logs this sweep's trials from the Ray driver."""
        return MlflowTuneCallback(self)

    def guard(self, what: str, fn: Callable[[], Any]) -> None:
        """Run `fn`; tracking trouble is reported and kept in `problems`, not raised (class docstring)."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            message = f"MLflow tracking failed in {what}: {type(exc).__name__}: {exc}"
            self.problems.append(message)
            print(message, file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

    def reconcile(self, results, outcomes: Iterable[TrialOutcome]) -> None:
        """Make MLflow agree with Ray where the driver died between a trial's end and its logging.

        `results`: Tune's ResultGrid; `outcomes`: how each trial ended (harness.cluster.tune)."""

        def fix() -> None:
            by_key = {spec.key: (r, spec) for r in results for spec in trial_specs(r.config)}
            for outcome in outcomes:
                if outcome.status == "unfinished":
                    continue
                run = self.find_trial(outcome.key)
                if run is not None and run.info.status == outcome.run_status:
                    continue
                result, spec = by_key[outcome.key]
                pack = is_pack(result.config)
                tags = {PACK_TAG: PackSpec.from_config(result.config).tag} if pack else None
                logger = self.start_trial(
                    spec.config, name=spec.name, key=spec.key, index=spec.index, tags=tags
                )
                for row in _history(result, spec) if pack else _dataframe_rows(result):
                    logger.log_epoch(row.get("epoch"), {k: v for k, v in row.items() if "/" in k})
                if outcome.status == "ok":
                    folder = spec.dirname if pack else None
                    finish_with_checkpoint(
                        logger, outcome.metrics, result.checkpoint, status="FINISHED", folder=folder
                    )
                else:
                    logger.finish(status=outcome.run_status, error=outcome.error)

        self.guard("reconcile", fix)

    def abort(self, exc: BaseException) -> None:
        """Close the run after Tune itself failed: KILLED when interrupted (a second Ctrl-C), else FAILED."""
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(self.run_id, status=status)

    def close(self, statuses: Iterable[str | None]) -> str:
        """Close the run with a status from its trials' run statuses (None: a trial without a run) and
        return it: KILLED while a trial has not ended (--resume or the next sync continues), else FAILED
        when one failed, else FINISHED."""
        statuses = list(statuses)
        if any(s in (None, "RUNNING", "KILLED") for s in statuses):
            status = "KILLED"
        else:
            status = "FAILED" if "FAILED" in statuses else "FINISHED"
        self.client.set_terminated(self.run_id, status=status)
        return status


class MlflowTuneCallback(_TuneCallback):
    """Logs every trial of a sweep from the Ray driver: one child run per trial under the sweep's
    parent run (`SweepRun.tune_callback`). Tracking trouble goes to the SweepRun's `problems` and
    does not stop the trials. Pickled with the Tuner for --resume, without clients or open runs.

    A pack is one Tune trial that reports every member's state (MEMBERS_RESULT_KEY): each member gets
    its own run (tagged PACK_TAG), its epochs logged as they come and its run closed when it ends:
    FAILED with its error at once, FINISHED with its artifacts from the checkpoint of the report that
    ended it. A member whose run is FINISHED (a retried pack reports it again) is left as it is.
    """

    def __init__(self, sweep_run: SweepRun):
        self.sweep_run = sweep_run
        self._reset()

    def _reset(self) -> None:
        self._loggers: dict[str, TrialLogger] = {}
        self._ended: set[str] = set()  # pack members whose runs are FINISHED: never reopened
        self._failed: dict[str, set[str]] = {}  # Tune trial id -> members failed in its current attempt
        self._ending: dict[str, dict[str, dict]] = {}  # Tune trial id -> members ended, awaiting a checkpoint

    def __getstate__(self) -> dict:
        return {"sweep_run": self.sweep_run}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def problems(self) -> list[str]:
        return self.sweep_run.problems

    def _logger(self, trial, spec: TrialSpec | None = None) -> TrialLogger:
        """The open run of trial `spec` (Ray trial `trial`'s own when None), started (or continued) on first use."""
        spec = spec or TrialSpec.from_config(trial.config)
        if spec.key not in self._loggers:
            tags = {RAY_TRIAL_TAG: trial.trial_id}
            if is_pack(trial.config):
                tags[PACK_TAG] = PackSpec.from_config(trial.config).tag
            self._loggers[spec.key] = self.sweep_run.start_trial(
                spec.config, name=spec.name, key=spec.key, index=spec.index, tags=tags
            )
        return self._loggers[spec.key]

    def _guard(self, trial, fn: Callable[[], Any]) -> None:
        self.sweep_run.guard(f"trial {trial}", fn)

    def _open_members(self, trial) -> list[TrialSpec]:
        """A pack's members still to log: not FINISHED (one found so in the store stays closed), nor
        failed in this attempt of the pack (a retry reopens those)."""
        specs = []
        for spec in trial_specs(trial.config):
            if spec.key in self._ended or spec.key in self._failed.get(trial.trial_id, ()):
                continue
            if spec.key not in self._loggers:
                run = self.sweep_run.find_trial(spec.key)
                if run is not None and run.info.status == "FINISHED":
                    self._ended.add(spec.key)
                    continue
            specs.append(spec)
        return specs

    def setup(self, **info) -> None:
        self.sweep_run.guard("setup", lambda: self.sweep_run.client)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if not is_pack(trial.config):
            self._guard(trial, lambda: self._logger(trial))
            return

        def start() -> None:
            for spec in self._open_members(trial):
                self._logger(trial, spec)

        self._guard(trial, start)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not is_pack(trial.config):
            self._guard(trial, lambda: self._logger(trial).log_report(result))
            return

        def log() -> None:
            entries = result.get(MEMBERS_RESULT_KEY) or {}
            for spec in self._open_members(trial):
                entry = entries.get(spec.key)
                if entry is None:
                    continue
                logger = self._logger(trial, spec)
                logger.log_report({**entry, ENV_RESULT_KEY: result.get(ENV_RESULT_KEY)})
                if entry.get("status") == "failed":
                    self._loggers.pop(spec.key).finish(status="FAILED", error=entry.get("error"))
                    self._failed.setdefault(trial.trial_id, set()).add(spec.key)
                elif entry.get("status") in ("finished", "collapsed"):
                    # its artifacts are in this report's checkpoint, which on_checkpoint hands over next
                    self._ending.setdefault(trial.trial_id, {})[spec.key] = entry

        self._guard(trial, log)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        ending = self._ending.pop(trial.trial_id, {})
        for key, entry in ending.items():
            spec = next(s for s in trial_specs(trial.config) if s.key == key)
            self._guard(trial, lambda spec=spec, entry=entry: self._finish_member(spec, entry, checkpoint))

    def _finish_member(self, spec: TrialSpec, entry: dict, checkpoint) -> None:
        metrics = {k: v for k, v in entry.items() if k not in ("status", "error")}
        finish_with_checkpoint(
            self._loggers[spec.key], metrics, checkpoint, status="FINISHED", folder=spec.dirname
        )
        self._loggers.pop(spec.key, None)
        self._ended.add(spec.key)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        if not is_pack(trial.config):
            self._guard(trial, lambda: self._logger(trial).set_tags({RETRIES_TAG: str(trial.num_failures)}))
            return

        def retry() -> None:  # a new attempt of the pack: its members that did not finish train again
            self._failed.pop(trial.trial_id, None)
            for spec in self._open_members(trial):
                self._logger(trial, spec).set_tags({RETRIES_TAG: str(trial.num_failures)})

        self._guard(trial, retry)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if is_pack(trial.config):
            self._guard(trial, lambda: self._end_pack(trial, status="KILLED"))
            return

        def finish() -> None:
            logger = self._logger(trial)
            metrics = {k: v for k, v in (trial.last_result or {}).items() if k not in RAY_RESULT_KEYS}
            metrics["epoch"] = (trial.last_result or {}).get("epoch")
            finish_with_checkpoint(logger, metrics, trial.checkpoint, status="FINISHED")
            self._loggers.pop(TrialSpec.from_config(trial.config).key, None)

        self._guard(trial, finish)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if is_pack(trial.config):
            self._guard(trial, lambda: self._end_pack(trial, status="FAILED", error=_trial_error(trial)))
            return

        def finish() -> None:
            self._logger(trial).finish(status="FAILED", error=_trial_error(trial))
            self._loggers.pop(TrialSpec.from_config(trial.config).key, None)

        self._guard(trial, finish)

    def _end_pack(self, trial, *, status: str, error: str | None = None) -> None:
        """A pack's Tune trial ended: its members that ended without a checkpoint handed over take the
        trial's last one; those still open end with the pack (`status`)."""
        for key, entry in self._ending.pop(trial.trial_id, {}).items():
            spec = next(s for s in trial_specs(trial.config) if s.key == key)
            self._finish_member(spec, entry, trial.checkpoint)
        for spec in trial_specs(trial.config):
            if spec.key in self._loggers:
                self._loggers.pop(spec.key).finish(status=status, error=error)

    def on_experiment_end(self, trials, **info) -> None:
        # Whatever is still open was interrupted (Ctrl-C): KILLED until --resume continues it.
        for key, logger in list(self._loggers.items()):
            self.sweep_run.guard(f"trial {key}", lambda logger=logger: logger.finish(status="KILLED"))
        self._loggers.clear()


def finish_with_checkpoint(
    logger: TrialLogger, metrics: Mapping[str, Any], checkpoint, *, status: str, folder: str | None = None
) -> None:
    """Finish a run with the artifacts/ folder of a Ray checkpoint (local or remote storage).

    A data-parallel trial's checkpoints belong to its Ray Train run, not to its Tune trial: Tune
    gets the newest one's path as the result key TRAIN_CHECKPOINT_KEY (harness.cluster.raytrain). A pack's
    checkpoint holds each member's in `folder/checkpoint/` (its dirname).
    """
    metrics = dict(metrics)
    train_checkpoint = metrics.pop(TRAIN_CHECKPOINT_KEY, None)
    if checkpoint is None and train_checkpoint:
        from ray.tune import Checkpoint

        checkpoint = Checkpoint(str(train_checkpoint))
    if checkpoint is None:
        logger.finish(metrics, None, status=status)
        return
    with checkpoint.as_directory() as root:
        where = Path(root) / folder / "checkpoint" if folder else Path(root)
        logger.finish(metrics, where / "artifacts", status=status)

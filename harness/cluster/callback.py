"""The Tune callback that logs a sweep's trials into MLflow from the Ray driver (`MlflowTuneCallback`),
and `reconcile`, which makes MLflow agree with Ray after Tune.

One writer per store: a fresh SQLite store written by several processes at once fails, and a
driver-side writer works on a multi-node cluster where trials cannot reach the driver's disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.cluster.report import ERROR_KEY, entry_metrics, entry_state, trial_entry
from harness.cluster.transport import PackSpec, TrialSpec
from harness.contract import (
    ENV_RESULT_KEY,
    PACK_TAG,
    RAY_TRIAL_TAG,
    RETRIES_TAG,
    TRAIN_CHECKPOINT_KEY,
)
from harness.run.layout import member_folder
from harness.run.outcome import TrialOutcome
from harness.run.state import TrialState
from harness.tracking.sweep_run import SweepRun
from harness.tracking.trial_logger import TrialLogger
from harness.train.checkpoint import load_checkpoint

try:  # importable where Ray is absent (the callback is only made under Ray)
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - exercised where Ray is absent
    _TuneCallback = object


def tune_checkpoint(result: Mapping[str, Any], checkpoint=None):
    """A Tune trial's checkpoint: `checkpoint` (Tune's own), or for a data-parallel trial the Ray Train
    checkpoint its result names (TRAIN_CHECKPOINT_KEY: its checkpoints belong to its Ray Train run,
    harness.cluster.raytrain). None where it has neither."""
    path = result.get(TRAIN_CHECKPOINT_KEY)
    if checkpoint is None and path:
        from ray.tune import Checkpoint

        return Checkpoint(str(path))
    return checkpoint


def _history(checkpoint, spec: TrialSpec) -> list[dict]:
    """A trial's epochs as its own checkpoint (in its Tune trial's checkpoint) holds them."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as root:
        folder = member_folder(Path(root), spec.dirname)
        return list(load_checkpoint(folder.state_file)["history"]) if folder.has_checkpoint else []


def error_message(exc: BaseException | None) -> str:
    """'RuntimeError: NaN loss at epoch 3' for a trial's exception (Ray's wrapper unwrapped)."""
    if exc is None:
        return "unknown error (see the trial's error.txt)"
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    if not isinstance(cause, Exception) or "Traceback" in text or "\n" in text:
        text = text.splitlines()[-1] if text else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def trial_error(trial) -> str:
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


class MlflowTuneCallback(_TuneCallback):
    """Logs every trial of a sweep from the Ray driver: one child run per trial under the sweep's
    parent run. Tracking trouble goes to the SweepRun's `problems` and does not stop the trials.
    Pickled with the Tuner for --resume, without clients or open runs.

    A Tune trial reports every one of its trials' state (harness.cluster.report; a lone trial is a
    pack of one): each trial gets its own run (tagged PACK_TAG in a pack), its epochs logged as they
    come and its run closed when it ends: FAILED with its error at once, FINISHED with its artifacts
    from the checkpoint of the report that ended it. A trial whose run is FINISHED (a retried Tune
    trial reports it again) is left as it is.
    """

    def __init__(self, sweep_run: SweepRun):
        self.sweep_run = sweep_run
        self._reset()

    def _reset(self) -> None:
        self._loggers: dict[str, TrialLogger] = {}
        self._ended: set[str] = set()  # trials whose runs are FINISHED: never reopened
        self._failed: dict[str, set[str]] = {}  # Tune trial id -> its trials failed in its current attempt
        self._ending: dict[str, dict[str, dict]] = {}  # Tune trial id -> trials ended, awaiting a checkpoint

    def __getstate__(self) -> dict:
        return {"sweep_run": self.sweep_run}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def problems(self) -> list[str]:
        return self.sweep_run.problems

    def _logger(self, trial, spec: TrialSpec) -> TrialLogger:
        """The open run of trial `spec` of Tune trial `trial`, started (or continued) on first use."""
        if spec.key not in self._loggers:
            tags = {RAY_TRIAL_TAG: trial.trial_id}
            if (tag := PackSpec.from_config(trial.config).tag) is not None:
                tags[PACK_TAG] = tag
            self._loggers[spec.key] = self.sweep_run.start_trial(
                spec.config, name=spec.name, key=spec.key, index=spec.index, tags=tags
            )
        return self._loggers[spec.key]

    def _guard(self, trial, fn: Callable[[], Any]) -> None:
        self.sweep_run.guard(f"trial {trial}", fn)

    def _open(self, trial) -> list[TrialSpec]:
        """The Tune trial's trials still to log: not FINISHED (one found so in the store stays closed),
        nor failed in this attempt of the Tune trial (a retry reopens those)."""
        specs = []
        for spec in PackSpec.from_config(trial.config).members:
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
        def start() -> None:
            for spec in self._open(trial):
                self._logger(trial, spec)

        self._guard(trial, start)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        def log() -> None:
            for spec in self._open(trial):
                entry = trial_entry(result, spec.key)
                if not entry:
                    continue
                self._logger(trial, spec).log_report(
                    {**entry_metrics(entry), ENV_RESULT_KEY: result.get(ENV_RESULT_KEY)}
                )
                state = entry_state(entry)
                if state is TrialState.FAILED:
                    self._loggers.pop(spec.key).finish(status=state.run_status, error=entry.get(ERROR_KEY))
                    self._failed.setdefault(trial.trial_id, set()).add(spec.key)
                elif state is not None and state.ok:
                    # its artifacts are in this report's checkpoint: a data-parallel trial's result names
                    # it; Tune hands over its own next (on_checkpoint)
                    if (checkpoint := tune_checkpoint(result)) is not None:
                        self._finish(spec, entry, checkpoint)
                    else:
                        self._ending.setdefault(trial.trial_id, {})[spec.key] = entry

        self._guard(trial, log)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        for key, entry in self._ending.pop(trial.trial_id, {}).items():
            spec = _spec(trial, key)
            self._guard(trial, lambda spec=spec, entry=entry: self._finish(spec, entry, checkpoint))

    def _finish(self, spec: TrialSpec, entry: dict, checkpoint) -> None:
        state = entry_state(entry)
        finish_with_checkpoint(
            self._loggers[spec.key],
            entry_metrics(entry),
            checkpoint,
            status=state.run_status,
            folder=spec.dirname,
        )
        self._loggers.pop(spec.key, None)
        self._ended.add(spec.key)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        def retry() -> None:  # a new attempt of the Tune trial: its trials that did not finish train again
            self._failed.pop(trial.trial_id, None)
            for spec in self._open(trial):
                self._logger(trial, spec).set_tags({RETRIES_TAG: str(trial.num_failures)})

        self._guard(trial, retry)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._guard(trial, lambda: self._end(trial, status=TrialState.RUNNING.run_status))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._guard(
            trial, lambda: self._end(trial, status=TrialState.FAILED.run_status, error=trial_error(trial))
        )

    def _end(self, trial, *, status: str, error: str | None = None) -> None:
        """A Tune trial ended: its trials that ended without a checkpoint handed over take its last one;
        those still open end with it (`status`: KILLED when it completed without ending them, which
        should not happen; FAILED with its error)."""
        for key, entry in self._ending.pop(trial.trial_id, {}).items():
            self._finish(_spec(trial, key), entry, tune_checkpoint(trial.last_result or {}, trial.checkpoint))
        for spec in PackSpec.from_config(trial.config).members:
            if spec.key in self._loggers:
                self._loggers.pop(spec.key).finish(status=status, error=error)

    def on_experiment_end(self, trials, **info) -> None:
        # Whatever is still open was interrupted (Ctrl-C): KILLED until --resume continues it.
        for key, logger in list(self._loggers.items()):
            self.sweep_run.guard(f"trial {key}", lambda logger=logger: logger.finish(status="KILLED"))
        self._loggers.clear()


def _spec(trial, key: str) -> TrialSpec:
    return next(s for s in PackSpec.from_config(trial.config).members if s.key == key)


def finish_with_checkpoint(
    logger: TrialLogger, metrics: Mapping[str, Any], checkpoint, *, status: str, folder: str
) -> None:
    """Finish a run with the artifacts of its trial folder `folder` in a Ray checkpoint (local or
    remote storage; harness.run.layout), or without artifacts where there is no checkpoint."""
    if checkpoint is None:
        logger.finish(metrics, None, status=status)
        return
    with checkpoint.as_directory() as root:
        logger.finish(metrics, member_folder(Path(root), folder).artifacts, status=status)


def reconcile(sweep_run: SweepRun, results, outcomes: Iterable[TrialOutcome]) -> None:
    """Make MLflow agree with Ray where the driver died between a trial's end and its logging.

    `results`: Tune's ResultGrid; `outcomes`: how each trial ended (harness.cluster.outcomes)."""

    def fix() -> None:
        by_key = {spec.key: (r, spec) for r in results for spec in PackSpec.from_config(r.config).members}
        for outcome in outcomes:
            if not outcome.state.ended:
                continue
            run = sweep_run.find_trial(outcome.key)
            if run is not None and run.info.status == outcome.run_status:
                continue
            result, spec = by_key[outcome.key]
            tag = PackSpec.from_config(result.config).tag
            logger = sweep_run.start_trial(
                spec.config,
                name=spec.name,
                key=spec.key,
                index=spec.index,
                tags={PACK_TAG: tag} if tag else None,
            )
            checkpoint = tune_checkpoint(result.metrics or {}, result.checkpoint)
            for row in _history(checkpoint, spec):
                logger.log_epoch(row.get("epoch"), row)
            if outcome.state.ok:
                finish_with_checkpoint(
                    logger, outcome.metrics, checkpoint, status=outcome.run_status, folder=spec.dirname
                )
            else:
                logger.finish(status=outcome.run_status, error=outcome.error)

    sweep_run.guard("reconcile", fix)

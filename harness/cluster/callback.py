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

from harness.cluster.transport import PackSpec, TrialSpec, is_pack, trial_specs
from harness.contract import (
    ENV_RESULT_KEY,
    MEMBERS_RESULT_KEY,
    PACK_TAG,
    RAY_TRIAL_TAG,
    RETRIES_TAG,
    TRAIN_CHECKPOINT_KEY,
)
from harness.run.outcome import TrialOutcome
from harness.tracking.sweep_run import SweepRun
from harness.tracking.trial_logger import TrialLogger

try:  # importable where Ray is absent (the callback is only made under Ray)
    from ray.tune import Callback as _TuneCallback
    from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID
except ImportError:  # pragma: no cover - exercised where Ray is absent
    _TuneCallback, AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID = (
        object,
        set(),
        "",
        "",
        "",
        "",
    )

# Result keys Ray Tune adds to every report; everything else numeric is a trial metric.
RAY_RESULT_KEYS = frozenset(AUTO_RESULT_KEYS) | {DONE, TRIAL_ID, EXPERIMENT_TAG, SHOULD_CHECKPOINT}


def _own(result: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune result without the keys Tune adds to every report (the trial's own metrics and keys)."""
    return {k: v for k, v in result.items() if k not in RAY_RESULT_KEYS}


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


class MlflowTuneCallback(_TuneCallback):
    """Logs every trial of a sweep from the Ray driver: one child run per trial under the sweep's
    parent run. Tracking trouble goes to the SweepRun's `problems` and
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
            self._guard(trial, lambda: self._logger(trial).log_report(_own(result)))
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


def reconcile(sweep_run: SweepRun, results, outcomes: Iterable[TrialOutcome]) -> None:
    """Make MLflow agree with Ray where the driver died between a trial's end and its logging.

    `results`: Tune's ResultGrid; `outcomes`: how each trial ended (harness.cluster.tune)."""

    def fix() -> None:
        by_key = {spec.key: (r, spec) for r in results for spec in trial_specs(r.config)}
        for outcome in outcomes:
            if outcome.status == "unfinished":
                continue
            run = sweep_run.find_trial(outcome.key)
            if run is not None and run.info.status == outcome.run_status:
                continue
            result, spec = by_key[outcome.key]
            pack = is_pack(result.config)
            tags = {PACK_TAG: PackSpec.from_config(result.config).tag} if pack else None
            logger = sweep_run.start_trial(
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

    sweep_run.guard("reconcile", fix)

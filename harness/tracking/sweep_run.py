"""A sweep's MLflow parent run (`SweepRun`), from opening (or resuming) to closing, and the state file
in a sweep's Ray folder that names it (so `--resume` continues the same runs).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from harness import config as C
from harness.config.sweepfile import Sweep
from harness.contract import (
    RUN_KIND_TAG,
    SWEEP_FILE_TAG,
    SWEEP_NAME_TAG,
    SWEEP_RUN,
    SWEEP_TRIALS_PARAM,
    TRIAL_INDEX_TAG,
    default_tracking_uri,
)
from harness.run.runtime import code_tags
from harness.tracking.store import experiment_id, find_child_run, open_store
from harness.tracking.trial_logger import TrialLogger

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
    state file names), harness.cluster.callback logs every trial under it from the driver (and
    reconciles it with Ray after Tune), and `close` sets the parent's status from its trials'
    (`abort` when Tune itself failed). `harness sync` opens or joins one
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

    def guard(self, what: str, fn: Callable[[], Any]) -> None:
        """Run `fn`; tracking trouble is reported and kept in `problems`, not raised (class docstring)."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            message = f"MLflow tracking failed in {what}: {type(exc).__name__}: {exc}"
            self.problems.append(message)
            print(message, file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

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

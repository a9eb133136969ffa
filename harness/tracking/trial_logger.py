"""One MLflow run for one trial: params at its start, metrics per epoch, artifacts and status at its
end (`TrialLogger`). A sweep's parent run starts one per trial (harness.tracking.sweep_run), and
`harness train` uses one directly.

What is written under which name (tags, params, metrics) is harness.contract, the promise that
reports/ reads. Artifacts: the files of the final checkpoint's artifacts/ folder (config.yaml,
noise_transition.csv, metrics.json, inference_head.pt) at the run's artifact root.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from harness import config as C
from harness.contract import (
    COLLAPSED_TAG,
    ENV_RESULT_KEY,
    ERROR_TAG,
    LAUNCHER_TAG,
    PARENT_TAG,
    REPLAY_RESULT_KEY,
    RUN_KIND_TAG,
    TRAIN_COLLAPSED,
    TRIAL_KEY_TAG,
    TRIAL_RUN,
    WORLD_SIZE_TAG,
)
from harness.run.runtime import code_tags, runtime_tags
from harness.tracking.store import (
    _last_logged,
    _now_ms,
    _numeric,
    _params,
    experiment_id,
    find_child_run,
    open_store,
)


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
        """One report of the trial (a Ray Tune result without Tune's own keys, or rank 0's Ray Train
        report): its runtime tags
        when they change, the epochs it replays (a resumed data-parallel trial's history, which this
        run may lack: see REPLAY_RESULT_KEY), then its own epoch."""
        env = result.get(ENV_RESULT_KEY)
        if isinstance(env, dict) and env != self._env:
            self.set_tags(env)
            self._env = dict(env)
        for past in result.get(REPLAY_RESULT_KEY) or ():
            self.log_epoch(past.get("epoch"), past)
        self.log_epoch(result.get("epoch"), result)

    def catch_up(self) -> None:
        """Learn which epochs the run holds when another process logged them (harness.cluster.local.log_epochs)."""
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

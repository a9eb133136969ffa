"""How a Tune trial reports the trials it trains to Ray: one shape for a pack and for a trial alone.

Each result holds every trial's latest metrics, epoch and state under MEMBERS_RESULT_KEY (keyed by
trial key), the mean over them of each metric at the top level (for Tune's live table and the metric
it ranks by), and the runtime tags. When a trial wrote a checkpoint this round, the result carries
the Tune trial's folder as its checkpoint: each trial's folder in it under its name
(harness.run.layout), so a retried Tune trial resumes every trial from its own checkpoint.
The Ray Tune trainable (harness.cluster.tune) and rank 0 of a Ray Train run (harness.cluster.raytrain)
report this way; harness.cluster.callback and harness.cluster.outcomes read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.cluster.transport import TrialSpec
from harness.config import TrialConfig
from harness.contract import ENV_RESULT_KEY, MEMBERS_RESULT_KEY, REPLAY_RESULT_KEY
from harness.run.lifecycle import TrialResult
from harness.run.state import TrialState
from harness.train.loop import is_last_epoch

STATE_KEY, ERROR_KEY = "state", "error"  # in a trial's entry, beside its metrics and epoch


class TrialsReport:
    """The latest of every trial of one Tune trial, and its reports: `on_epoch(spec, cfg)` gives each
    trial's callback, `on_ended` takes the trials that ended (harness.run.lifecycle.train_trials),
    and each round ends with one `report(result, checkpoint folder or None)`."""

    def __init__(
        self,
        specs: Sequence[TrialSpec],
        root: Path,
        env: dict[str, str],
        report: Callable[[dict[str, Any], Path | None], None],
    ):
        self.specs, self.root, self.env, self._report = list(specs), Path(root), env, report
        self.entries: dict[str, dict[str, Any]] = {
            s.key: {STATE_KEY: TrialState.RUNNING.value} for s in specs
        }
        self.wrote = False  # a trial wrote a checkpoint since the last report
        self.replay: dict[str, list[dict]] = {}  # per trial: epochs to report again with its next one

    def on_epoch(self, spec: TrialSpec, cfg: TrialConfig):
        """The on_epoch callback of one trial: its latest metrics and state, reported with the round."""

        def on_epoch(epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
            last = is_last_epoch(cfg, epoch, metrics)
            state = TrialState.of_end(metrics) if last else TrialState.RUNNING
            entry = {**metrics, "epoch": epoch, STATE_KEY: state.value}
            if spec.key in self.replay:
                entry[REPLAY_RESULT_KEY] = self.replay.pop(spec.key)
            self.entries[spec.key] = entry
            self.wrote = self.wrote or checkpoint is not None

        return on_epoch

    def on_ended(self, ended: dict[int, TrialResult]) -> None:
        """The trials that ended this round (by position), then the round's report."""
        for i, result in ended.items():
            if result.state is TrialState.FAILED:
                key = self.specs[i].key
                error = _error_text(result.error)
                self.entries[key] = {
                    **self.entries[key],
                    STATE_KEY: TrialState.FAILED.value,
                    ERROR_KEY: error,
                }
        self.report()

    def report(self) -> None:
        result = mean_result(self.entries)
        result[ENV_RESULT_KEY], result[MEMBERS_RESULT_KEY] = self.env, self.entries
        self._report(result, self.root if self.wrote else None)
        self.wrote = False


def mean_result(entries: dict[str, dict]) -> dict[str, float]:
    """A Tune trial's report at the top level, for Tune's table and its metric: the mean over its trials
    of each metric they report, and the latest epoch (each trial's own are in MEMBERS_RESULT_KEY)."""
    values: dict[str, list[float]] = {}
    for entry in entries.values():
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(float(value))
    result = {key: sum(v) / len(v) for key, v in values.items()}
    result["epoch"] = int(max(values.get("epoch", [0])))
    return result


def trial_entry(result: dict[str, Any], key: str) -> dict[str, Any]:
    """One trial's entry in a Tune trial's result (empty when it has none)."""
    return (result.get(MEMBERS_RESULT_KEY) or {}).get(key) or {}


def entry_state(entry: dict[str, Any]) -> TrialState | None:
    """The state an entry says its trial is in (None for an entry without one)."""
    return TrialState(entry[STATE_KEY]) if STATE_KEY in entry else None


def entry_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without its state and error: the trial's metrics and epoch."""
    return {k: v for k, v in entry.items() if k not in (STATE_KEY, ERROR_KEY)}


class TrialsFailed(RuntimeError):
    """Trials of a Tune trial failed (each is reported failed): the Tune trial fails, so Ray retries them."""


def raise_failures(specs: Sequence[TrialSpec], results: Sequence[TrialResult], name: str) -> None:
    """Raise TrialsFailed naming the trials that failed, if any."""
    failed = [(spec, r) for spec, r in zip(specs, results) if r.state is TrialState.FAILED]
    if failed:
        names = "; ".join(f"{spec.name}: {_error_text(r.error)}" for spec, r in failed)
        raise TrialsFailed(f"{len(failed)} of the {len(results)} trials of {name} failed: {names}")


def _error_text(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"

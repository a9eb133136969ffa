"""How each trial of a Ray sweep ended, read from Tune's saved experiment state (`trial_outcomes`),
and the closing summary `harness sweep` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.cluster.callback import error_message
from harness.cluster.report import ERROR_KEY, entry_metrics, entry_state, trial_entry
from harness.cluster.transport import SPEC_KEY, PackSpec
from harness.config.sweepfile import Sweep
from harness.contract import TEST_ACC
from harness.run.outcome import TrialOutcome, trial_table
from harness.run.state import TrialState


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
        if any(not t.state.ended for t in self.trials):
            return 130
        return 0 if all(t.state.ok for t in self.trials) and not self.tracking_problems else 1


def trial_outcomes(sweep: Sweep, results, exp_dir: Path) -> list[TrialOutcome]:
    """One outcome per trial of the sweep, from Tune's saved experiment state.

    A trial ends as its Tune trial's last report says (harness.cluster.report); one it had not ended
    failed with its Tune trial, or is unfinished (interrupted). Tune trial statuses come from the
    experiment state (a restored result's 'done' flag is not reliable); trials Tune never created
    (interrupted before they started) are pending.
    """
    from ray.tune import ExperimentAnalysis

    statuses = {t.config[SPEC_KEY]["dirname"]: t.status for t in ExperimentAnalysis(str(exp_dir)).trials}
    outcomes: dict[str, TrialOutcome] = {}
    for result in results:
        failed = result.error is not None or statuses.get(result.config[SPEC_KEY]["dirname"]) == "ERROR"
        metrics = dict(result.metrics or {})
        for spec in PackSpec.from_config(result.config).members:
            entry = trial_entry(metrics, spec.key)
            mine = {
                **entry_metrics(entry),
                "time_total_s": metrics.get("time_total_s"),
            }  # they trained together
            state, error = entry_state(entry) or TrialState.RUNNING, entry.get(ERROR_KEY)
            if not state.ended and failed:
                state, error = TrialState.FAILED, error_message(result.error)
            outcomes[spec.key] = TrialOutcome(
                spec.index, spec.name, spec.key, state, mine, error, str(result.path)
            )
    return [
        outcomes.get(t.key) or TrialOutcome(t.index, t.name, t.key, TrialState.PENDING, {})
        for t in sweep.trials
    ]


def format_summary(outcome: SweepOutcome, metric: str = TEST_ACC) -> str:
    """The closing table (harness.run.outcome), then what to do after an interruption and where things are."""
    lines = trial_table(outcome.trials, metric)
    if any(not t.state.ended for t in outcome.trials):
        lines.append("  interrupted: run the same command with --resume to finish the unfinished trials")
    for problem in outcome.tracking_problems:
        lines.append(f"  tracking: {problem}")
    lines.append(f"Ray results: {outcome.experiment_dir}")
    lines.append(f"MLflow: sweep run {outcome.parent_run_id} in {outcome.tracking_uri}")
    if outcome.runs_url:
        server = outcome.tracking_uri.startswith(("http://", "https://"))
        lines.append(f"  its runs: {outcome.runs_url}" + ("" if server else " (after `harness ui`)"))
    return "\n".join(lines)

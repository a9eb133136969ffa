"""How each trial of a Ray sweep ended, read from Tune's saved experiment state (`trial_outcomes`),
and the closing summary `harness sweep` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.cluster.transport import SPEC_KEY, is_pack, trial_specs
from harness.config.sweepfile import Sweep
from harness.contract import (
    MEMBERS_RESULT_KEY,
    TEST_ACC,
)
from harness.run.outcome import TrialOutcome, trial_table


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


def trial_outcomes(sweep: Sweep, results, exp_dir: Path) -> list[TrialOutcome]:
    """One outcome per trial of the sweep, from Tune's saved experiment state.

    Tune trial statuses come from the experiment state (a restored result's 'done' flag is not
    reliable); trials Tune never created (interrupted before they started) are 'unfinished'. A
    pack's members end as its last report says; those it had not ended share the pack's end.
    """
    from ray.tune import ExperimentAnalysis

    from harness.cluster.callback import error_message

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

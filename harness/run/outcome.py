"""How the trials of a sweep ended, and the closing table that `harness sweep` and `harness run` print.

Plain data and text only (no Ray, no MLflow): the Ray runner and the in-process runner of an
exported sweep fill the same `TrialOutcome`s and print the same table, in the words of
harness.run.state.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from harness.contract import COLLAPSED_TAG, TEST_ACC
from harness.run.layout import ERROR_FILE
from harness.run.state import TrialState


@dataclass
class TrialOutcome:
    """How one trial ended, as its runner saw it: its state, its last metrics (with `time_total_s`),
    a failure's error, and its folder (where a failure's error.txt is)."""

    index: int
    name: str
    key: str
    state: TrialState
    metrics: dict[str, Any]
    error: str | None = None
    path: str | None = None

    @property
    def run_status(self) -> str:
        """The MLflow status of its run (TrialState.run_status)."""
        return self.state.run_status

    def finish(self, state: TrialState, metrics: dict[str, Any]) -> None:
        self.state, self.metrics = state, metrics

    def fail(self, error: str) -> None:
        self.state, self.error = TrialState.FAILED, error


# the closing table's count line: these words in this order (pending and running are both unfinished)
_COUNTED = ("failed", "unfinished", "running elsewhere")


def trial_table(trials: list[TrialOutcome], metric: str = TEST_ACC) -> list[str]:
    """Trial, status, metric and time per trial; the counts; what a collapse means; each failure."""
    rows = [("#", "trial", "status", metric, "time")]
    for t in trials:
        value = t.metrics.get(metric)
        seconds = t.metrics.get("time_total_s")
        rows.append(
            (
                str(t.index),
                t.name,
                t.state.word,
                f"{value:.4f}" if isinstance(value, (int, float)) else "-",
                f"{seconds:.0f}s" if isinstance(seconds, (int, float)) else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    words = [t.state.word for t in trials]
    lines.append(
        f"{sum(t.state.ok for t in trials)} of {len(trials)} trials succeeded"
        + "".join(f", {words.count(w)} {w}" for w in _COUNTED if words.count(w))
    )
    collapsed = sum(t.state is TrialState.COLLAPSED for t in trials)
    if collapsed:
        lines.append(
            f"  {collapsed} trial(s) ended collapsed (one predicted class for almost every image; "
            f"tagged {COLLAPSED_TAG}=true): `harness report` lists them apart and leaves them out of "
            "means and gains"
        )
    for t in trials:
        if t.state is TrialState.FAILED:
            lines.append(f"  failed: {t.name}: {t.error} (details: {t.path}/{ERROR_FILE})")
    return lines


def print_problems(prefix: str, problems: list, consequence: str) -> None:
    """Every problem of a refused command on stderr, one a line, then how many and what did not happen."""
    for problem in problems:
        print(f"{prefix}: {problem}", file=sys.stderr)
    print(f"{prefix}: {len(problems)} problem(s); {consequence}", file=sys.stderr)

"""How the trials of a sweep ended, and the closing table that `harness sweep` and `harness run` print.

Plain data and text only (no Ray, no MLflow): the Ray runner and the in-process runner of an
exported sweep fill the same `TrialOutcome`s and print the same table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from harness.contract import COLLAPSED_TAG, TEST_ACC, TRAIN_COLLAPSED


@dataclass
class TrialOutcome:
    """How one trial ended: status 'ok', 'failed', 'unfinished' (interrupted, or not started) or
    'elsewhere' (`harness run`: another process of the same folder trains it)."""

    index: int
    name: str
    key: str
    status: str
    metrics: dict[str, Any]
    error: str | None = None
    path: str | None = None  # the trial's folder (its error.txt is there)

    @property
    def run_status(self) -> str:
        """The MLflow status of its run: FINISHED, FAILED, or KILLED (not ended; a resume continues it)."""
        return {"ok": "FINISHED", "failed": "FAILED"}.get(self.status, "KILLED")


STATUS_TEXT = {"elsewhere": "running elsewhere"}


def trial_table(trials: list[TrialOutcome], metric: str = TEST_ACC) -> list[str]:
    """Trial, status, metric and time per trial; the counts; what a collapse means; each failure."""
    rows = [("#", "trial", "status", metric, "time")]
    collapsed = [t for t in trials if t.status == "ok" and t.metrics.get(TRAIN_COLLAPSED)]
    for t in trials:
        value = t.metrics.get(metric)
        seconds = t.metrics.get("time_total_s")
        rows.append(
            (
                str(t.index),
                t.name,
                "ok, collapsed" if t in collapsed else STATUS_TEXT.get(t.status, t.status),
                f"{value:.4f}" if isinstance(value, (int, float)) else "-",
                f"{seconds:.0f}s" if isinstance(seconds, (int, float)) else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {s: sum(t.status == s for t in trials) for s in ("ok", "failed", "unfinished", "elsewhere")}
    lines.append(
        f"{counts['ok']} of {len(trials)} trials succeeded"
        + "".join(f", {n} {STATUS_TEXT.get(s, s)}" for s, n in counts.items() if s != "ok" and n)
    )
    if collapsed:
        lines.append(
            f"  {len(collapsed)} trial(s) ended collapsed (one predicted class for almost every image; "
            f"tagged {COLLAPSED_TAG}=true): `harness report` lists them apart and leaves them out of "
            "means and gains"
        )
    for t in trials:
        if t.status == "failed":
            lines.append(f"  failed: {t.name}: {t.error} (details: {t.path}/error.txt)")
    return lines


def print_problems(prefix: str, problems: list, consequence: str) -> None:
    """Every problem of a refused command on stderr, one a line, then how many and what did not happen."""
    for problem in problems:
        print(f"{prefix}: {problem}", file=sys.stderr)
    print(f"{prefix}: {len(problems)} problem(s); {consequence}", file=sys.stderr)

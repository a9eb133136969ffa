"""How a trial stands: one vocabulary (`TrialState`) for every runner (Ray Tune, `harness run`,
`harness train`), the trial folder's status file, `harness sync` and the closing table.

A trial is pending (not started), running (started and not ended: it trains now, or its process
was stopped and a resume continues it), or ended: finished, collapsed (finished, the kept head's
output input-independent at its end: tagged and reported apart) or failed. `harness run` adds
elsewhere: another process of the same folder holds it. Each state has one MLflow run status and
one word in the closing table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from harness.contract import TRAIN_COLLAPSED


class TrialState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    COLLAPSED = "collapsed"
    FAILED = "failed"
    ELSEWHERE = "elsewhere"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of_end(cls, metrics: Mapping[str, float]) -> TrialState:
        """How a trial that trained to its end ended, from its last epoch's metrics: collapsed when
        its kept head was (TRAIN_COLLAPSED = 1), else finished."""
        return cls.COLLAPSED if metrics.get(TRAIN_COLLAPSED) == 1.0 else cls.FINISHED

    @property
    def ended(self) -> bool:
        """Finished, collapsed or failed: nothing more to train (a failed trial may be retried)."""
        return self in (TrialState.FINISHED, TrialState.COLLAPSED, TrialState.FAILED)

    @property
    def ok(self) -> bool:
        """Trained to its end: finished or collapsed."""
        return self in (TrialState.FINISHED, TrialState.COLLAPSED)

    @property
    def run_status(self) -> str:
        """Its MLflow run's status: FINISHED, FAILED, or KILLED while it has not ended (a resume
        or a later sync continues the run)."""
        return "FINISHED" if self.ok else "FAILED" if self is TrialState.FAILED else "KILLED"

    @property
    def word(self) -> str:
        """Its word in the closing table of `harness sweep` and `harness run`."""
        return _WORDS[self]


_WORDS = {
    TrialState.PENDING: "unfinished",
    TrialState.RUNNING: "unfinished",
    TrialState.FINISHED: "ok",
    TrialState.COLLAPSED: "ok, collapsed",
    TrialState.FAILED: "failed",
    TrialState.ELSEWHERE: "running elsewhere",
}

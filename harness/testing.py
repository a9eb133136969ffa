"""Trial functions that fail on purpose, for the tests of failure handling (and for drills).

A sweep's trial spec names the function that trains each trial (`trial_fn` of
harness.tune_runner.run_sweep, `harness.trial:run_trial` unless told otherwise); a test names one
of these instead. They live in the installed package, not in tests/, because a Ray worker
imports the function by its name and sees the package, not the test folder. Nothing in the
harness calls them.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import config as C
from harness.trial import run_trial


def failing_after_epoch(seed: int, epoch: int = 1) -> Callable[..., dict[str, float]]:
    """`run_trial`, except that a trial with run.seed == `seed` raises at the end of epoch `epoch`,
    before reporting it (so a retry has no checkpoint of it and fails again)."""

    def trial(cfg: C.TrialConfig, *, on_epoch=None, **kwargs) -> dict[str, float]:
        def report(done: int, metrics: dict[str, float], checkpoint_dir) -> None:
            if cfg.run.seed == seed and done == epoch:
                raise RuntimeError(f"deliberate failure after epoch {done} (run.seed {seed})")
            if on_epoch is not None:
                on_epoch(done, metrics, checkpoint_dir)

        return run_trial(cfg, on_epoch=report, **kwargs)

    return trial


seed5_fails = failing_after_epoch(5)
SEED5_FAILS = "harness.testing:seed5_fails"  # as a trial spec names it: the seed-5 trials raise after epoch 1

"""What a Tune trial runs in its worker process: `trainable`, the Tune function trainable.

A module of its own so that a trial's process imports the trial path and Ray, not what only the
driver needs (MLflow, the Tune callback, the Tuner): Ray imports the trainable's module in every
trial's worker, where each second of import is paid again per worker process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness import config as C
from harness.cluster.raytrain import run_under_tune
from harness.cluster.report import TrialsReport, raise_failures
from harness.cluster.transport import PackSpec
from harness.run.lifecycle import TrialRun, train_trials, trial_log
from harness.run.runtime import runtime_tags

LAUNCH_KEY = "launch"  # a data-parallel sweep's Ray Train settings, in every Tune trial's config


def trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: the trials of one Tune trial (a pack, or one alone) trained as one
    step (harness.run.lifecycle.train_trials), every trial's state in each report (harness.cluster.report).
    A data-parallel trial's Tune trial drives a Ray Train run of it instead (harness.cluster.raytrain)."""
    from ray import tune

    unit = PackSpec.from_config(config)
    if LAUNCH_KEY in config:  # data-parallel: this trial drives a Ray Train run
        run_under_tune(unit.members[0], config[LAUNCH_KEY], name=unit.dirname)
        return
    configs = [C.build_config(m.config) for m in unit.members]
    # Ray gives each trial a working folder of its own; this folder (a subfolder per trial) is the
    # Tune trial's checkpoint, copied to storage on report
    root = Path.cwd() / "harness_trials"
    shutil.rmtree(root, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        checkpoint.to_directory(str(root))
        print(f"resuming {unit.name} from {checkpoint.path}")

    def report(result: dict[str, Any], folder: Path | None) -> None:
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)

    reporter = TrialsReport(unit.members, root, runtime_tags(configs[0].run.device), report)
    runs = [
        TrialRun(
            cfg,
            root / spec.dirname,
            reporter.on_epoch(spec, cfg),
            resume=True,
            log=trial_log(spec.name) if unit.packed else print,
        )
        for spec, cfg in zip(unit.members, configs)
    ]
    try:  # each round of epochs is reported, the trials that ended in it with their end
        results = train_trials(runs, on_ended=reporter.on_ended)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # reported: Tune copied it to storage
    raise_failures(unit.members, results, unit.name)

"""`harness run DIR`: the trials of an exported sweep, in this process, with torch alone.

No Ray, no MLflow, no network: a machine with Python, torch, torchvision, numpy and PyYAML runs
them (`PYTHONPATH=<checkout> python3 -m harness.cli run DIR`). Trials train with
harness.run.lifecycle.train_trials in their folders (harness.run.export lists the files), alone or,
for a sweep with `pack: N` (or `--pack N`), N compatible trials at a time as one step, each still in
its own folder with its own results (harness.run.offline); `harness sync DIR` logs the results into
MLflow.

- Running again skips finished (and collapsed) trials and resumes a started one from its
  checkpoint, its history rewound to that epoch: the final metrics are those of an uninterrupted
  run. A failed trial is retried from its last checkpoint.
- A failing trial is recorded (status `failed`, error.txt) and the next one starts; a failing member
  of a pack is recorded so and its pack trains on.
- Several `harness run` of one folder (a job array) share its trials: each trial is trained by the
  process that takes its lock (`.lock` in its folder, held while it trains) and skipped by the others,
  which list it as running elsewhere. That is no failure. `--wait` waits for such trials to end
  (and trains any whose process died), so the table at the end is the folder's final state.
- CPU threads: as many as a Ray trial of the sweep gets (resources.cpu, at least 1, as Ray sets
  OMP_NUM_THREADS), unless OMP_NUM_THREADS is set: thread counts change CPU results in the last bits.
- Exit status: 0 when no selected trial failed (collapsed ones and those running elsewhere count as
  no failure), 1 when one failed, 130 when interrupted, 2 for unusable input (then nothing ran).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
from pathlib import Path

from harness.run import export as X
from harness.run.offline import Planned, Progress, pack_groups, run_group
from harness.run.outcome import TrialOutcome, print_problems, trial_table
from harness.run.state import TrialState


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "dir", type=Path, metavar="DIR", help="an export folder (harness sweep FILE --export DIR)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run the trials whose folder or name matches this glob, e.g. '*hierarchical*' (repeatable)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="run.device of every trial [as exported]",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="PATH",
        help="data.root of every trial that reads a data folder: where the data lies on this machine "
        "[as exported]",
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=None,
        metavar="N",
        help="train up to N compatible trials as one step (harness.config.packs) [the sweep's pack:, else 1]",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for trials that another `harness run` of this folder is training (train those whose "
        "process died), so the closing table is the folder's final state",
    )


def main(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if isinstance(plan, list):
        print_problems("harness run", plan, "nothing was run")
        return 2
    export, trials = plan
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        why = "OMP_NUM_THREADS"
    else:
        torch.set_num_threads(max(math.floor(export.cpu), 1))
        why = "resources.cpu, as a Ray trial gets"
    size = args.pack or export.pack
    groups = pack_groups(trials, size)
    packs = sum(len(g) > 1 for g in groups)
    print(
        f"harness run: sweep {export.sweep!r}, {len(trials)} trial(s) in {export.root}"
        + (
            f", {sum(len(g) for g in groups if len(g) > 1)} of them in {packs} pack(s) of up to {size}"
            if packs
            else ""
        )
        + f"; {torch.get_num_threads()} CPU thread(s) ({why})"
    )
    outcomes: dict[str, TrialOutcome] = {}
    progress = Progress(sum(not p.trial.state.ok for p in trials))
    interrupted = False
    try:
        for number, group in enumerate(groups, 1):
            for outcome in run_group(group, export, f"[{number}/{len(groups)}]", progress):
                outcomes[outcome.path] = outcome
        elsewhere = [p for p in trials if outcomes[str(p.trial.path)].state is TrialState.ELSEWHERE]
        if args.wait and elsewhere:
            print(f"waiting for {len(elsewhere)} trial(s) that another `harness run` holds")
            for outcome in run_group(elsewhere, export, "[wait]", progress, wait=True):
                outcomes[outcome.path] = outcome
    except KeyboardInterrupt:
        interrupted = True
    for p in trials:  # the interrupted ones (still `running`) and those not started
        trial = p.trial
        outcomes.setdefault(
            str(trial.path),
            TrialOutcome(trial.index, trial.name, trial.key, TrialState.PENDING, {}, path=str(trial.path)),
        )
    ordered = sorted(outcomes.values(), key=lambda o: o.index)
    lines = trial_table(ordered, export.metric)
    if interrupted:
        lines.append(f"  interrupted: run `harness run {args.dir}` again to resume the unfinished trials")
    if any(o.state is TrialState.ELSEWHERE for o in ordered):
        lines.append(
            "  running elsewhere: another `harness run` of this folder trains them (no failure; `--wait` waits)"
        )
    lines.append(f"results: {export.root}")
    lines.append(
        f"next: copy it back to where MLflow is, `harness sync {args.dir}`, "
        f"then `harness report --experiment {export.experiment}`"
    )
    print("\n".join(lines))
    if interrupted:
        return 130
    return 1 if any(o.state is TrialState.FAILED for o in ordered) else 0


def _plan(args: argparse.Namespace):
    """(export, [(trial, config, run-time overrides)]) to run, or the problems that stop everything."""
    from harness.train.device import resolve_device

    try:
        export = X.open_export(args.dir)
    except X.ExportError as exc:
        return [str(exc)]
    problems, trials = [], []
    for path in export.trial_dirs:
        try:
            trials.append(X.read_trial(path, export))
        except X.ExportError as exc:
            problems.append(str(exc))
    if not export.trial_dirs:
        problems.append(f"{export.root}: holds no trial folders")
    if args.pack is not None and args.pack < 1:
        problems.append(f"--pack must be >= 1, got {args.pack}")
    selected = [t for t in trials if not args.only or any(_matches(t, p) for p in args.only)]
    if args.only and trials and not selected:
        problems.append(
            f"no trial matches {' or '.join(args.only)}; trials: {', '.join(t.path.name for t in trials)}"
        )
    plan = []
    for trial in selected:
        overrides = {"run.device": args.device} if args.device else {}
        if args.data_root is not None and (trial.config.get("data") or {}).get("root"):
            overrides["data.root"] = str(args.data_root.expanduser().resolve())
        try:
            cfg = X.trial_config(trial, overrides)
        except X.ExportError as exc:
            hint = (
                " (where is the data on this machine? pass --data-root PATH)"
                if "data.root" in str(exc)
                else ""
            )
            problems.append(f"{exc}{hint}")
            continue
        try:
            resolve_device(cfg.run.device)
        except RuntimeError as exc:
            problems.append(f"{trial.path / X.CONFIG_FILE}: run.device: {exc}")
            continue
        plan.append(Planned(trial, cfg, overrides))
    if problems:
        return list(dict.fromkeys(problems))
    return export, plan


def _matches(trial: X.TrialDir, pattern: str) -> bool:
    return fnmatch.fnmatchcase(trial.path.name, pattern) or fnmatch.fnmatchcase(trial.name, pattern)

"""`harness run DIR`: the trials of an exported sweep, one after another in this process, with torch alone.

No Ray, no MLflow, no network: a machine with Python, torch, torchvision, numpy and PyYAML runs
them (`PYTHONPATH=<checkout> python3 -m harness.cli run DIR`). Each trial is `harness.trial.run_trial`
with the trial folder as its output folder (harness.export lists the files); `harness sync DIR`
logs the results into MLflow later.

- Running again skips finished (and collapsed) trials and resumes a started one from its
  checkpoint, its history rewound to that epoch: the final metrics are those of an uninterrupted
  run. A failed trial is retried from its last checkpoint.
- A failing trial is recorded (status `failed`, error.txt) and the next one starts.
- CPU threads: as many as a Ray trial of the sweep gets (resources.cpu, at least 1, as Ray sets
  OMP_NUM_THREADS), unless OMP_NUM_THREADS is set: thread counts change CPU results in the last bits.
- Exit status: 0 when every selected trial finished (collapsed ones too), 1 when one failed or ran
  elsewhere, 130 when interrupted, 2 for unusable input (then nothing ran).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import math
import os
import traceback
from pathlib import Path

from harness import export as X
from harness.contract import TIME_EPOCH_S, TRAIN_COLLAPSED
from harness.summary import TrialOutcome, print_problems, trial_table


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
    print(
        f"harness run: sweep {export.sweep!r}, {len(trials)} trial(s) in {export.root}; "
        f"{torch.get_num_threads()} CPU thread(s) ({why})"
    )
    outcomes: list[TrialOutcome] = []
    interrupted = False
    for number, (trial, cfg, overrides) in enumerate(trials, 1):
        try:
            outcomes.append(_run_one(trial, cfg, overrides, f"[{number}/{len(trials)}]"))
        except KeyboardInterrupt:
            interrupted = True
            break
    done = {o.path for o in outcomes}
    for trial, *_ in trials:  # the interrupted one (still `running`) and those not started
        if str(trial.path) not in done:
            outcomes.append(
                TrialOutcome(trial.index, trial.name, trial.key, "unfinished", {}, path=str(trial.path))
            )
    outcomes.sort(key=lambda o: o.index)
    lines = trial_table(outcomes, export.metric)
    if interrupted:
        lines.append(f"  interrupted: run `harness run {args.dir}` again to resume the unfinished trials")
    lines.append(f"results: {export.root}")
    lines.append(
        f"next: copy it back to where MLflow is, `harness sync {args.dir}`, "
        f"then `harness report --experiment {export.experiment}`"
    )
    print("\n".join(lines))
    if interrupted:
        return 130
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def _plan(args: argparse.Namespace):
    """(export, [(trial, config, run-time overrides)]) to run, or the problems that stop everything."""
    from harness.engine import resolve_device

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
        plan.append((trial, cfg, overrides))
    if problems:
        return list(dict.fromkeys(problems))
    return export, plan


def _matches(trial: X.TrialDir, pattern: str) -> bool:
    return fnmatch.fnmatchcase(trial.path.name, pattern) or fnmatch.fnmatchcase(trial.name, pattern)


def _run_one(trial: X.TrialDir, cfg, overrides: dict, prefix: str) -> TrialOutcome:
    """Run (or resume, or skip) one trial; a KeyboardInterrupt leaves it `running`, to be resumed."""
    path = trial.path
    outcome = TrialOutcome(trial.index, trial.name, trial.key, "ok", {}, path=str(path))
    if trial.state in X.ENDED_OK:
        print(f"{prefix} {path.name}: {trial.state} already, skipped")
        outcome.metrics = {**trial.final, "time_total_s": _seconds(trial.history)}
        return outcome
    with _lock(path) as mine:
        if not mine:
            print(f"{prefix} {path.name}: another `harness run` is running it; skipped")
            outcome.status = "unfinished"
            return outcome
        print(
            f"{prefix} {path.name} ({trial.name})"
            + (f": was {trial.state}" if trial.state != X.PENDING else "")
        )
        try:
            final = _train(path, cfg, overrides)
        except KeyboardInterrupt:
            print(f"{prefix} {path.name}: interrupted; `harness run` resumes it from its last checkpoint")
            raise
        except Exception as exc:  # noqa: BLE001 - one failing trial must not stop the others
            error = _error(exc)
            X.write_error(path, traceback.format_exc())
            X.set_status(path, "failed", error)
            print(f"{prefix} {path.name}: failed: {error}")
            outcome.status, outcome.error = "failed", error
            return outcome
    state = "collapsed" if final.get(TRAIN_COLLAPSED) == 1.0 else "finished"
    X.write_final(path, final)  # before the status: a trial whose status says it ended has its metrics
    X.set_status(path, state)
    outcome.metrics = {**final, "time_total_s": _seconds(X.read_history(path))}
    return outcome


def _train(path: Path, cfg, overrides: dict) -> dict:
    from harness.runtime import code_tags, runtime_tags
    from harness.safeload import load_checkpoint
    from harness.trial import CHECKPOINT_FILE, run_trial

    checkpoint = path / "checkpoint" / CHECKPOINT_FILE
    resume_from, written = None, 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)  # never unpickled: the folder may come from anywhere
        X.rewind_history(path, state["epoch"], state["history"])
        resume_from, written = checkpoint.parent, state["epoch"]
    else:
        X.clear_results(path)
    (path / X.ERROR_FILE).unlink(missing_ok=True)
    X.write_runtime(path, {"overrides": overrides, "tags": {**code_tags(), **runtime_tags(cfg.run.device)}})
    X.set_status(path, "running")

    def on_epoch(epoch: int, metrics: dict, checkpoint_dir) -> None:
        nonlocal written
        if epoch > written:  # a checkpoint of the last epoch reports that epoch again: it has its line
            X.append_history(path, {**metrics, "epoch": epoch})
            written = epoch

    return run_trial(cfg, out_dir=path, on_epoch=on_epoch, resume_from=resume_from)


@contextlib.contextmanager
def _lock(path: Path):
    """Yield whether this process holds the trial (two `harness run` of one folder, e.g. two batch jobs,
    never train the same trial at once). The kernel drops the lock when the process dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        yield True
        return
    with open(path / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _seconds(history: list[dict]) -> float:
    return sum(row.get(TIME_EPOCH_S, 0.0) for row in history)

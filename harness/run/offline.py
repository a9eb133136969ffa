"""`harness run DIR`'s work: the trials of an exported sweep trained in this process
(harness.run.lifecycle), grouped into packs, each trial locked while this process holds it, its folder
filled as it trains (harness.run.export).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.config import TrialConfig
from harness.config.packs import pack_tag as pack_tag_of
from harness.config.packs import plan_packs
from harness.contract import PACK_TAG, TIME_EPOCH_S
from harness.run import export as X
from harness.run.layout import LOCK_FILE, TrialFolder
from harness.run.lifecycle import TrialResult, TrialRun, train_trials, trial_log
from harness.run.outcome import TrialOutcome
from harness.run.runtime import code_tags, runtime_tags
from harness.run.state import TrialState
from harness.train.checkpoint import load_checkpoint
from harness.train.progress import clock


@dataclass
class Planned:
    """A selected trial of the export, its config as it runs here and the overrides that made it so."""

    trial: X.TrialDir
    cfg: TrialConfig
    overrides: dict


def pack_groups(trials: list[Planned], size: int) -> list[list[Planned]]:
    """The trials in the packs they train in (harness.config.packs), finished ones alone (they are skipped)."""
    pending = [p for p in trials if not p.trial.state.ok]
    packs = [[pending[i] for i in pack.positions] for pack in plan_packs([p.cfg for p in pending], size)]
    groups = [[p] for p in trials if p.trial.state.ok] + packs
    return sorted(groups, key=lambda g: g[0].trial.index)


class Progress:
    """How far the folder's training is, and the time its remaining trials should take at this pace."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.monotonic()

    def add(self, trained: int) -> None:
        self.done += trained
        if not trained:
            return
        elapsed = time.monotonic() - self.start
        left = self.total - self.done
        eta = f"; about {clock(elapsed / self.done * left)} for the other {left}" if left > 0 else ""
        print(f"{self.done} of {self.total} trial(s) trained in {clock(elapsed)}{eta}")


def run_group(
    group: list[Planned], export: X.Export, prefix: str, progress: Progress, *, wait: bool = False
) -> list[TrialOutcome]:
    """Train (or resume, or skip) the trials of one pack; a KeyboardInterrupt leaves them `running`.

    Each trial is locked first: one another process holds is skipped (`elsewhere`), or waited for
    with `wait`; one that ended meanwhile is skipped too."""
    outcomes, ready = [], []
    with contextlib.ExitStack() as locks:
        for planned in group:
            trial = planned.trial
            outcome = TrialOutcome(
                trial.index, trial.name, trial.key, TrialState.PENDING, {}, path=str(trial.path)
            )
            outcomes.append(outcome)
            if trial.state.ok:
                print(f"{prefix} {trial.path.name}: {trial.state} already, skipped")
                outcome.finish(trial.state, {**trial.final, "time_total_s": _seconds(trial.history)})
                continue
            if not locks.enter_context(_lock(trial.path, wait=wait)):
                print(f"{prefix} {trial.path.name}: another `harness run` is training it; skipped")
                outcome.state = TrialState.ELSEWHERE
                continue
            now = X.read_trial(trial.path, export)  # it may have ended while this process got here
            if now.state.ok:
                print(f"{prefix} {trial.path.name}: {now.state} by another `harness run`")
                outcome.finish(now.state, {**now.final, "time_total_s": _seconds(now.history)})
                continue
            ready.append((Planned(now, planned.cfg, planned.overrides), outcome))
        if not ready:
            return outcomes
        if len(ready) == 1:
            ((planned, _),) = ready
            print(f"{prefix} {planned.trial.path.name} ({planned.trial.name}){_was(planned.trial)}")
        else:
            names = ", ".join(p.trial.path.name + _was(p.trial) for p, _ in ready)
            print(f"{prefix} a pack of {len(ready)}: {names}")
        results = _train([p for p, _ in ready], pack_id=ready[0][0].trial.index)
        for (planned, outcome), result in zip(ready, results):
            _record(planned.trial.path, result, outcome, prefix)
    progress.add(len(ready))
    return outcomes


def _record(path: Path, result: TrialResult, outcome: TrialOutcome, prefix: str) -> None:
    """Write how a trial ended into its folder, and into its outcome."""
    if result.state is TrialState.FAILED:
        error = _error(result.error)
        X.write_error(path, result.traceback or error)
        X.set_status(path, TrialState.FAILED, error)
        print(f"{prefix} {path.name}: failed: {error}")
        outcome.fail(error)
        return
    # the metrics before the status: a trial whose status says it ended has its metrics
    X.write_final(path, result.metrics)
    X.set_status(path, result.state)
    outcome.finish(result.state, {**result.metrics, "time_total_s": _seconds(X.read_history(path))})


def _was(trial: X.TrialDir) -> str:
    """': was failed' for a trial that is not new (its last attempt's state), else ''."""
    return f": was {trial.state}" if trial.state is not TrialState.PENDING else ""


def _train(group: list[Planned], *, pack_id: int) -> list[TrialResult]:
    """Train the trials of a pack (one: alone) in their folders; how each ended. A trial whose folder
    cannot be resumed (an unreadable checkpoint) fails alone; what ends the whole pack ends each."""
    results: list[TrialResult | None] = [None] * len(group)
    runs = {}
    for i, planned in enumerate(group):
        try:
            runs[i] = _trial_run(planned, pack_tag=(pack_id, len(group)) if len(group) > 1 else None)
        except Exception as exc:  # noqa: BLE001 - a trial's failure is its own
            results[i] = TrialResult.failure(exc)
    if runs:
        try:
            ended = train_trials(list(runs.values()), progress=True)
        except Exception as exc:  # noqa: BLE001 - what ends the whole pack ends each of its trials
            ended = [TrialResult.failure(exc) for _ in runs]
        for i, result in zip(runs, ended):
            results[i] = result
    return results


def _trial_run(planned: Planned, *, pack_tag: tuple[int, int] | None) -> TrialRun:
    """Ready the trial's folder to (re)start it: history rewound to its checkpoint (or cleared),
    where it runs, status running. The trial to train, resumed from its checkpoint if it has one."""
    path, cfg = planned.trial.path, planned.cfg
    folder = TrialFolder(path)
    written = 0
    if folder.has_checkpoint:
        state = load_checkpoint(folder.state_file)  # never unpickled: the folder may come from anywhere
        X.rewind_history(path, state["epoch"], state["history"])
        written = state["epoch"]
    else:
        X.clear_results(path)
    (path / X.ERROR_FILE).unlink(missing_ok=True)
    tags = {**code_tags(), **runtime_tags(cfg.run.device)}
    if pack_tag is not None:
        tags[PACK_TAG] = pack_tag_of(*pack_tag)
    X.write_runtime(path, {"overrides": planned.overrides, "tags": tags})
    X.set_status(path, TrialState.RUNNING)
    log = print if pack_tag is None else trial_log(path.name, indent="  ")
    return TrialRun(cfg, path, _history_writer(path, written), resume=True, log=log)


def _history_writer(path: Path, written: int):
    """The on_epoch callback that appends each new epoch to the trial's history.jsonl."""

    def on_epoch(epoch: int, metrics: dict, checkpoint_dir) -> None:
        nonlocal written
        if epoch > written:  # a checkpoint of the last epoch reports that epoch again: it has its line
            X.append_history(path, {**metrics, "epoch": epoch})
            written = epoch

    return on_epoch


@contextlib.contextmanager
def _lock(path: Path, *, wait: bool = False):
    """Yield whether this process holds the trial (two `harness run` of one folder, e.g. two batch jobs,
    never train the same trial at once); with `wait`, block until it does. The kernel drops the lock
    when the process dies. The lock file stays (empty): removing it while another process waits for
    it would let a third lock a new file at the same time."""
    lock = FileLock(path / LOCK_FILE, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _seconds(history: list[dict]) -> float:
    return sum(row.get(TIME_EPOCH_S, 0.0) for row in history)

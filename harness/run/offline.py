"""`harness run DIR`'s work: the trials of an exported sweep trained in this process, grouped into
packs, each trial locked while this process holds it, its folder filled as it trains.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.contract import PACK_TAG, TIME_EPOCH_S
from harness.run import export as X
from harness.run.outcome import TrialOutcome
from harness.train.progress import clock

LOCK_FILE = ".lock"


@dataclass
class Planned:
    """A selected trial of the export, its config as it runs here and the overrides that made it so."""

    trial: X.TrialDir
    cfg: object  # harness.config.TrialConfig
    overrides: dict


def pack_groups(trials: list[Planned], size: int) -> list[list[Planned]]:
    """The trials in the packs they train in (harness.config.packs), finished ones alone (they are skipped)."""
    from harness.config.packs import plan_packs

    pending = [p for p in trials if p.trial.state not in X.ENDED_OK]
    packs = [[pending[i] for i in pack.positions] for pack in plan_packs([p.cfg for p in pending], size)]
    groups = [[p] for p in trials if p.trial.state in X.ENDED_OK] + packs
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
            outcome = TrialOutcome(trial.index, trial.name, trial.key, "ok", {}, path=str(trial.path))
            outcomes.append(outcome)
            if trial.state in X.ENDED_OK:
                print(f"{prefix} {trial.path.name}: {trial.state} already, skipped")
                outcome.metrics = {**trial.final, "time_total_s": _seconds(trial.history)}
                continue
            if not locks.enter_context(_lock(trial.path, wait=wait)):
                print(f"{prefix} {trial.path.name}: another `harness run` is training it; skipped")
                outcome.status = "elsewhere"
                continue
            now = X.read_trial(trial.path, export)  # it may have ended while this process got here
            if now.state in X.ENDED_OK:
                print(f"{prefix} {trial.path.name}: {now.state} by another `harness run`")
                outcome.metrics = {**now.final, "time_total_s": _seconds(now.history)}
                continue
            ready.append((Planned(now, planned.cfg, planned.overrides), outcome))
        if not ready:
            return outcomes
        names = ", ".join(p.trial.path.name + _was(p.trial) for p, _ in ready)
        if len(ready) == 1:
            print(
                f"{prefix} {ready[0][0].trial.path.name} ({ready[0][0].trial.name}){_was(ready[0][0].trial)}"
            )
        else:
            print(f"{prefix} a pack of {len(ready)}: {names}")
        results = _train([p for p, _ in ready], pack_id=ready[0][0].trial.index)
        for (planned, outcome), result in zip(ready, results):
            path = planned.trial.path
            if result.status == "failed":
                error = _error(result.error)
                X.write_error(path, result.traceback or error)
                X.set_status(path, "failed", error)
                print(f"{prefix} {path.name}: failed: {error}")
                outcome.status, outcome.error = "failed", error
                continue
            # the metrics before the status: a trial whose status says it ended has its metrics
            X.write_final(path, result.metrics)
            X.set_status(path, result.status)
            outcome.metrics = {**result.metrics, "time_total_s": _seconds(X.read_history(path))}
    progress.add(len(ready))
    return outcomes


def _was(trial: X.TrialDir) -> str:
    """': was failed' for a trial that is not new (its last attempt's state), else ''."""
    return f": was {trial.state}" if trial.state != X.PENDING else ""


def _train(group: list[Planned], *, pack_id: int) -> list:
    """Train the trials of a pack (one alone: `run_trial`, as ever) in their folders; how each ended.
    A trial whose folder cannot be resumed (an unreadable checkpoint) fails alone."""
    from harness.run.pack import MemberResult, run_pack

    results: list = [None] * len(group)
    members = {}
    for i, planned in enumerate(group):
        try:
            members[i] = _member(planned, pack_tag=(pack_id, len(group)) if len(group) > 1 else None)
        except Exception as exc:  # noqa: BLE001 - a trial's failure is its own
            results[i] = MemberResult.failed(exc)
    if len(members) > 1:
        try:
            outcome = run_pack(list(members.values()), progress=True)
        except Exception as exc:  # noqa: BLE001 - what ends the whole pack ends each member
            outcome = [MemberResult.failed(exc) for _ in members]
        for i, result in zip(members, outcome):
            results[i] = result
    elif members:
        from harness.run import trial as trial_module

        ((i, m),) = members.items()
        try:
            final = trial_module.run_trial(
                m.cfg,
                out_dir=m.out_dir,
                on_epoch=m.on_epoch,
                resume_from=m.resume_from,
                log=m.log,
                progress=True,
            )
            results[i] = MemberResult.ended(final)
        except Exception as exc:  # noqa: BLE001 - one failing trial must not stop the others
            results[i] = MemberResult.failed(exc)
    return results


def _member(planned: Planned, *, pack_tag: tuple[int, int] | None):
    """Ready the trial's folder to (re)start it: history rewound to its checkpoint (or cleared),
    where it runs, status running. Its run_trial arguments, as a pack member."""
    from harness.config.packs import pack_tag as tag_of
    from harness.run.pack import PackMember, member_log
    from harness.run.runtime import code_tags, runtime_tags
    from harness.run.trial import CHECKPOINT_FILE
    from harness.train.checkpoint import load_checkpoint

    path, cfg = planned.trial.path, planned.cfg
    checkpoint = path / "checkpoint" / CHECKPOINT_FILE
    resume_from, written = None, 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)  # never unpickled: the folder may come from anywhere
        X.rewind_history(path, state["epoch"], state["history"])
        resume_from, written = checkpoint.parent, state["epoch"]
    else:
        X.clear_results(path)
    (path / X.ERROR_FILE).unlink(missing_ok=True)
    tags = {**code_tags(), **runtime_tags(cfg.run.device)}
    if pack_tag is not None:
        tags[PACK_TAG] = tag_of(*pack_tag)
    X.write_runtime(path, {"overrides": planned.overrides, "tags": tags})
    X.set_status(path, "running")
    log = print if pack_tag is None else member_log(path.name, indent="  ")
    return PackMember(cfg, path, _history_writer(path, written), resume_from, log)


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
    when the process dies; the lock file is removed when the holder is done with it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        yield True
        return
    file = path / LOCK_FILE
    while True:
        f = open(file, "a")  # noqa: SIM115 - held across the yield, closed below
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            f.close()
            yield False
            return
        # the holder before us removes the file when done: only a lock on the file that is there counts
        with contextlib.suppress(FileNotFoundError):
            if os.stat(file).st_ino == os.fstat(f.fileno()).st_ino:
                break
        f.close()
    try:
        yield True
    finally:
        file.unlink(missing_ok=True)  # still held: whoever opens the path next makes a new file
        f.close()


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _seconds(history: list[dict]) -> float:
    return sum(row.get(TIME_EPOCH_S, 0.0) for row in history)

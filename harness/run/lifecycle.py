"""The one way trials are trained: `train_trials` trains a pack of trials as one step on one device,
a lone trial being a pack of one. Ray Tune's trials (harness.cluster.tune), Ray Train's workers
(harness.cluster.raytrain), `harness run` (harness.run.offline) and `harness train` all call it.

The data set is loaded once (on CUDA moved to the device once and shared by every member's
loader); each trial gets its own labels, graph, loaders, optimizer and callbacks (harness.run.trial),
and the engine's `fit` trains them in lockstep (harness.train.loop). Each trial's checkpoints,
artifacts, metrics and failure are its own, exactly as when it trains alone: a trial that fails (a
diverged loss, an unreadable label file) ends failed and the others train on. A trial resumed from
a checkpoint of its last epoch is reported again and not retrained (a retried pack does not retrain
what already finished). Needs torch only.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.config import TrialConfig
from harness.config.packs import pack_key, unpackable
from harness.data import ImageData
from harness.run.layout import TrialFolder
from harness.run.memory import check_memory
from harness.run.state import TrialState
from harness.run.trial import OnEpoch, TrialJob, load_trial_data
from harness.train.ddp import World
from harness.train.device import Place, fresh_device
from harness.train.loop import Member, fit


@dataclass
class TrialRun:
    """One trial to train: its config, its folder (harness.run.layout), what to call after each of its
    epochs, and whether to go on from the folder's checkpoint where it has one."""

    cfg: TrialConfig
    folder: Path
    on_epoch: OnEpoch | None = None
    resume: bool = False
    log: Callable[[str], None] = print


@dataclass
class TrialResult:
    """How a trial ended: `state` finished, collapsed or failed (harness.run.state), its last metrics,
    and for a failure the exception and its traceback."""

    state: TrialState
    metrics: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    traceback: str | None = None

    @classmethod
    def failure(cls, exc: BaseException) -> TrialResult:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(TrialState.FAILED, error=exc, traceback=trace)

    @classmethod
    def end(cls, metrics: dict[str, float]) -> TrialResult:
        """A trial that trained to its end, with its last metrics (finished or collapsed)."""
        return cls(TrialState.of_end(metrics), dict(metrics))


def trial_log(name: str, indent: str = "") -> Callable[[str], None]:
    """A trial's log in a pack: each line (an epoch's, and the detection line under its last) named
    by its trial."""

    def log(text: str) -> None:
        print("\n".join(f"{indent}{name}: {line}" for line in text.splitlines()))

    return log


def check_compatible(configs: Sequence[TrialConfig]) -> None:
    """Raise ValueError unless these trials may train as one pack (harness.config.packs' rules)."""
    for cfg in configs:
        why = unpackable(cfg)
        if why is not None and len(configs) > 1:
            raise ValueError(f"cannot pack this trial: {why}")
    if len({pack_key(cfg) for cfg in configs}) > 1:
        raise ValueError(
            "the trials of a pack must share every key but those declared packs=True (harness.config.may_differ)"
        )


def train_trials(
    trials: Sequence[TrialRun],
    *,
    on_ended: Callable[[dict[int, TrialResult]], None] | None = None,
    progress: bool = False,
) -> list[TrialResult]:
    """Train these trials together (a pack; one trial: alone); return how each ended, in order.

    `on_ended({position: result})` is called after each round of epochs with the trials that ended in
    it (maybe none), and before the first round with those that ended before it (resumed at their
    end, or failed to start), if any. Raises only for what ends the whole pack: incompatible trials,
    its data set failing to load, a pack too large for the device (harness.run.memory.PackTooLarge),
    a failure of the shared step (out of memory, a CUDA error) or an interrupt. `progress`: show each
    epoch's progress (harness.train.progress). A lone trial in a data-parallel process group
    (harness.train.ddp, started by Ray Train) trains as one of its processes: rank 0 alone logs and
    writes its folder.
    """
    configs = [t.cfg for t in trials]
    check_compatible(configs)
    place = Place(fresh_device(configs[0].run.device), World.current())
    data = on_device(load_trial_data(configs[0]), place.device)
    results: list[TrialResult | None] = [None] * len(trials)
    jobs = _prepare(trials, data, place, results)
    if on_ended is not None and any(r is not None for r in results):
        on_ended({i: r for i, r in enumerate(results) if r is not None})
    if place.cuda and len(jobs) > 1:
        check_memory(list(jobs.values()), place.device)
    members = {i: job.member() for i, job in jobs.items()}

    def result(i: int) -> TrialResult:
        """How trial i ended (once it has), worked out once."""
        member = members[i]
        if results[i] is None and member.error is not None:
            member.log(f"failed: {type(member.error).__name__}: {member.error}")
            results[i] = TrialResult.failure(member.error)
        elif results[i] is None:
            results[i] = TrialResult.end(jobs[i].final(member.metrics))
        return results[i]

    def round_done(trained: Sequence[Member]) -> None:
        ended = {i: result(i) for i, m in members.items() if m.done and any(m is t for t in trained)}
        if on_ended is not None:
            on_ended(ended)

    fit(list(members.values()), place, after_round=round_done, progress=progress)
    return [result(i) if i in members else r for i, r in enumerate(results)]


def _prepare(
    trials: Sequence[TrialRun], data: ImageData, place: Place, results: list[TrialResult | None]
) -> dict[int, TrialJob]:
    """Each trial's job, by position; a trial that fails to start, or whose checkpoint is of its last
    epoch (reported again), gets its result now instead."""
    jobs: dict[int, TrialJob] = {}
    for i, trial in enumerate(trials):
        log = trial.log if place.world.is_main else _silent
        try:
            job = TrialJob.prepare(
                trial.cfg,
                data,
                place,
                folder=TrialFolder(Path(trial.folder)),
                on_epoch=trial.on_epoch,
                resume=trial.resume,
                log=log,
            )
            if job.checkpoint_is_last:
                results[i] = TrialResult.end(job.report_checkpointed_end())
            else:
                jobs[i] = job
        except Exception as exc:  # noqa: BLE001 - a trial's failure is its own
            log(f"failed: {type(exc).__name__}: {exc}")
            results[i] = TrialResult.failure(exc)
    return jobs


def _silent(message: str) -> None:
    """The log of a data-parallel process other than rank 0."""


def on_device(data: ImageData, device: torch.device) -> ImageData:
    """The data set with its in-memory images on `device`, once: every trial's loader then uses the
    same tensors (TensorLoader's `.to(device)` of a tensor already there is no copy)."""
    if device.type == "cpu" or not data.in_memory:
        return data
    moved = {
        name: getattr(data, name).to(device)
        for name in ("train_x", "test_x", "val_x")
        if getattr(data, name) is not None
    }
    return dataclasses.replace(data, **moved)

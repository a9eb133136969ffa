"""A pack: several trials trained as one step on one device (`pack: N` in a sweep file).

`run_pack` is `harness.run.trial.run_trial` for the members of a pack (harness.config.packs says which
trials may share one): the data set is loaded once (on CUDA it is moved to the device once and
shared by every member's loader), each member gets its own labels, graph, loaders, optimizer and
callbacks (`TrialJob.prepare`), and `harness.train.engine.fit_pack` trains them in lockstep. Each
member's checkpoints, artifacts, metrics and failure are its own, exactly as when it trains alone:
a member that fails (a diverged loss, an unreadable label file) is recorded as failed and the
others train on. A member resumed from a checkpoint of its last epoch is reported again and not
trained (a retried pack does not retrain what already finished).

Ray Tune runs a pack as one Tune trial (harness.cluster.tune), `harness run` as one group of an
exported sweep's trial folders (harness.cli.run). Needs torch only.
"""

from __future__ import annotations

import copy
import dataclasses
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import config as C
from harness.config.packs import pack_key, unpackable
from harness.contract import TRAIN_COLLAPSED
from harness.data import ImageData
from harness.run.trial import TrialCallback, TrialJob, load_trial_data, trial_device
from harness.train.loop import Member, fit_pack


@dataclass
class PackMember:
    """One trial of a pack as its runner gives it: as `run_trial`'s arguments."""

    cfg: C.TrialConfig
    out_dir: Path
    on_epoch: TrialCallback | None = None
    resume_from: Path | None = None
    log: Callable[[str], None] = print


@dataclass
class MemberResult:
    """How a member ended: `status` finished, collapsed (finished, ended collapsed) or failed."""

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    traceback: str | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> MemberResult:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls("failed", error=exc, traceback=trace)

    @classmethod
    def ended(cls, metrics: dict[str, float]) -> MemberResult:
        return cls("collapsed" if metrics.get(TRAIN_COLLAPSED) == 1.0 else "finished", dict(metrics))


def member_log(name: str, indent: str = "") -> Callable[[str], None]:
    """A member's log: each line (an epoch's, and the detection line under its last) named by its trial."""

    def log(text: str) -> None:
        print("\n".join(f"{indent}{name}: {line}" for line in text.splitlines()))

    return log


class PackTooLarge(RuntimeError):
    """The pack will not fit the device's memory (found before training starts)."""


def check_compatible(configs: Sequence[C.TrialConfig]) -> None:
    """Raise ValueError unless these trials may train as one pack (harness.config.packs's rules)."""
    for cfg in configs:
        why = unpackable(cfg)
        if why is not None and len(configs) > 1:
            raise ValueError(f"cannot pack this trial: {why}")
    if len({pack_key(cfg) for cfg in configs}) > 1:
        raise ValueError("the trials of a pack must share everything but harness.pack_plan.MAY_DIFFER")


def run_pack(
    members: Sequence[PackMember],
    *,
    on_round: Callable[[dict[int, MemberResult]], None] | None = None,
    progress: bool = False,
) -> list[MemberResult]:
    """Train the members of one pack together; return how each ended, in order.

    `on_round(ended)` is called after each round of epochs (harness.train.engine.fit_pack) with the members
    that ended in it ({position: result}, maybe none), and before the first round with those that
    ended before it (resumed at their end, or failed to start), if any. Raises only for what ends the
    whole pack: incompatible members, a pack too large for the device (PackTooLarge), a failure of the
    shared step (out of memory, a CUDA error) or an interrupt. `progress`: show each epoch's progress.
    """
    configs = [m.cfg for m in members]
    check_compatible(configs)
    device = trial_device(configs[0])
    data = on_device(load_trial_data(configs[0]), device)
    results: list[MemberResult | None] = [None] * len(members)
    jobs: dict[int, TrialJob] = {}
    for i, m in enumerate(members):
        try:
            job = TrialJob.prepare(
                m.cfg,
                data,
                device=device,
                out_dir=m.out_dir,
                on_epoch=m.on_epoch,
                resume_from=m.resume_from,
                log=m.log,
            )
            if job.ended:
                results[i] = MemberResult.ended(job.report_ended())
            else:
                jobs[i] = job
        except Exception as exc:  # noqa: BLE001 - a member's failure is its own
            m.log(f"failed: {type(exc).__name__}: {exc}")
            results[i] = MemberResult.failed(exc)
    if on_round is not None and any(r is not None for r in results):
        on_round({i: r for i, r in enumerate(results) if r is not None})
    if device.type == "cuda" and len(jobs) > 1:
        check_memory(list(jobs.values()), device)
    engine_members = {i: job.as_member() for i, job in jobs.items()}

    def result(i: int) -> MemberResult:
        """How member i ended (once it has), worked out once."""
        member = engine_members[i]
        if results[i] is None and member.error is not None:
            members[i].log(f"failed: {type(member.error).__name__}: {member.error}")
            results[i] = MemberResult.failed(member.error)
        elif results[i] is None:
            results[i] = MemberResult.ended(jobs[i].final(member.metrics))
        return results[i]

    def round_done(trained: Sequence[Member]) -> None:
        ended = {i: result(i) for i, m in engine_members.items() if m.ended and any(m is t for t in trained)}
        if on_round is not None:
            on_round(ended)

    fit_pack(list(engine_members.values()), device=device, on_round=round_done, progress=progress)
    return [result(i) if i in engine_members else r for i, r in enumerate(results)]


def on_device(data: ImageData, device: torch.device) -> ImageData:
    """The data set with its in-memory images on `device`, once: every member's loader then uses the
    same tensors (TensorLoader's `.to(device)` of a tensor already there is no copy)."""
    if device.type == "cpu" or not data.in_memory:
        return data
    moved = {
        name: getattr(data, name).to(device)
        for name in ("train_x", "test_x", "val_x")
        if getattr(data, name) is not None
    }
    return dataclasses.replace(data, **moved)


# --- will it fit? ---------------------------------------------------------------------------------


def check_memory(jobs: Sequence[TrialJob], device: torch.device) -> None:
    """Refuse (PackTooLarge, with the numbers) a pack whose training would not fit the device's free
    memory, before it starts rather than out of memory mid-sweep. The members' weights are on the
    device already; each still needs its step's memory (gradients, momentum, activations, measured
    with one eager step of a copy of the first member) and its loader's prepared batches."""
    step_bytes = measure_step_bytes(jobs[0], device)
    loader = jobs[0].train_loader
    batch_bytes = loader.batches_per_chunk * loader.batch_size * 4 * loader.images[0].numel()
    free, _ = torch.cuda.mem_get_info(device)
    problem = memory_problem(len(jobs), step_bytes + batch_bytes, free, step_bytes=step_bytes)
    if problem:
        raise PackTooLarge(problem)


def memory_problem(members: int, per_member: int, free: int, *, step_bytes: int | None = None) -> str | None:
    """Why `members` members needing `per_member` bytes each do not fit `free` bytes (10 % kept spare
    for the allocator's rounding and the CUDA graph's pool), or None when they fit."""
    need = members * per_member
    if need <= 0.9 * free:
        return None
    fit = int(0.9 * free // per_member) if per_member else members
    gib = 2**30
    detail = f"{members} x {per_member / gib:.2f} GiB"
    if step_bytes is not None:
        detail += f" (each {step_bytes / gib:.2f} GiB for its step, {(per_member - step_bytes) / gib:.2f} GiB of batches)"
    return (
        f"a pack of {members} needs about {need / gib:.1f} GiB more device memory ({detail}), but "
        f"{free / gib:.1f} GiB are free: use pack: {max(fit, 1)} or less (or a smaller batch size)"
    )


def measure_step_bytes(job: TrialJob, device: torch.device) -> int:
    """Device memory one training step of this member allocates beyond its weights (peak, eager)."""
    from harness.collab import loss_scale
    from harness.train.optim import SGD
    from harness.train.step import EagerStep, make_loss_fn

    model = copy.deepcopy(job.graph)
    loader, opts = job.train_loader, job.opts
    x = torch.zeros(loader.batch_size, *loader.images.shape[1:], device=device)
    if job.cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(loader.batch_size, dtype=torch.long, device=device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    optimizer = SGD(model.parameters(), lr=0.0, momentum=opts.momentum, nesterov=opts.nesterov)
    loss = make_loss_fn(T=opts.T, beta=opts.beta, loss_scale=loss_scale(opts.rescale, model.heads))
    EagerStep(model, optimizer, loss, device=device, amp=opts.amp)(x, y)
    torch.cuda.synchronize(device)
    used = torch.cuda.max_memory_allocated(device) - before
    del model, optimizer, x, y
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)  # the pack's own peak starts now
    return int(used)

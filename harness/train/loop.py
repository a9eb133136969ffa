"""The training loop: train_one_epoch, fit (and fit_pack).

Reads top to bottom like a training script. `fit` runs epochs of SGD on a collaborative
training graph, evaluates every head, the kept head and the heads' ensemble, measures how
much of the label noise the kept head has memorized, and hands a metrics dict per epoch to
a callback (which logs, reports to Ray Tune and checkpoints). Accuracies are fractions.

`fit_pack` does the same for a pack: several members (trials) with their own graphs, data order,
labels and hyperparameters, trained in lockstep so that each step is one step of all of them
(harness.train.step's pack steps). Everything but the step is each member's own: its metrics,
checkpoints, collapse stop, and its failure (a diverged loss ends that member only). `fit` is a
pack of one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.contract import (
    GPU_PEAK_MEM_MB,
    PERF_IMG_PER_S,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_ACC_NOISY,
    TRAIN_COLLAPSED,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
)
from harness.train.checkpoint import checkpoint_state
from harness.train.ddp import ALONE, World
from harness.train.evaluate import detect_noise, evaluate, is_collapsed
from harness.train.log import format_epoch
from harness.train.progress import EpochProgress
from harness.train.step import make_pack_step
from harness.train.training import FitOptions, Training, setup_training


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run's numbers would be garbage."""


def check_finite(loss: float) -> None:
    """Raise TrainingDiverged for an epoch's mean training loss that is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training loss became {loss} (lr too high, or data not normalized?); stopping instead of "
            "training on garbage"
        )


def train_one_epoch(
    step: Callable,
    trainings: Sequence[Training],
    loaders: Sequence,
    *,
    kept_heads: Sequence[int],
    device,
    world: World = ALONE,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, float] | TrainingDiverged]:
    """One pass over each member's training loader, the members stepping together: `step` takes one
    batch per member and returns each member's (loss, logits) (harness.train.step's pack steps; a pack of
    one for a lone trial). The members' loaders have the same number of batches of the same sizes.

    Returns each member's metrics, or the TrainingDiverged that ends it. Counters stay on the device,
    one entry per member: no sync per step; they are summed over the data-parallel processes at the
    end, so every process returns the same metrics. `progress(images)` is told each step's images (all
    members'), from the batch shapes: no sync either.
    """
    n_members = len(trainings)
    zeros = lambda: torch.zeros(n_members, device=device, dtype=torch.float64)  # noqa: E731
    loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top = (zeros() for _ in range(7))
    weights = torch.tensor([t.loss_weight for t in trainings], device=device, dtype=torch.float64)
    steps = 0
    for batches in zip(*loaders, strict=True):
        outputs = step([(batch.x, batch.y) for batch in batches])
        for training in trainings:
            training.scheduler.step()
            training.after_step()
        loss = torch.stack([member_loss for member_loss, _ in outputs]).double()
        kept = torch.stack([logits[h] for (_, logits), h in zip(outputs, kept_heads)])  # (members, B, K)
        y = torch.stack([batch.y for batch in batches])
        clean = torch.stack([batch.clean for batch in batches])
        pred = kept.argmax(2)
        is_flipped = y != clean
        loss_sum += loss * (y.shape[1] / weights)
        n += y.shape[1]
        hit_noisy += (pred == y).sum(1)
        hit_clean += (pred == clean).sum(1)
        flipped += is_flipped.sum(1)
        memorized += (is_flipped & (pred == y)).sum(1)
        top += F.one_hot(pred, kept.shape[2]).sum(1).max(1).values  # per member, as class_counts
        steps += 1
        if progress is not None:
            progress(y.numel())
    totals = world.sum(torch.stack([loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top]))
    # one sync per epoch: this is where a diverged loss is caught (by every process at once)
    results: list[dict[str, float] | TrainingDiverged] = []
    for loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top in totals.T.tolist():
        loss_mean = loss_sum / n
        try:
            check_finite(loss_mean)
        except TrainingDiverged as exc:  # ends this member only (raised: its traceback goes in error.txt)
            results.append(exc)
            continue
        results.append(
            {
                TRAIN_LOSS: loss_mean,
                TRAIN_ACC_NOISY: hit_noisy / n,
                TRAIN_ACC_CLEAN: hit_clean / n,
                # share of flipped samples the kept head predicts as their wrong label; not logged where
                # no label was flipped (no noise, or labels that came noisy, noise.kind none): a share
                # of nothing, not 0
                **({TRAIN_MEMORIZED: memorized / flipped} if flipped else {}),
                "train/pred_top_share": top / n,
                "train/images": n,
                "train/steps": steps,
            }
        )
    return results


EpochCallback = Callable[[int, dict[str, float], dict], None]


@dataclass
class Member:
    """One trial in the engine's hands: what `fit_pack` trains, and (after it) how that went.

    `resume` is a `checkpoint_state` to continue from; `on_epoch(epoch, metrics, state)` is called
    after each of its epochs with the state a checkpoint needs. `rng` is torch's CPU generator
    state as the trial alone would have it (its checkpoints carry it): the state after its graph
    was built, which no training step draws from (augmentation draws come from (seed, epoch)).
    """

    model: torch.nn.Module
    train_loader: object
    eval_loaders: dict
    opts: FitOptions
    resume: dict | None = None
    on_epoch: EpochCallback | None = None
    log: Callable[[str], None] = print
    rng: torch.Tensor | None = None
    # filled in by fit_pack
    training: Training | None = None
    epoch: int = 0  # the last epoch trained
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    collapsed_for: int = 0
    error: Exception | None = None  # what ended it early (a diverged loss, a failing callback)
    stopped: bool = False  # ended by run.stop_on_collapse

    @property
    def ended(self) -> bool:
        return self.error is not None or self.stopped or self.epoch >= self.opts.epochs


def fit(
    model: torch.nn.Module,
    train_loader,
    eval_loaders: dict,
    opts: FitOptions,
    *,
    device: torch.device,
    resume: dict | None = None,
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    world: World = ALONE,
    progress: bool = False,
) -> dict[str, float]:
    """Train for opts.epochs; return the last epoch's metrics (a pack of one, see `fit_pack`).

    on_epoch(epoch, metrics, state) is called after every epoch (1-based) with the state a
    checkpoint needs (see `checkpoint_state`); `resume` is such a state, to continue from.
    Data-parallel (`world`, harness.train.ddp): every process runs this with its shard of the loaders
    and gets the same metrics. `progress`: show the progress within each epoch (harness.train.progress).
    """
    member = Member(model, train_loader, eval_loaders, opts, resume=resume, on_epoch=on_epoch, log=log)
    fit_pack([member], device=device, world=world, progress=progress)
    if member.error is not None:
        raise member.error
    return member.metrics


def fit_pack(
    members: Sequence[Member],
    *,
    device: torch.device,
    world: World = ALONE,
    on_round: Callable[[Sequence[Member]], None] | None = None,
    progress: bool = False,
) -> None:
    """Train every member to its end, all members that are still training stepping together.

    The members share the device, the number of batches per epoch and the batch size (harness.run.pack
    checks what a pack may hold); anything else may differ, the epoch they resume at included.
    Each round trains one epoch of every member still training; then each is evaluated, logged and
    called back on its own. A member ends at its last epoch, at a collapse stop or with an error
    (`Member.error`: a diverged loss, a failing callback), and leaves the pack; the others go on
    unchanged. `on_round(members)` is called after each round with the members of that round;
    `progress` shows each round's progress within the epoch (harness.progress; rank 0 only).
    """
    device = torch.device(device)
    packed = len(members) > 1
    for member in members:
        _start(member, device, world, packed=packed)
    active = [m for m in members if not m.ended]
    while active:
        step = make_pack_step(
            [m.training.step for m in active],
            graph=packed
            and device.type == "cuda"
            and all(m.opts.cuda_graph and m.opts.update == "simultaneous" for m in active),
            batch_size=active[0].train_loader.batch_size,
        )
        while active and all(not m.ended for m in active):
            _train_round(step, active, device, world, progress=progress and world.is_main)
            if on_round is not None:
                on_round(active)
            if any(m.ended for m in active):
                active = [m for m in active if not m.ended]
                break  # a new pack step for the members left


def _start(member: Member, device: torch.device, world: World, *, packed: bool) -> None:
    """Set a member up for training: SGD, schedule and step; its resumed state where it has one."""
    opts, loader = member.opts, member.train_loader
    member.training = setup_training(
        member.model,
        opts,
        device=device,
        steps_per_epoch=len(loader),
        batch_size=loader.batch_size,
        world=world,
        own_graph=not packed,
    )
    if member.rng is None:
        member.rng = torch.get_rng_state()
    if member.resume is not None:
        resume, training = member.resume, member.training
        member.model.load_state_dict(resume["model"])
        training.optimizer.load_state_dict(resume["optimizer"])
        training.scheduler.load_state_dict(resume["scheduler"])
        training.after_step()  # the ramp where the restored schedule is
        member.rng = resume["rng"]["torch"]
        member.epoch, member.history = resume["epoch"], list(resume["history"])
        member.metrics = dict(member.history[-1]) if member.history else {}
        member.collapsed_for = int(member.metrics.get("train/collapsed_epochs", 0))
        member.stopped = bool(member.history) and stops_on_collapse(opts, member.metrics)
        member.log(f"resuming at epoch {member.epoch + 1} of {opts.epochs}")
    member.model.train()


def _train_round(
    step: Callable, members: Sequence[Member], device: torch.device, world: World, *, progress: bool = False
) -> None:
    """One epoch of every member: train them together, then evaluate and call back each on its own."""
    for member in members:
        member.train_loader.set_epoch(member.epoch + 1)
    bar = None
    if progress:
        first, loader = members[0], members[0].train_loader
        per_member = len(loader) * loader.batch_size if loader.drop_last else loader.num_samples
        title = f"epoch {first.epoch + 1}/{first.opts.epochs}" + (
            f" (a pack of {len(members)})" if len(members) > 1 else ""
        )
        bar = EpochProgress(per_member * len(members), title)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        results = train_one_epoch(
            step,
            [m.training for m in members],
            [m.train_loader for m in members],
            kept_heads=[m.opts.kept_head for m in members],
            device=device,
            world=world,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    for member, result in zip(members, results):
        member.epoch += 1
        if isinstance(result, Exception):
            member.error = result
            continue
        try:
            _end_epoch(member, result, device=device, world=world, t0=t0, train_s=train_s)
        except Exception as exc:  # noqa: BLE001 - a member's failure is its own; the pack goes on
            member.error = exc


def _end_epoch(
    member: Member,
    metrics: dict[str, float],
    *,
    device: torch.device,
    world: World,
    t0: float,
    train_s: float,
) -> None:
    """Evaluate a member after its epoch, complete its metrics, log, call back, decide a collapse stop.

    In a pack, time/epoch_s runs from the start of the pack's epoch to this member's end, and
    perf/img_per_s is the member's own images over the pack's training time."""
    opts, epoch, model = member.opts, member.epoch, member.model
    for name, loader in member.eval_loaders.items():
        metrics.update(
            evaluate(
                model,
                loader,
                kept_head=opts.kept_head,
                device=device,
                amp=opts.amp,
                prefix=name,
                world=world,
            )
        )
    metrics.update(
        {
            "epoch": epoch,
            "lr": member.training.optimizer.param_groups[0]["lr"],
            "train/soft_weight": member.training.current_soft_weight(),
            TIME_EPOCH_S: time.perf_counter() - t0,
            "time/train_s": train_s,
            PERF_IMG_PER_S: metrics["train/images"] / train_s,
        }
    )
    shares = [metrics["train/pred_top_share"]]
    shares += [metrics[f"{name}/pred_top_share"] for name in list(member.eval_loaders)[:1]]
    metrics[TRAIN_COLLAPSED] = float(is_collapsed(*shares))
    member.collapsed_for = member.collapsed_for + 1 if metrics[TRAIN_COLLAPSED] else 0
    metrics["train/collapsed_epochs"] = member.collapsed_for
    if epoch == opts.epochs or stops_on_collapse(opts, metrics):
        # its last epoch: how well it finds the flipped labels (an extra forward pass over the
        # training set, not counted in time/epoch_s)
        metrics.update(
            detect_noise(
                model,
                member.train_loader.unaugmented(),
                kept_head=opts.kept_head,
                device=device,
                amp=opts.amp,
                world=world,
            )
        )
    if device.type == "cuda":
        metrics[GPU_PEAK_MEM_MB] = torch.cuda.max_memory_allocated(device) / 2**20
    member.history.append(metrics)
    member.metrics = metrics
    member.log(format_epoch(epoch, opts.epochs, metrics))
    if member.on_epoch is not None:
        training = member.training
        state = checkpoint_state(
            model, training.optimizer, training.scheduler, epoch, member.history, device, rng=member.rng
        )
        member.on_epoch(epoch, metrics, state)
    if stops_on_collapse(opts, metrics):
        member.stopped = True
        member.log(
            f"stopping: the kept head has been collapsed for {member.collapsed_for} epochs "
            f"(run.stop_on_collapse = {opts.stop_on_collapse})"
        )


def stops_on_collapse(opts: FitOptions, metrics: dict[str, float]) -> bool:
    """Whether `fit` ends after the epoch that gave `metrics` because the run has stayed collapsed."""
    return bool(opts.stop_on_collapse) and metrics["train/collapsed_epochs"] >= opts.stop_on_collapse

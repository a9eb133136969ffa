"""The training loop: `fit` trains the members of a pack, a lone trial being a pack of one.

Reads top to bottom like a training script. Each round trains one epoch of every member still
training, stepping together (`train_one_epoch`: one step of all of them at a time, harness.train.step's
pack steps); then each member is evaluated (every head, the kept head and the heads' ensemble,
harness.train.evaluate), logged and called back on its own with the state a checkpoint needs. The
members have their own graphs, data order, labels and hyperparameters; everything but the step is
each member's own: its metrics, checkpoints, collapse stop, and its failure (a diverged loss ends
that member only). Accuracies are fractions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.contract import (
    GPU_PEAK_MEM_MB,
    LEARNING_RATE,
    PERF_IMG_PER_S,
    PERF_PACK_TFLOPS,
    PERF_TFLOPS,
    TIME_EPOCH_S,
    TIME_TRAIN_S,
    TRAIN_ACC_CLEAN,
    TRAIN_ACC_NOISY,
    TRAIN_COLLAPSED,
    TRAIN_COLLAPSED_EPOCHS,
    TRAIN_IMAGES,
    TRAIN_KEPT,
    TRAIN_KEPT_PRECISION,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
    TRAIN_PRED_TOP_SHARE,
    TRAIN_SOFT_WEIGHT,
    TRAIN_STEPS,
    pred_top_share,
)
from harness.train.checkpoint import checkpoint_state
from harness.train.config import Recipe
from harness.train.device import Place
from harness.train.evaluate import detect_noise, evaluate, is_collapsed
from harness.train.log import format_epoch
from harness.train.progress import EpochProgress
from harness.train.step import make_pack_step
from harness.train.training import Training, setup_training


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run's numbers would be garbage."""


def check_finite(loss: float) -> None:
    """Raise TrainingDiverged for an epoch's mean training loss that is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training loss became {loss} (lr too high, or data not normalized?); stopping instead of "
            "training on garbage"
        )


def stops_on_collapse(cfg: Recipe, metrics: Mapping[str, float]) -> bool:
    """Whether the epoch that gave `metrics` ends a collapse stop: the kept head has been collapsed for
    run.stop_on_collapse epochs in a row (0: never)."""
    stop = cfg.run.stop_on_collapse
    return bool(stop) and metrics.get(TRAIN_COLLAPSED_EPOCHS, 0) >= stop


def is_last_epoch(cfg: Recipe, epoch: int, metrics: Mapping[str, float]) -> bool:
    """Whether `epoch`, whose metrics these are, is a trial's last: its final epoch, or a collapse stop.
    The one rule for "has this trial ended training" (its checkpoint of that epoch is its end)."""
    return epoch >= cfg.optim.epochs or stops_on_collapse(cfg, metrics)


def train_one_epoch(
    step: Callable,
    trainings: Sequence[Training],
    loaders: Sequence,
    place: Place,
    *,
    kept_heads: Sequence[int],
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, float] | TrainingDiverged]:
    """One pass over each member's training loader, the members stepping together: `step` takes one
    batch per member and returns each member's StepOutput (harness.train.step's pack steps; a pack
    of one for a lone trial). The members' loaders have the same number of batches of the same sizes.

    Returns each member's metrics, or the TrainingDiverged that ends it. Counters stay on the device,
    one entry per member: no sync per step; they are summed over the data-parallel processes at the
    end, so every process returns the same metrics. `progress(images)` is told each step's images (all
    members'), from the batch shapes: no sync either.
    """
    device = place.device
    n_members = len(trainings)
    zeros = lambda: torch.zeros(n_members, device=device, dtype=torch.float64)  # noqa: E731
    loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top = (zeros() for _ in range(7))
    kept_n, kept_of, kept_clean = zeros(), zeros(), zeros()  # sample selection: kept, out of, clean kept
    weights = torch.tensor([t.loss_weight for t in trainings], device=device, dtype=torch.float64)
    steps = 0
    for batches in zip(*loaders, strict=True):
        outputs = step([(batch.x, batch.y) for batch in batches])
        for training in trainings:
            training.scheduler.step()
            training.after_step()
        loss = torch.stack([out.loss for out in outputs]).double()
        kept = torch.stack([out.logits[h] for out, h in zip(outputs, kept_heads)])  # (members, B, K)
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
        for i, out in enumerate(outputs):
            if out.kept is not None:  # (H, B): the samples each head trained on
                kept_n[i] += out.kept.sum()
                kept_of[i] += out.kept.numel()
                kept_clean[i] += (out.kept & ~is_flipped[i]).sum()
        steps += 1
        if progress is not None:
            progress(y.numel())
    counters = [loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top, kept_n, kept_of, kept_clean]
    totals = place.world.sum(torch.stack(counters))
    # one sync per epoch: this is where a diverged loss is caught (by every process at once)
    results: list[dict[str, float] | TrainingDiverged] = []
    for (
        loss_sum,
        n,
        hit_noisy,
        hit_clean,
        flipped,
        memorized,
        top,
        kept_n,
        kept_of,
        kept_clean,
    ) in totals.T.tolist():
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
                TRAIN_PRED_TOP_SHARE: top / n,
                TRAIN_IMAGES: n,
                TRAIN_STEPS: steps,
                # a method that selects samples: the share each head trained on, and how many of those
                # carried their true label (Co-teaching's label precision); not logged by the others
                **({TRAIN_KEPT: kept_n / kept_of} if kept_of else {}),
                **({TRAIN_KEPT_PRECISION: kept_clean / kept_n} if kept_n else {}),
            }
        )
    return results


# after_epoch(epoch, metrics, state): a member's epoch ended; `state` is what a checkpoint holds
AfterEpoch = Callable[[int, dict[str, float], dict], None]


@dataclass
class Member:
    """One trial in the engine's hands: what `fit` trains, and (after it) how that went.

    `cfg` is the trial's config (the engine reads its optim, collab and run sections); `resume` a
    `checkpoint_state` to continue from; `after_epoch(epoch, metrics, state)` is called after each of
    its epochs with the state a checkpoint needs. `rng` is torch's CPU generator state as the trial
    alone would have it (its checkpoints carry it): the state after its graph was built, which no
    training step draws from (augmentation draws come from (seed, epoch)).
    """

    model: torch.nn.Module
    train_loader: object
    eval_loaders: dict
    cfg: Recipe
    resume: dict | None = None
    after_epoch: AfterEpoch | None = None
    log: Callable[[str], None] = print
    rng: torch.Tensor | None = None
    step_flops: int | None = None  # of one training step (harness.train.cost): perf/tflops
    labels_rate: float | None = None  # the share of its training labels that are wrong (a forget rate auto)
    # filled in by fit
    training: Training | None = None
    epoch: int = 0  # the last epoch trained
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    collapsed_for: int = 0
    error: Exception | None = None  # what ended it early (a diverged loss, a failing callback)

    @property
    def done(self) -> bool:
        """Whether it has stopped training: it failed, or its last epoch is behind it (`is_last_epoch`)."""
        return self.error is not None or (
            self.epoch > 0 and is_last_epoch(self.cfg, self.epoch, self.metrics)
        )


def fit(
    members: Sequence[Member],
    place: Place,
    *,
    after_round: Callable[[Sequence[Member]], None] | None = None,
    progress: bool = False,
) -> None:
    """Train every member to its end, all members that are still training stepping together.

    The members share the device, the number of batches per epoch and the batch size (harness.config.packs
    says what a pack may hold); anything else may differ, the epoch they resume at included. A
    member ends at its last epoch, at a collapse stop or with an error (`Member.error`: a diverged
    loss, a failing callback), and leaves the pack; the others go on unchanged. `after_round(members)`
    is called after each round with the members of that round; `progress` shows each round's progress
    within the epoch (harness.train.progress; rank 0 only). Data-parallel (`place.world`,
    harness.train.ddp): every process runs this with its shard of the loaders and gets the same metrics.
    """
    packed = len(members) > 1
    for member in members:
        _start(member, place, packed=packed)
    active = [m for m in members if not m.done]
    while active:
        step = make_pack_step(
            [m.training.step for m in active],
            graph=packed
            and place.cuda
            and all(m.cfg.run.cuda_graph and m.cfg.collab.update == "simultaneous" for m in active),
            batch_size=active[0].train_loader.batch_size,
        )
        while active and not any(m.done for m in active):
            _train_round(step, active, place, progress=progress and place.world.is_main)
            if after_round is not None:
                after_round(active)
        active = [m for m in active if not m.done]  # a new pack step for the members left


def _start(member: Member, place: Place, *, packed: bool) -> None:
    """Set a member up for training: SGD, schedule and step; its resumed state where it has one."""
    loader = member.train_loader
    member.training = setup_training(
        member.model,
        member.cfg,
        device=place.device,
        steps_per_epoch=len(loader),
        batch_size=loader.batch_size,
        world=place.world,
        own_graph=not packed,
        labels_rate=member.labels_rate,
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
        member.collapsed_for = int(member.metrics.get(TRAIN_COLLAPSED_EPOCHS, 0))
        member.log(f"resuming at epoch {member.epoch + 1} of {member.cfg.optim.epochs}")
    member.model.train()


def _train_round(step: Callable, members: Sequence[Member], place: Place, *, progress: bool = False) -> None:
    """One epoch of every member: train them together, then evaluate and call back each on its own."""
    for member in members:
        member.train_loader.set_epoch(member.epoch + 1)
        member.training.start_epoch(member.epoch + 1)
    bar = _progress_bar(members) if progress else None
    place.synchronize()
    t0 = time.perf_counter()
    try:
        results = train_one_epoch(
            step,
            [m.training for m in members],
            [m.train_loader for m in members],
            place,
            kept_heads=[m.cfg.collab.kept_head for m in members],
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    place.synchronize()
    train_s = time.perf_counter() - t0
    pack_tflops = _tflops(members, results, train_s) if len(members) > 1 else None
    for member, result in zip(members, results):
        member.epoch += 1
        if isinstance(result, Exception):
            member.error = result
            continue
        if member.step_flops is not None:
            result[PERF_TFLOPS] = _tflops([member], [result], train_s)
            if pack_tflops is not None:
                result[PERF_PACK_TFLOPS] = pack_tflops
        try:
            _end_epoch(member, result, place, t0=t0, train_s=train_s)
        except Exception as exc:  # noqa: BLE001 - a member's failure is its own; the pack goes on
            member.error = exc


def _tflops(members: Sequence[Member], results: Sequence, train_s: float) -> float:
    """TFLOP/s of these members' training steps over the round's training time (their step FLOPs
    times the steps each took); a member that failed this round counts no steps."""
    flops = sum(
        m.step_flops * r[TRAIN_STEPS]
        for m, r in zip(members, results)
        if m.step_flops is not None and not isinstance(r, Exception)
    )
    return flops / train_s / 1e12


def _progress_bar(members: Sequence[Member]) -> EpochProgress:
    """The progress of a round's epoch: every member's images."""
    first, loader = members[0], members[0].train_loader
    per_member = len(loader) * loader.batch_size if loader.drop_last else loader.num_samples
    title = f"epoch {first.epoch + 1}/{first.cfg.optim.epochs}" + (
        f" (a pack of {len(members)})" if len(members) > 1 else ""
    )
    return EpochProgress(per_member * len(members), title)


def _end_epoch(member: Member, metrics: dict[str, float], place: Place, *, t0: float, train_s: float) -> None:
    """Evaluate a member after its epoch, complete its metrics, log, call back, decide a collapse stop.

    In a pack, time/epoch_s runs from the start of the pack's epoch to this member's end, and
    perf/img_per_s is the member's own images over the pack's training time."""
    cfg, epoch, model = member.cfg, member.epoch, member.model
    kept_head, amp = cfg.collab.kept_head, cfg.run.amp
    for name, loader in member.eval_loaders.items():
        metrics.update(evaluate(model, loader, place, kept_head=kept_head, amp=amp, prefix=name))
    metrics.update(
        {
            "epoch": epoch,
            LEARNING_RATE: member.training.optimizer.param_groups[0]["lr"],
            TRAIN_SOFT_WEIGHT: member.training.current_soft_weight(),
            TIME_EPOCH_S: time.perf_counter() - t0,
            TIME_TRAIN_S: train_s,
            PERF_IMG_PER_S: metrics[TRAIN_IMAGES] / train_s,
        }
    )
    shares = [metrics[TRAIN_PRED_TOP_SHARE]]
    shares += [metrics[pred_top_share(name)] for name in list(member.eval_loaders)[:1]]
    metrics[TRAIN_COLLAPSED] = float(is_collapsed(*shares))
    member.collapsed_for = member.collapsed_for + 1 if metrics[TRAIN_COLLAPSED] else 0
    metrics[TRAIN_COLLAPSED_EPOCHS] = member.collapsed_for
    if is_last_epoch(cfg, epoch, metrics):
        # its last epoch: how well it finds the flipped labels (an extra forward pass over the
        # training set, not counted in time/epoch_s)
        unaugmented = member.train_loader.unaugmented()
        metrics.update(detect_noise(model, unaugmented, place, kept_head=kept_head, amp=amp))
    if place.cuda:
        metrics[GPU_PEAK_MEM_MB] = place.peak_mem_mb()
    member.history.append(metrics)
    member.metrics = metrics
    member.log(format_epoch(epoch, cfg.optim.epochs, metrics))
    if member.after_epoch is not None:
        training = member.training
        state = checkpoint_state(
            model, training.optimizer, training.scheduler, epoch, member.history, place.device, rng=member.rng
        )
        member.after_epoch(epoch, metrics, state)
    if stops_on_collapse(cfg, metrics):
        member.log(
            f"stopping: the kept head has been collapsed for {member.collapsed_for} epochs "
            f"(run.stop_on_collapse = {cfg.run.stop_on_collapse})"
        )

"""The training engine: train_one_epoch, evaluate, fit (and fit_pack).

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.collab import loss_scale
from harness.collab.losses import make_label_loss
from harness.contract import (
    GPU_PEAK_MEM_MB,
    PERF_IMG_PER_S,
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TEST_ECE,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_ACC_NOISY,
    TRAIN_COLLAPSED,
    TRAIN_DETECT_AUROC,
    TRAIN_DETECT_AUROC_CONSENSUS,
    TRAIN_DETECT_PRECISION,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
    VAL_ACC_NOISY,
)
from harness.data import safeload
from harness.train.ddp import ALONE, World, data_parallel, loss_weight
from harness.train.optim import SGD, build_scheduler, ramp_factor
from harness.train.progress import EpochProgress
from harness.train.scores import CALIBRATION_BINS, calibration_counts, detection_metrics, ece_from_counts
from harness.train.step import EagerStep, autocast, make_loss_fn, make_pack_step, make_train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run's numbers would be garbage."""


def check_finite(loss: float) -> None:
    """Raise TrainingDiverged for an epoch's mean training loss that is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training loss became {loss} (lr too high, or data not normalized?); stopping instead of "
            "training on garbage"
        )


@dataclass
class FitOptions:
    """Everything `fit` needs besides the graph and the data: the engine's view of a trial config,
    built from it by ``harness.run.trial.fit_options`` (the defaults live in ``harness.config`` only)."""

    epochs: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: list[int] | None
    gamma: float
    warmup_epochs: int
    T: float
    beta: float
    rescale: str  # "loss": the summed loss is scaled by 1/H (see harness.collab.graph.loss_scale)
    soft_rampup_epochs: int  # the soft target's weight grows linearly from 0 over these epochs
    kept_head: int
    update: str  # "simultaneous", or "alternating": one head's loss (and parameters) per step
    amp: bool
    cuda_graph: bool
    checkpoint_every: int
    stop_on_collapse: int  # end training after this many consecutive collapsed epochs; 0: never
    # every head's label term (harness.collab.losses.make_label_loss): ce, gce or sce, and their settings
    label_loss: str
    label_smoothing: float
    gce_q: float
    sce_alpha: float
    sce_beta: float


@dataclass
class Training:
    """What a run trains with: the optimizer, its per-step schedule, the step and the soft-target ramp.

    ``step(x, y) -> (loss, logits)``; after each, ``scheduler.step()`` and then ``after_step()``.
    """

    optimizer: SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: Callable
    ramp_steps: int
    soft_weight: float | torch.Tensor
    loss_weight: float = 1.0  # data-parallel: the step's loss is the process's mean loss times this

    def current_soft_weight(self) -> float:
        """The soft target's weight for the next step, from the scheduler's step count."""
        return ramp_factor(self.scheduler.last_epoch, self.ramp_steps)

    def after_step(self) -> None:
        """Refill the ramped soft weight from the scheduler's step count (also after a resume)."""
        if isinstance(self.soft_weight, torch.Tensor):
            self.soft_weight.fill_(self.current_soft_weight())


def setup_training(
    model: torch.nn.Module,
    opts: FitOptions,
    *,
    device,
    steps_per_epoch: int,
    batch_size: int,
    world: World = ALONE,
    own_graph: bool = True,
) -> Training:
    """SGD, its schedule and the fastest step the device allows, for `fit`, `harness bench` and the GPU checks.

    The loss is built here: the collaborative objective at opts.T and opts.beta with opts' label
    loss as every head's label term, scaled by 1/H for rescale "loss". The soft target's weight is 1 (the paper), or ramped in from 0 over the first
    soft_rampup_epochs as a device tensor refilled outside any captured graph (`Training.after_step`).
    Data-parallel (`world`): the steps run the graph wrapped in DDP (harness.train.ddp), eagerly (DDP's
    all-reduce is not captured in a CUDA graph); `batch_size` is the global batch. `own_graph`
    False: an eager step even on CUDA, for a member of a pack whose steps are captured together.
    """
    device = torch.device(device)
    trained, weight = model, 1.0
    if world.parallel:
        trained = data_parallel(model, device)
        weight = loss_weight(batch_size, world)
    optimizer = SGD(
        model.parameters(),
        lr=opts.lr,
        momentum=opts.momentum,
        nesterov=opts.nesterov,
        weight_decay=opts.weight_decay,
    )
    scheduler = build_scheduler(
        optimizer,
        steps_per_epoch=steps_per_epoch,
        epochs=opts.epochs,
        schedule=opts.schedule,
        milestones=opts.milestones,
        gamma=opts.gamma,
        warmup_epochs=opts.warmup_epochs,
    )
    ramp_steps = opts.soft_rampup_epochs * steps_per_epoch
    soft_weight: float | torch.Tensor = torch.tensor(0.0, device=device) if ramp_steps else 1.0
    scale = loss_scale(opts.rescale, model.heads) * weight
    label_loss = make_label_loss(
        opts.label_loss,
        label_smoothing=opts.label_smoothing,
        gce_q=opts.gce_q,
        sce_alpha=opts.sce_alpha,
        sce_beta=opts.sce_beta,
    )
    loss = dict(T=opts.T, beta=opts.beta, loss_scale=scale, soft_weight=soft_weight, label_loss=label_loss)
    if opts.update == "alternating":
        # one step per head in turn; each head's loss only, so only its path is updated
        steps = [
            EagerStep(trained, optimizer, make_loss_fn(**loss, head=h), device=device, amp=opts.amp)
            for h in range(model.heads)
        ]
        step = _alternate(steps)
    else:
        step = make_train_step(
            trained,
            optimizer,
            make_loss_fn(**loss),
            device=device,
            amp=opts.amp,
            cuda_graph=opts.cuda_graph and own_graph and not world.parallel,
            batch_size=batch_size,
        )
    training = Training(optimizer, scheduler, step, ramp_steps, soft_weight, weight)
    training.after_step()
    return training


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{name!r} asked for, but CUDA is not available here; use cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CUDA too
    np.random.seed(seed)  # only for third-party code; ours passes Generators explicitly


# A collapsed network predicts one class for (almost) every input: its features have died and its
# output no longer depends on the image. Two views of the kept head's predictions, either suffices:
# - evaluation (eval mode, BatchNorm's running statistics): the share of the first evaluation set's
#   images predicted as its most frequent class; a dead net gives one class for every image (test
#   accuracy exactly 1/K on balanced classes);
# - training (train mode): per batch, how many samples get the batch's most frequent prediction.
#   BatchNorm normalizes with the batch's own statistics there, so a dead net's constant class can
#   change from batch to batch; counting per batch catches that, counting over the epoch would not.
# Measured on real CIFAR-10 after one epoch (ResNet-32, H200): the collapsed runs gave 0.996-1.0
# (evaluation) and 0.95-0.99 (training); runs that learn at most 0.84 (80 % noise, where a net
# barely above chance still favours one class), far less at lower noise. The label-based
# alternative, "loss at its constant-prediction value", cannot tell collapse from learning at 80 %
# symmetric noise: there even a perfect classifier's loss is within 2 % of it.
COLLAPSE_SHARE = 0.95


def is_collapsed(*top_shares: float) -> bool:
    """True when any of the shares of predictions in the most frequent class is >= COLLAPSE_SHARE."""
    return any(share >= COLLAPSE_SHARE for share in top_shares)


def class_counts(logits: torch.Tensor) -> torch.Tensor:
    """(K,) number of rows of (B, K) ``logits`` predicting each class; on the device, no sync."""
    return F.one_hot(logits.argmax(1), logits.shape[1]).sum(0)


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


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    *,
    kept_head: int,
    device,
    amp: bool,
    prefix: str = "test",
    world: World = ALONE,
) -> dict[str, float]:
    """Accuracy of every head, of the kept head and of the ensemble (mean of the heads' softmax),
    and the calibration of the kept head and of the ensemble, all against the true labels.

    Calibration: ``{prefix}/ece`` (expected calibration error, CALIBRATION_BINS equal-width
    confidence bins, a fraction) and ``{prefix}/nll`` (mean negative log-likelihood of the true
    class, nats), ``_ensemble`` for the ensemble. A loader whose labels are noisy (``.labels_noisy``:
    the held-out split with the trial's noise) also gives ``{prefix}/acc_noisy``, the kept head's
    accuracy against those labels: what a practitioner without clean labels can select on.
    Everything is counted on the device; one sync at the end.
    Data-parallel: each process evaluates its part of the set with rank 0's BatchNorm statistics
    (those checkpointed); the counts are summed over the processes."""
    world.broadcast_buffers(model)
    model.eval()
    hits = torch.zeros(model.heads, device=device, dtype=torch.long)  # per head
    counts = torch.zeros(model.num_classes, device=device, dtype=torch.long)  # kept head's predictions
    hit_ens, hit_noisy, n = (torch.zeros((), device=device, dtype=torch.long) for _ in range(3))
    # kept head, ensemble: calibration bins (3, bins) each, and the summed NLL
    calib = torch.zeros(2, 3, CALIBRATION_BINS, device=device, dtype=torch.float64)
    nll = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in loader:
        with autocast(torch.device(device), amp):
            logits = model(batch.x)
        heads = torch.stack([z.float() for z in logits])  # (H, B, K)
        hits += (heads.argmax(2) == batch.clean).sum(1)  # evaluation uses the true labels
        probs = heads.softmax(2)
        ensemble = probs.mean(0)
        hit_ens += (ensemble.argmax(1) == batch.clean).sum()
        hit_noisy += (heads[kept_head].argmax(1) == batch.y).sum()
        counts += class_counts(heads[kept_head])
        n += batch.clean.shape[0]
        calib[0] += calibration_counts(probs[kept_head], batch.clean)
        calib[1] += calibration_counts(ensemble, batch.clean)
        nll[0] += F.cross_entropy(heads[kept_head], batch.clean, reduction="sum").double()
        # a probability that underflowed to 0 would give an infinite NLL: clamp at float32's tiny
        log_ens = ensemble.clamp_min(torch.finfo(torch.float32).tiny).log()
        nll[1] += F.nll_loss(log_ens, batch.clean, reduction="sum").double()
    model.train()
    totals = world.sum(torch.cat([hits, counts, hit_ens[None], hit_noisy[None], n[None]]))
    world.sum(calib)
    world.sum(nll)
    hits, counts = totals[: model.heads], totals[model.heads : -3]
    hit_ens, hit_noisy, n = totals[-3].item(), totals[-2].item(), totals[-1].item()
    per_head = (hits.double() / n).tolist()
    # prefix "test": harness.contract's TEST_ACC, TEST_ACC_ENSEMBLE, head_acc(h), TEST_ECE, TEST_NLL, ...
    metrics = {
        f"{prefix}/acc": per_head[kept_head],
        f"{prefix}/acc_ensemble": hit_ens / n,
        f"{prefix}/pred_top_share": counts.max().item() / n,
        f"{prefix}/ece": ece_from_counts(calib[0]),
        f"{prefix}/ece_ensemble": ece_from_counts(calib[1]),
        f"{prefix}/nll": nll[0].item() / n,
        f"{prefix}/nll_ensemble": nll[1].item() / n,
    }
    if getattr(loader, "labels_noisy", False):
        metrics[f"{prefix}/acc_noisy"] = hit_noisy / n
    metrics.update({f"{prefix}/acc_head{h}": acc for h, acc in enumerate(per_head)})
    return metrics


@torch.no_grad()
def detect_noise(
    model: torch.nn.Module, loader, *, kept_head: int, device, amp: bool, world: World = ALONE
) -> dict[str, float]:
    """How well the trained network finds the flipped training labels (the noise module knows them).

    ``loader``: an unaugmented pass over the training set in its order (``train_loader.unaugmented()``),
    ``.labels`` the labels trained on, ``.clean_labels`` the true ones; flipped = labels != clean
    (for human noise: the annotators' label != the clean one). Two scores per sample, in eval mode:
    the kept head's cross-entropy on its given label (TRAIN_DETECT_AUROC, ..._PRECISION, ..._RECALL),
    and for several heads the disagreement of their consensus (mean softmax) with the given label,
    1 - p_consensus(label) (the ``_consensus`` variants). Precision and recall flag as many samples
    as are flipped (the realized noise rate), so they are equal. Nothing is returned where no label
    (or every label) is flipped: detection is undefined there.
    Data-parallel: each process scores its part; the scores are summed into every process's copy.
    """
    world.broadcast_buffers(model)
    model.eval()
    scores = torch.zeros(2, loader.num_samples, device=device, dtype=torch.float32)
    for batch in loader:
        with autocast(torch.device(device), amp):
            logits = model(batch.x)
        heads = torch.stack([z.float() for z in logits])  # (H, B, K)
        scores[0, batch.index] = F.cross_entropy(heads[kept_head], batch.y, reduction="none")
        consensus = heads.softmax(2).mean(0).gather(1, batch.y[:, None]).squeeze(1)
        scores[1, batch.index] = 1.0 - consensus
    model.train()
    world.sum(scores)  # each sample was scored by one process, the others hold 0 there
    flipped = (loader.labels != loader.clean_labels).cpu().numpy()
    scores = scores.cpu().numpy()
    metrics = {f"train/detect_{k}": v for k, v in detection_metrics(scores[0], flipped).items()}
    if model.heads > 1:  # one head: the consensus is the kept head, the same ranking
        metrics |= {
            f"train/detect_{k}_consensus": v for k, v in detection_metrics(scores[1], flipped).items()
        }
    return metrics


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


def _alternate(steps: list[EagerStep]):
    counter = {"i": 0}

    def step(x, y):
        out = steps[counter["i"] % len(steps)](x, y)
        counter["i"] += 1
        return out

    return step


def checkpoint_state(
    model, optimizer, scheduler, epoch: int, history: list[dict], device, *, rng: torch.Tensor | None = None
) -> dict:
    """What a resumed run needs to reach the same result: weights, SGD buffers, schedule, RNG, epoch.

    `rng`: torch's CPU generator state to record (a pack member's own); torch's current one without."""
    rng = {"torch": torch.get_rng_state() if rng is None else rng}
    rng["cuda"] = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "history": safeload.plain(history, "history"),  # plain numbers: loads with weights_only=True
        "rng": rng,
    }


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a killed process leaves the previous checkpoint, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint from `save_checkpoint`, read with weights_only=True: a file that could run code is
    refused with harness.safeload.UnsafeFileError (it may come from another machine)."""
    return safeload.load_checkpoint(path)


def format_detection(m: dict[str, float]) -> str:
    """One line on noise detection (`detect_noise`'s metrics)."""
    line = (
        f"noise detection: AUROC {m[TRAIN_DETECT_AUROC]:.3f} (kept head's loss), precision = recall "
        f"{m[TRAIN_DETECT_PRECISION]:.3f} at the realized rate"
    )
    if TRAIN_DETECT_AUROC_CONSENSUS in m:
        line += f"; heads' consensus: AUROC {m[TRAIN_DETECT_AUROC_CONSENSUS]:.3f}"
    return line


def format_epoch(epoch: int, epochs: int, m: dict[str, float]) -> str:
    mem = f"  mem {m[GPU_PEAK_MEM_MB]:.0f} MB" if GPU_PEAK_MEM_MB in m else ""
    mem += "  COLLAPSED" if m.get(TRAIN_COLLAPSED) else ""
    val = f"  val noisy {m[VAL_ACC_NOISY]:.4f}" if VAL_ACC_NOISY in m else ""
    memorized = f"{m[TRAIN_MEMORIZED]:.3f}" if TRAIN_MEMORIZED in m else "n/a"  # no flipped labels
    line = (
        f"epoch {epoch:>3}/{epochs}  loss {m[TRAIN_LOSS]:.4f}  train {m[TRAIN_ACC_NOISY]:.3f} "
        f"(clean {m[TRAIN_ACC_CLEAN]:.3f}, memorized {memorized})  "
        f"test {m[TEST_ACC]:.4f} (ens {m[TEST_ACC_ENSEMBLE]:.4f}, ece {m[TEST_ECE]:.3f}){val}  "
        f"{m[TIME_EPOCH_S]:.1f}s  {m[PERF_IMG_PER_S]:.0f} img/s{mem}"
    )
    return line + ("\n" + format_detection(m) if TRAIN_DETECT_AUROC in m else "")

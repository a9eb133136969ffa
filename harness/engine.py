"""The training engine: train_one_epoch, evaluate, fit.

Reads top to bottom like a training script. `fit` runs epochs of SGD on a collaborative
training graph, evaluates every head, the kept head and the heads' ensemble, measures how
much of the label noise the kept head has memorized, and hands a metrics dict per epoch to
a callback (which logs, reports to Ray Tune and checkpoints). Accuracies are fractions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness import safeload
from harness.collab import loss_scale
from harness.contract import (
    GPU_PEAK_MEM_MB,
    PERF_IMG_PER_S,
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TIME_EPOCH_S,
    TRAIN_ACC_CLEAN,
    TRAIN_ACC_NOISY,
    TRAIN_COLLAPSED,
    TRAIN_LOSS,
    TRAIN_MEMORIZED,
)
from harness.ddp import ALONE, World, data_parallel, loss_weight
from harness.optim import SGD, build_scheduler, ramp_factor
from harness.step import EagerStep, autocast, make_loss_fn, make_train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run's numbers would be garbage."""


@dataclass
class FitOptions:
    """Everything `fit` needs besides the graph and the data: the engine's view of a trial config,
    built from it by ``harness.trial.fit_options`` (the defaults live in ``harness.config`` only)."""

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
    rescale: str  # "loss": the summed loss is scaled by 1/H (see harness.collab.loss_scale)
    soft_rampup_epochs: int  # the soft target's weight grows linearly from 0 over these epochs
    kept_head: int
    update: str  # "simultaneous", or "alternating": one head's loss (and parameters) per step
    amp: bool
    cuda_graph: bool
    checkpoint_every: int
    stop_on_collapse: int  # end training after this many consecutive collapsed epochs; 0: never


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
) -> Training:
    """SGD, its schedule and the fastest step the device allows, for `fit`, `harness bench` and the GPU checks.

    The loss is built here: the collaborative objective at opts.T and opts.beta, scaled by 1/H for
    rescale "loss". The soft target's weight is 1 (the paper), or ramped in from 0 over the first
    soft_rampup_epochs as a device tensor refilled outside any captured graph (`Training.after_step`).
    Data-parallel (`world`): the steps run the graph wrapped in DDP (harness.ddp), eagerly (DDP's
    all-reduce is not captured in a CUDA graph); `batch_size` is the global batch.
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
    loss = dict(T=opts.T, beta=opts.beta, loss_scale=scale, soft_weight=soft_weight)
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
            cuda_graph=opts.cuda_graph and not world.parallel,
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
    training: Training, loader, *, kept_head: int, device, world: World = ALONE
) -> dict[str, float]:
    """One pass over the training loader. Counters stay on the device: no sync per step; they are
    summed over the data-parallel processes at the end, so every process returns the same metrics."""
    zeros = lambda: torch.zeros((), device=device, dtype=torch.float64)  # noqa: E731
    loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top = (zeros() for _ in range(7))
    steps = 0
    for batch in loader:
        loss, logits = training.step(batch.x, batch.y)
        training.scheduler.step()
        training.after_step()
        pred = logits[kept_head].argmax(1)
        is_flipped = batch.y != batch.clean
        loss_sum += loss.double() * (batch.y.shape[0] / training.loss_weight)
        n += batch.y.shape[0]
        hit_noisy += (pred == batch.y).sum()
        hit_clean += (pred == batch.clean).sum()
        flipped += is_flipped.sum()
        memorized += (is_flipped & (pred == batch.y)).sum()
        top += class_counts(logits[kept_head]).max()
        steps += 1
    totals = world.sum(torch.stack([loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top]))
    loss_sum, n, hit_noisy, hit_clean, flipped, memorized, top = totals
    # one sync per epoch: this is where a diverged loss is caught (by every process at once)
    loss_mean = (loss_sum / n).item()
    if not math.isfinite(loss_mean):
        raise TrainingDiverged(
            f"training loss became {loss_mean} (lr too high, or data not normalized?); stopping instead of "
            "training on garbage"
        )
    count = n.item()
    return {
        TRAIN_LOSS: loss_mean,
        TRAIN_ACC_NOISY: hit_noisy.item() / count,
        TRAIN_ACC_CLEAN: hit_clean.item() / count,
        # share of flipped samples the kept head predicts as their wrong label; not logged where no label
        # was flipped (no noise, or labels that came noisy, noise.kind none): a share of nothing, not 0
        **({TRAIN_MEMORIZED: memorized.item() / flipped.item()} if flipped.item() else {}),
        "train/pred_top_share": top.item() / count,
        "train/images": count,
        "train/steps": steps,
    }


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
    """Accuracy of every head, of the kept head and of the ensemble (mean of the heads' softmax).

    Data-parallel: each process evaluates its part of the set with rank 0's BatchNorm statistics
    (those checkpointed); the counts are summed over the processes."""
    world.broadcast_buffers(model)
    model.eval()
    hits = torch.zeros(model.heads, device=device, dtype=torch.long)  # per head
    counts = torch.zeros(model.num_classes, device=device, dtype=torch.long)  # kept head's predictions
    hit_ens, n = (torch.zeros((), device=device, dtype=torch.long) for _ in range(2))
    for batch in loader:
        with autocast(torch.device(device), amp):
            logits = model(batch.x)
        heads = torch.stack([z.float() for z in logits])  # (H, B, K)
        hits += (heads.argmax(2) == batch.clean).sum(1)  # evaluation uses the true labels
        hit_ens += (heads.softmax(2).mean(0).argmax(1) == batch.clean).sum()
        counts += class_counts(heads[kept_head])
        n += batch.clean.shape[0]
    model.train()
    totals = world.sum(torch.cat([hits, counts, hit_ens[None], n[None]]))
    hits, counts, hit_ens, n = totals[: model.heads], totals[model.heads : -2], totals[-2], totals[-1].item()
    per_head = (hits.double() / n).tolist()
    # prefix "test": harness.contract's TEST_ACC, TEST_ACC_ENSEMBLE and head_acc(h)
    metrics = {
        f"{prefix}/acc": per_head[kept_head],
        f"{prefix}/acc_ensemble": hit_ens.item() / n,
        f"{prefix}/pred_top_share": counts.max().item() / n,
    }
    metrics.update({f"{prefix}/acc_head{h}": acc for h, acc in enumerate(per_head)})
    return metrics


EpochCallback = Callable[[int, dict[str, float], dict], None]


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
) -> dict[str, float]:
    """Train for opts.epochs; return the last epoch's metrics.

    on_epoch(epoch, metrics, state) is called after every epoch (1-based) with the state a
    checkpoint needs (see `checkpoint_state`); `resume` is such a state, to continue from.
    Data-parallel (`world`, harness.ddp): every process runs this with its shard of the loaders
    and gets the same metrics.
    """
    device = torch.device(device)
    training = setup_training(
        model,
        opts,
        device=device,
        steps_per_epoch=len(train_loader),
        batch_size=train_loader.batch_size,
        world=world,
    )
    optimizer, scheduler = training.optimizer, training.scheduler
    start_epoch, history = 1, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        training.after_step()  # the ramp where the restored schedule is
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        start_epoch, history = resume["epoch"] + 1, list(resume["history"])
        log(f"resuming at epoch {start_epoch} of {opts.epochs}")

    model.train()
    metrics: dict[str, float] = {}
    collapsed_for = int(history[-1].get("train/collapsed_epochs", 0)) if history else 0
    for epoch in range(start_epoch, opts.epochs + 1):
        train_loader.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        metrics = train_one_epoch(
            training, train_loader, kept_head=opts.kept_head, device=device, world=world
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - t0
        for name, loader in eval_loaders.items():
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
                "lr": optimizer.param_groups[0]["lr"],
                "train/soft_weight": training.current_soft_weight(),
                TIME_EPOCH_S: time.perf_counter() - t0,
                "time/train_s": train_s,
                PERF_IMG_PER_S: metrics["train/images"] / train_s,
            }
        )
        shares = [metrics["train/pred_top_share"]]
        shares += [metrics[f"{name}/pred_top_share"] for name in list(eval_loaders)[:1]]
        metrics[TRAIN_COLLAPSED] = float(is_collapsed(*shares))
        collapsed_for = collapsed_for + 1 if metrics[TRAIN_COLLAPSED] else 0
        metrics["train/collapsed_epochs"] = collapsed_for
        if device.type == "cuda":
            metrics[GPU_PEAK_MEM_MB] = torch.cuda.max_memory_allocated(device) / 2**20
        history.append(metrics)
        log(format_epoch(epoch, opts.epochs, metrics))
        if on_epoch is not None:
            on_epoch(
                epoch,
                metrics,
                checkpoint_state(model, optimizer, scheduler, epoch, history, device),
            )
        if stops_on_collapse(opts, metrics):
            log(
                f"stopping: the kept head has been collapsed for {collapsed_for} epochs "
                f"(run.stop_on_collapse = {opts.stop_on_collapse})"
            )
            break
    return metrics


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


def checkpoint_state(model, optimizer, scheduler, epoch: int, history: list[dict], device) -> dict:
    """What a resumed run needs to reach the same result: weights, SGD buffers, schedule, RNG, epoch."""
    rng = {"torch": torch.get_rng_state()}
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


def format_epoch(epoch: int, epochs: int, m: dict[str, float]) -> str:
    mem = f"  mem {m[GPU_PEAK_MEM_MB]:.0f} MB" if GPU_PEAK_MEM_MB in m else ""
    mem += "  COLLAPSED" if m.get(TRAIN_COLLAPSED) else ""
    memorized = f"{m[TRAIN_MEMORIZED]:.3f}" if TRAIN_MEMORIZED in m else "n/a"  # no flipped labels
    return (
        f"epoch {epoch:>3}/{epochs}  loss {m[TRAIN_LOSS]:.4f}  train {m[TRAIN_ACC_NOISY]:.3f} "
        f"(clean {m[TRAIN_ACC_CLEAN]:.3f}, memorized {memorized})  "
        f"test {m[TEST_ACC]:.4f} (ens {m[TEST_ACC_ENSEMBLE]:.4f})  "
        f"{m[TIME_EPOCH_S]:.1f}s  {m[PERF_IMG_PER_S]:.0f} img/s{mem}"
    )

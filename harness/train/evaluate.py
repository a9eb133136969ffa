"""Evaluation after each epoch, and what it finds: accuracy and calibration of every head, the kept
head and the heads' ensemble (`evaluate`); whether the kept head has collapsed (`is_collapsed`); how
well a per-sample score finds the flipped training labels after the last epoch (`detect_noise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.contract import DETECTION_METRICS, SplitMetrics
from harness.train.device import Place
from harness.train.scores import CALIBRATION_BINS, calibration_counts, detection_metrics, ece_from_counts
from harness.train.step import autocast

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


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader, place: Place, *, kept_head: int, amp: bool, prefix: str = "test"
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
    device, world = place.device, place.world
    world.broadcast_buffers(model)
    model.eval()
    hits = torch.zeros(model.heads, device=device, dtype=torch.long)  # per head
    counts = torch.zeros(model.num_classes, device=device, dtype=torch.long)  # kept head's predictions
    hit_ens, hit_noisy, n = (torch.zeros((), device=device, dtype=torch.long) for _ in range(3))
    # kept head, ensemble: calibration bins (3, bins) each, and the summed NLL
    calib = torch.zeros(2, 3, CALIBRATION_BINS, device=device, dtype=torch.float64)
    nll = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in loader:
        with autocast(device, amp):
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
    name = SplitMetrics(prefix)  # "test": harness.contract's TEST_ACC, TEST_ACC_ENSEMBLE, TEST_ECE, ...
    metrics = {
        name.acc: per_head[kept_head],
        name.acc_ensemble: hit_ens / n,
        name.pred_top_share: counts.max().item() / n,
        name.ece: ece_from_counts(calib[0]),
        name.ece_ensemble: ece_from_counts(calib[1]),
        name.nll: nll[0].item() / n,
        name.nll_ensemble: nll[1].item() / n,
    }
    if getattr(loader, "labels_noisy", False):
        metrics[name.acc_noisy] = hit_noisy / n
    metrics.update({name.acc_head(h): acc for h, acc in enumerate(per_head)})
    return metrics


@torch.no_grad()
def detect_noise(
    model: torch.nn.Module, loader, place: Place, *, kept_head: int, amp: bool
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
    device, world = place.device, place.world
    world.broadcast_buffers(model)
    model.eval()
    scores = torch.zeros(2, loader.num_samples, device=device, dtype=torch.float32)
    for batch in loader:
        with autocast(device, amp):
            logits = model(batch.x)
        heads = torch.stack([z.float() for z in logits])  # (H, B, K)
        scores[0, batch.index] = F.cross_entropy(heads[kept_head], batch.y, reduction="none")
        consensus = heads.softmax(2).mean(0).gather(1, batch.y[:, None]).squeeze(1)
        scores[1, batch.index] = 1.0 - consensus
    model.train()
    world.sum(scores)  # each sample was scored by one process, the others hold 0 there
    flipped = (loader.labels != loader.clean_labels).cpu().numpy()
    scores = scores.cpu().numpy()
    names = DETECTION_METRICS["loss"]
    metrics = {names[k]: v for k, v in detection_metrics(scores[0], flipped).items()}
    if model.heads > 1:  # one head: the consensus is the kept head, the same ranking
        names = DETECTION_METRICS["consensus"]
        metrics |= {names[k]: v for k, v in detection_metrics(scores[1], flipped).items()}
    return metrics

"""One trial as several data-parallel processes: the process group's view of the engine.

Torch only. The processes are started, and torch.distributed initialized, by Ray Train
(harness.cluster.raytrain); the engine sees them through a `World` (rank, size). What holds
(docs/offline-and-cluster.md, "Data-parallel trials"):

- `optim.batch_size` is the global batch. Each process takes its part of every batch
  (harness.data.loaders.shard_positions: B // W or B // W + 1 samples) of the same pass, drawn from
  (seed, epoch), so results do not depend on worker timing.
- The collaborative graph is wrapped in DistributedDataParallel: every head's gradient is
  all-reduced (averaged). Each process's loss is weighted by its share of the batch
  (`loss_weight`), so the average is the one-process gradient of the global batch also when W
  does not divide B. Backpropagation rescaling acts inside the graph and is unchanged.
- BatchNorm normalizes with each process's own part of the batch unless `run.sync_bn`
  (SyncBatchNorm: the statistics of the global batch, as in one process). Without it, DDP
  gives every process rank 0's running statistics at each step, and evaluation uses them.
- Counters (training loss and accuracies, memorization, evaluation hits) are summed over the
  processes once per epoch, so every process returns the same metrics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from harness.data.loaders import Shard, part_size


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel processes of one trial (size 1: alone)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The initialized default process group, or a world of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, reports checkpoints and writes files."""
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the processes, in place (itself in a world of one)."""
        if self.parallel:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm running statistics)."""
        if self.parallel:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def check_same(self, values: np.ndarray, what: str, device: torch.device) -> None:
        """Raise unless every process holds the same `values` (e.g. the noisy labels, drawn per process).

        `device`: the process's training device (NCCL reduces CUDA tensors only)."""
        if not self.parallel:
            return
        raw = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=8).digest()
        digest = torch.tensor([int.from_bytes(raw, "little", signed=True)], dtype=torch.int64, device=device)
        gathered = [torch.zeros_like(digest) for _ in range(self.size)]
        dist.all_gather(gathered, digest)
        if any(int(g) != int(digest) for g in gathered):
            raise RuntimeError(f"the {what} differ between the data-parallel processes")


ALONE = World()  # a process that trains by itself


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (its gradients averaged over the processes).

    Every step uses every parameter: config refuses alternating updates with several workers,
    since DDP would give the heads a step leaves out zero gradients, not none.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def loss_weight(batch_size: int, world: World) -> float:
    """The factor of this process's mean loss that makes DDP's average the global batch's mean loss.

    A process's loss is the mean over its part (p samples) of the global batch (B): scaled by
    p * W / B, the average over the W processes is the sum of the per-sample losses over B, also
    when W does not divide B. Scaling the loss (not the gradients) keeps this true through
    SyncBatchNorm, whose backward mixes every process's loss into every process's gradient.
    """
    return part_size(batch_size, world.shard) * world.size / batch_size


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm2d normalizing over the global batch.

    torch's SyncBatchNorm on CUDA; on the CPU (gloo), where torch's refuses to run, `GlooSyncBatchNorm`.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, GlooSyncBatchNorm.of(child))
        else:
            sync_batchnorm(child, device)
    return model


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch summed over all processes.

    Written with a differentiable all-reduce (`_AllReduceSum`), so autograd gives the exact
    gradient of the global batch's normalization. Two reductions per layer (the mean,
    then the variance around it); meant for CPU runs, where torch's SyncBatchNorm is unavailable.
    """

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> GlooSyncBatchNorm:
        sync = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        sync.load_state_dict(bn.state_dict())
        return sync.to(bn.weight.device if bn.affine else bn.running_mean.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        shape = (1, -1, 1, 1)
        count = all_reduce(x.new_tensor([x.numel() / x.shape[1]]))
        mean = all_reduce(x.sum((0, 2, 3))) / count
        centered = x - mean.view(shape)
        var = all_reduce(centered.square().sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / (count - 1), m)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad

"""A trial ready to train (`TrialJob.prepare`): data -> noisy labels -> training graph -> loaders, and
what it writes into its folder as it trains (harness.run.layout): a checkpoint every
run.checkpoint_every epochs and after its last, then the artifacts a person checks.

harness.run.lifecycle trains trials; this module is one trial's part of that. Needs torch only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import noise
from harness.collab import build_training_graph
from harness.config import TrialConfig, dump_yaml
from harness.contract import INFERENCE_PARAMS, NOISE_REALIZED_RATE, NOISE_VAL_REALIZED_RATE, TRAIN_PARAMS
from harness.data import ImageData, load_dataset
from harness.data.labels import corrupt_labels, val_noise_seed
from harness.data.loaders import make_loaders
from harness.models import count_parameters
from harness.run.layout import TrialFolder
from harness.train.checkpoint import load_checkpoint, save_checkpoint
from harness.train.cost import StepCost, measure_step_cost
from harness.train.ddp import sync_batchnorm
from harness.train.device import Place, seed_everything
from harness.train.loop import Member, is_last_epoch
from harness.train.objective import build_objective

# on_epoch(epoch, metrics, checkpoint folder or None): the trial's epoch ended; its checkpoint folder
# when this epoch's checkpoint was written (a runner reports it: Ray Tune copies it to storage)
OnEpoch = Callable[[int, dict[str, float], Path | None], None]


def load_trial_data(cfg: TrialConfig) -> ImageData:
    """The trial's data set with its clean labels (the same for every seed: a pack loads it once)."""
    return load_dataset(
        cfg.data.name,
        root=os.path.expanduser(cfg.data.root) if cfg.data.root else None,
        download=cfg.data.download,
        train_subset=cfg.data.train_subset,
        val_fraction=cfg.data.val_fraction,
        image_size=cfg.data.image_size,
    )


@dataclass
class TrialJob:
    """One trial ready to train: its labels, graph, loaders and callbacks (`prepare`), as a member of
    the engine's `fit` (`member`). `after_epoch` is the engine's callback: a checkpoint every
    run.checkpoint_every epochs and after the last, artifacts after the last, then the runner's
    `on_epoch(epoch, metrics, checkpoint folder or None)`.
    """

    cfg: TrialConfig
    folder: TrialFolder
    graph: torch.nn.Module
    noisy: noise.NoisyLabels
    train_loader: object
    eval_loaders: dict
    sizes: dict[str, float]  # logged with the first epoch: parameter counts, noise rates, step cost
    cost: StepCost  # what one training step costs (harness.train.cost)
    resume: dict | None  # the checkpoint to go on from
    rng: torch.Tensor  # torch's CPU generator state after the graph was built (checkpoints carry it)
    place: Place
    on_epoch: OnEpoch | None
    log: Callable[[str], None]

    @classmethod
    def prepare(
        cls,
        cfg: TrialConfig,
        data: ImageData,
        place: Place,
        *,
        folder: TrialFolder,
        on_epoch: OnEpoch | None = None,
        resume: bool = False,
        log: Callable[[str], None] = print,
    ) -> TrialJob:
        """Seed, corrupt the labels, build the graph and the loaders; with `resume`, read the folder's
        checkpoint (where it has one) to go on from."""
        seed_everything(cfg.run.seed)
        noisy, val_noisy = _labels(cfg, data, place)
        log(
            f"{data.name}: {len(data.train_y)} training images, {data.num_classes} classes; "
            f"noise {cfg.noise.kind} {cfg.noise.rate}: {noisy.rate:.2%} of labels flipped"
            + (f" ({val_noisy.rate:.2%} of {data.num_val} held out)" if val_noisy is not None else "")
            + f"; device {place.device}"
            + (f"; {place.world.size} data-parallel workers" if place.world.parallel else "")
        )
        graph, rng = _graph(cfg, data, place)
        train_loader, eval_loaders = make_loaders(
            data,
            noisy.labels,
            batch_size=cfg.optim.batch_size,
            augment=cfg.data.augment,
            device=place.device,
            seed=cfg.run.seed,
            num_workers=cfg.data.num_workers,
            decode=cfg.data.decode,
            channels_last=_channels_last(cfg, place),
            shard=place.world.shard,
            val_labels=None if val_noisy is None else val_noisy.labels,
        )
        cost = step_cost(cfg, graph, train_loader, place, labels_rate=noisy.rate)
        sizes = {
            TRAIN_PARAMS: count_parameters(graph),
            INFERENCE_PARAMS: count_parameters(graph.export_head(cfg.collab.kept_head)),
            NOISE_REALIZED_RATE: noisy.rate,
            **cost.metrics(),
        }
        if val_noisy is not None:
            sizes[NOISE_VAL_REALIZED_RATE] = val_noisy.rate
        state = load_checkpoint(folder.state_file) if resume and folder.has_checkpoint else None
        return cls(
            cfg,
            folder,
            graph,
            noisy,
            train_loader,
            eval_loaders,
            sizes,
            cost,
            state,
            rng,
            place,
            on_epoch,
            log,
        )

    @property
    def checkpoint_is_last(self) -> bool:
        """Whether the checkpoint to go on from is of the trial's last epoch: nothing left to train."""
        state = self.resume
        return (
            state is not None
            and bool(state["history"])
            and is_last_epoch(self.cfg, state["epoch"], state["history"][-1])
        )

    def member(self) -> Member:
        """The trial as a member of the engine's `fit` (a pack of one when it trains alone)."""
        return Member(
            self.graph,
            self.train_loader,
            self.eval_loaders,
            self.cfg,
            resume=self.resume,
            after_epoch=self.after_epoch,
            log=self.log,
            rng=self.rng,
            step_flops=self.cost.step_flops,
            labels_rate=self.noisy.rate,
        )

    def after_epoch(self, epoch: int, metrics: dict[str, float], state: dict) -> None:
        """The engine's callback: checkpoint, artifacts after the last epoch, then the runner's on_epoch."""
        resume, cfg, main = self.resume, self.cfg, self.place.world.is_main
        if epoch == 1 or (resume is not None and epoch == resume["epoch"] + 1):
            metrics = {**self.sizes, **metrics}
        last = is_last_epoch(cfg, epoch, metrics)
        every = cfg.run.checkpoint_every
        written = None
        if main and (last or (every and epoch % every == 0)):
            save_checkpoint(state, self.folder.state_file)
            written = self.folder.checkpoint_dir
        if main and last:
            write_artifacts(self.folder.artifacts, cfg, self.graph, self.noisy, {**self.sizes, **metrics})
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics, written)

    def report_checkpointed_end(self) -> dict[str, float]:
        """Stopped after the last epoch's checkpoint but before it was reported: report that epoch again
        from the checkpoint (the engine would start past the end, or past a collapse stop)."""
        resume, main = self.resume, self.place.world.is_main
        self.graph.load_state_dict(resume["model"])
        epoch, last = resume["epoch"], {**self.sizes, **resume["history"][-1]}
        self.log(
            f"epoch {epoch} of {self.cfg.optim.epochs} was the last and is in the checkpoint: "
            "nothing left to train"
        )
        if main:
            save_checkpoint(resume, self.folder.state_file)
            write_artifacts(self.folder.artifacts, self.cfg, self.graph, self.noisy, last)
        if self.on_epoch is not None:
            self.on_epoch(epoch, last, self.folder.checkpoint_dir if main else None)
        return last

    def final(self, metrics: dict[str, float]) -> dict[str, float]:
        """The trial's final metrics: its last epoch's, with the sizes of its graph and noise."""
        return {**self.sizes, **metrics}


def _labels(cfg: TrialConfig, data: ImageData, place: Place):
    """The noisy training labels, and the held-out split's (None without one): the same noise, a
    draw of its own. Drawn from the full set, before sharding: every process must hold the same."""
    noisy = corrupt_labels(data, cfg.noise, seed=cfg.run.seed)
    place.world.check_same(noisy.labels, "noisy training labels", place.device)
    val_noisy = None
    if data.val_y is not None:
        val_noisy = corrupt_labels(data, cfg.noise, seed=val_noise_seed(cfg.run.seed), split="val")
    return noisy, val_noisy


def _graph(cfg: TrialConfig, data: ImageData, place: Place) -> tuple[torch.nn.Module, torch.Tensor]:
    """The training graph on the trial's device, and torch's CPU RNG state right after it was built."""
    graph = build_training_graph(
        cfg.model.arch,
        data.num_classes,
        cfg.collab.topology,
        cfg.collab.heads,
        rescale=cfg.collab.rescale,
        split=cfg.collab.split,
        in_channels=data.channels,
        zero_init_residual=cfg.model.zero_init_residual,
    )
    rng = torch.get_rng_state()
    graph.use_branch_streams(cfg.run.branch_streams)
    if place.world.parallel and cfg.run.sync_bn:
        graph = sync_batchnorm(graph, place.device)
    memory = torch.channels_last if _channels_last(cfg, place) else torch.preserve_format
    return graph.to(place.device, memory_format=memory), rng


def step_cost(
    cfg: TrialConfig, graph: torch.nn.Module, loader, place: Place, *, labels_rate: float | None = None
) -> StepCost:
    """What one training step of the trial costs (FLOPs, memory; harness.train.cost), counted on a
    fake copy of its graph at its (global) batch size, with its objective and, on CUDA, its autocast:
    nothing of the trial changes. Alternating updates: the step of the first head's loss."""
    head = 0 if cfg.collab.update == "alternating" else None
    objective = build_objective(cfg, graph.heads, device=place.device, head=head, labels_rate=labels_rate)
    batch = cfg.optim.batch_size
    x = torch.empty(batch, *loader.sample_shape, device="meta")
    y = torch.empty(batch, dtype=torch.long, device="meta")
    momentum = 1 if cfg.optim.momentum else 0  # SGD's momentum buffer, one per parameter
    return measure_step_cost(
        graph,
        objective,
        x,
        y,
        kept_head=cfg.collab.kept_head,
        optimizer_buffers=momentum,
        amp=cfg.run.amp,
        device=place.device,
    )


def _channels_last(cfg: TrialConfig, place: Place) -> bool:
    return cfg.run.channels_last and place.cuda


def write_artifacts(folder: Path, cfg: TrialConfig, graph, noisy: noise.NoisyLabels, metrics: dict) -> None:
    """What a person checks after a run: the config, the realized noise, the numbers, the kept network."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.yaml").write_text(dump_yaml(cfg))
    k = noisy.transition.shape[0]
    header = "true\\observed," + ",".join(str(j) for j in range(k))
    rows = [f"{i}," + ",".join(f"{v:.6f}" for v in noisy.transition[i]) for i in range(k)]
    (tmp / "noise_transition.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    head = graph.export_head(cfg.collab.kept_head).cpu()
    torch.save({"arch": cfg.model.arch, "state_dict": head.state_dict()}, tmp / "inference_head.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)

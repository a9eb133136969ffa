"""A trial: one configuration end to end, as a function that returns metrics.

data -> noise.corrupt -> training graph -> engine -> metrics, checkpoints and artifacts.
Ray Tune wraps `run_trial` in a few lines (harness.cluster.tune) and `harness train` calls
it directly; neither needs anything here but torch, numpy and PyYAML.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import noise
from harness import config as C
from harness.collab import build_training_graph
from harness.contract import INFERENCE_PARAMS, NOISE_REALIZED_RATE, NOISE_VAL_REALIZED_RATE, TRAIN_PARAMS
from harness.data import ImageData, load_dataset
from harness.data.loaders import make_loaders
from harness.models import count_parameters
from harness.train.checkpoint import load_checkpoint, save_checkpoint
from harness.train.ddp import ALONE, World, sync_batchnorm
from harness.train.device import resolve_device, seed_everything
from harness.train.loop import Member, fit, stops_on_collapse
from harness.train.training import FitOptions

# on_epoch(epoch, metrics, checkpoint_dir or None)
TrialCallback = Callable[[int, dict[str, float], Path | None], None]

CHECKPOINT_FILE = "state.pt"
VAL_NOISE_STREAM = 19  # `val_noise_seed`: the held-out labels' noise is drawn from (seed, this)


def corrupt_labels(
    data: ImageData, spec: C.NoiseConfig, *, seed: int, split: str = "train"
) -> noise.NoisyLabels:
    """The trial's training labels (``split="train"``) or held-out labels (``"val"``, the split of
    data.val_fraction): the clean ones corrupted as the noise config says. For human noise, the
    CIFAR-N labels of the split's images. Draw the val labels with `val_noise_seed`, so they are
    independent of the training draw (and the training labels do not depend on the split's noise)."""
    y, indices = (data.train_y, data.train_indices) if split == "train" else (data.val_y, data.val_indices)
    ns = noise.NoiseSpec(
        spec.kind,
        spec.rate,
        dataset=data.name,
        label_set=spec.label_set,
        label_file=os.path.expanduser(spec.label_file) if spec.label_file else None,
        matrix=spec.matrix,
    )
    if spec.kind == "human":
        # CIFAR-N labels follow the official training order: corrupt the full set, then take our subset
        _, clean_full = noise.load_human_labels(ns.label_file, ns.label_set)
        if not np.array_equal(clean_full[indices], y):
            raise ValueError(
                f"noise.label_file {spec.label_file}: its clean labels disagree with {data.name}'s "
                f"{'training' if split == 'train' else 'held-out'} labels; "
                "is the data set in the official order?"
            )
        full = noise.corrupt(clean_full, ns, num_classes=data.num_classes, seed=seed)
        return noise.NoisyLabels.from_pair(y, full.labels[indices], data.num_classes)
    features = None
    if spec.kind == "instance":
        x = data.train_x if split == "train" else data.val_x
        features = x.reshape(len(y), -1).float().numpy() / 255.0
    return noise.corrupt(y, ns, num_classes=data.num_classes, seed=seed, features=features)


def val_noise_seed(seed: int) -> int:
    """The seed of the held-out split's noise draw: derived from the trial's seed, another stream."""
    return int(np.random.SeedSequence([int(seed), VAL_NOISE_STREAM]).generate_state(1)[0])


def label_file_problems(configs: list[C.TrialConfig]) -> list[C.Problem]:
    """Human-label files that a trial would refuse, read once each before any trial starts: a file
    that could run code, lacks the label set, belongs to another data set or labels another number
    of images. They are small; checking them here turns a failure of every trial into one message."""
    from harness.data import DATASETS

    problems, seen = [], set()
    for cfg in configs:
        n, d = cfg.noise, DATASETS.get(cfg.data.name)
        if n.kind != "human" or (n.label_file, n.label_set, cfg.data.name) in seen:
            continue
        seen.add((n.label_file, n.label_set, cfg.data.name))
        try:
            noise.check_label_file(
                os.path.expanduser(n.label_file),
                n.label_set,
                num_classes=d.num_classes if d else None,
                num_train=d.num_train if d else None,
            )
        except (ValueError, FileNotFoundError) as exc:  # UnsafeFileError among them
            problems.append(C.Problem("noise.label_file", str(exc)))
    return problems


def fit_options(cfg: C.TrialConfig) -> FitOptions:
    """The engine's options, read by name from the config's optim, collab and run sections."""
    values = {
        **dataclasses.asdict(cfg.optim),
        **dataclasses.asdict(cfg.collab),
        **dataclasses.asdict(cfg.run),
    }
    return FitOptions(**{f.name: values[f.name] for f in dataclasses.fields(FitOptions)})


def run_trial(
    cfg: C.TrialConfig,
    *,
    out_dir: Path,
    on_epoch: TrialCallback | None = None,
    resume_from: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, float]:
    """Train one config; return the final metrics (DESIGN.md names, accuracies as fractions).

    Writes `out_dir/checkpoint/state.pt` every `run.checkpoint_every` epochs and, after the
    last epoch, `out_dir/checkpoint/artifacts/` (config.yaml, noise_transition.csv,
    metrics.json, inference_head.pt). `resume_from` is a checkpoint directory to go on from.

    In a data-parallel trial (torch.distributed initialized, by harness.cluster.raytrain) every process
    calls this; each trains on its shard (harness.train.ddp) and gets the same metrics and callbacks,
    and only rank 0 logs and writes files (`on_epoch` gets the checkpoint folder on rank 0 only).
    `progress`: show the progress within each epoch (harness.train.progress), for commands run by a person.
    """
    world = World.current()
    if not world.is_main:
        log = _silent
    device = trial_device(cfg)
    job = TrialJob.prepare(
        cfg,
        load_trial_data(cfg),
        device=device,
        out_dir=out_dir,
        on_epoch=on_epoch,
        resume_from=resume_from,
        log=log,
        world=world,
    )
    if job.ended:
        return job.report_ended()
    final = fit(
        job.graph,
        job.train_loader,
        job.eval_loaders,
        job.opts,
        device=device,
        resume=job.resume,
        on_epoch=job.epoch_done,
        log=log,
        world=world,
        progress=progress,
    )
    return job.final(final)


def trial_device(cfg: C.TrialConfig) -> torch.device:
    """The device a trial trains on, with its peak-memory count started anew (CUDA)."""
    device = resolve_device(cfg.run.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a data-parallel worker's own card
    if device.type == "cuda":
        # gpu/peak_mem_mb is this trial's own, also after other trials in this process (harness run):
        # free what they left in the caching allocator and start the peak anew
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return device


def load_trial_data(cfg: C.TrialConfig) -> ImageData:
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
    """One trial ready to train: its labels, graph, loaders and callbacks (`TrialJob.prepare`).

    `run_trial` trains it alone (`fit`), harness.run.pack with others (`fit_pack` of `as_member()`s).
    `epoch_done` is the engine's callback: checkpoint every `run.checkpoint_every` epochs, artifacts
    after the last, then the caller's `on_epoch(epoch, metrics, checkpoint folder or None)`.
    """

    cfg: C.TrialConfig
    out_dir: Path
    graph: torch.nn.Module
    noisy: noise.NoisyLabels
    train_loader: object
    eval_loaders: dict
    opts: FitOptions
    sizes: dict[str, float]
    resume: dict | None
    rng: torch.Tensor  # torch's CPU generator state after the graph was built (checkpoints carry it)
    world: World
    on_epoch: TrialCallback | None
    log: Callable[[str], None]

    @classmethod
    def prepare(
        cls,
        cfg: C.TrialConfig,
        data: ImageData,
        *,
        device: torch.device,
        out_dir: Path,
        on_epoch: TrialCallback | None = None,
        resume_from: Path | None = None,
        log: Callable[[str], None] = print,
        world: World = ALONE,
    ) -> TrialJob:
        """Seed, corrupt the labels, build the graph and the loaders; read the checkpoint to resume from."""
        seed_everything(cfg.run.seed)
        noisy = corrupt_labels(data, cfg.noise, seed=cfg.run.seed)  # the full set, before sharding
        world.check_same(noisy.labels, "noisy training labels", device)
        # the held-out split gets the same noise as the training labels (a draw of its own)
        val_noisy = None
        if data.val_y is not None:
            val_noisy = corrupt_labels(data, cfg.noise, seed=val_noise_seed(cfg.run.seed), split="val")
        log(
            f"{data.name}: {len(data.train_y)} training images, {data.num_classes} classes; "
            f"noise {cfg.noise.kind} {cfg.noise.rate}: {noisy.rate:.2%} of labels flipped"
            + (f" ({val_noisy.rate:.2%} of {data.num_val} held out)" if val_noisy is not None else "")
            + f"; device {device}"
            + (f"; {world.size} data-parallel workers" if world.parallel else "")
        )
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
        if world.parallel and cfg.run.sync_bn:
            graph = sync_batchnorm(graph, device)
        channels_last = cfg.run.channels_last and device.type == "cuda"
        graph = graph.to(
            device, memory_format=torch.channels_last if channels_last else torch.preserve_format
        )
        train_loader, eval_loaders = make_loaders(
            data,
            noisy.labels,
            batch_size=cfg.optim.batch_size,
            augment=cfg.data.augment,
            device=device,
            seed=cfg.run.seed,
            num_workers=cfg.data.num_workers,
            decode=cfg.data.decode,
            channels_last=channels_last,
            shard=world.shard,
            val_labels=None if val_noisy is None else val_noisy.labels,
        )
        sizes = {
            TRAIN_PARAMS: count_parameters(graph),
            INFERENCE_PARAMS: count_parameters(graph.export_head(cfg.collab.kept_head)),
            NOISE_REALIZED_RATE: noisy.rate,
        }
        if val_noisy is not None:
            sizes[NOISE_VAL_REALIZED_RATE] = val_noisy.rate
        resume = None
        if resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).exists():
            resume = load_checkpoint(Path(resume_from) / CHECKPOINT_FILE)
        return cls(
            cfg,
            Path(out_dir),
            graph,
            noisy,
            train_loader,
            eval_loaders,
            fit_options(cfg),
            sizes,
            resume,
            rng,
            world,
            on_epoch,
            log,
        )

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    @property
    def ended(self) -> bool:
        """Whether the checkpoint to resume from is of the trial's last epoch: nothing left to train."""
        return self.resume is not None and has_ended(self.resume, self.opts)

    def as_member(self) -> Member:
        """The trial as one member of a pack (harness.run.pack)."""
        return Member(
            self.graph,
            self.train_loader,
            self.eval_loaders,
            self.opts,
            resume=self.resume,
            on_epoch=self.epoch_done,
            log=self.log,
            rng=self.rng,
        )

    def epoch_done(self, epoch: int, metrics: dict[str, float], state: dict) -> None:
        resume, opts, world = self.resume, self.opts, self.world
        if epoch == 1 or (resume is not None and epoch == resume["epoch"] + 1):
            metrics = {**self.sizes, **metrics}
        last = epoch == opts.epochs or stops_on_collapse(opts, metrics)
        written = None
        if world.is_main and (last or (opts.checkpoint_every and epoch % opts.checkpoint_every == 0)):
            save_checkpoint(state, self.ckpt_dir / CHECKPOINT_FILE)
            written = self.ckpt_dir
        if world.is_main and last:
            write_artifacts(
                self.ckpt_dir / "artifacts", self.cfg, self.graph, self.noisy, {**self.sizes, **metrics}
            )
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics, written)

    def report_ended(self) -> dict[str, float]:
        """Killed after the last epoch's checkpoint but before the run was reported: report that epoch
        again from the checkpoint (fit would start past the end, or past a collapse stop)."""
        resume, world = self.resume, self.world
        self.graph.load_state_dict(resume["model"])
        epoch, last = resume["epoch"], {**self.sizes, **resume["history"][-1]}
        self.log(
            f"epoch {epoch} of {self.opts.epochs} was the last and is in the checkpoint: nothing left to train"
        )
        if world.is_main:
            save_checkpoint(resume, self.ckpt_dir / CHECKPOINT_FILE)
            write_artifacts(self.ckpt_dir / "artifacts", self.cfg, self.graph, self.noisy, last)
        if self.on_epoch is not None:
            self.on_epoch(epoch, last, self.ckpt_dir if world.is_main else None)
        return last

    def final(self, metrics: dict[str, float]) -> dict[str, float]:
        """The trial's final metrics: its last epoch's, with the sizes of its graph and noise."""
        return {**self.sizes, **metrics}


def _silent(message: str) -> None:
    """The log of a data-parallel process other than rank 0."""


def has_ended(state: dict, opts: FitOptions) -> bool:
    """Whether the checkpoint `state` is of a trial's last epoch (the final one, or a collapse stop)."""
    history = state["history"]
    return state["epoch"] >= opts.epochs or (bool(history) and stops_on_collapse(opts, history[-1]))


def write_artifacts(folder: Path, cfg: C.TrialConfig, graph, noisy: noise.NoisyLabels, metrics: dict) -> None:
    """What a person checks after a run: the config, the realized noise, the numbers, the kept network."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.yaml").write_text(C.dump_yaml(cfg))
    k = noisy.transition.shape[0]
    header = "true\\observed," + ",".join(str(j) for j in range(k))
    rows = [f"{i}," + ",".join(f"{v:.6f}" for v in noisy.transition[i]) for i in range(k)]
    (tmp / "noise_transition.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    head = graph.export_head(cfg.collab.kept_head).cpu()
    torch.save({"arch": cfg.model.arch, "state_dict": head.state_dict()}, tmp / "inference_head.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)

"""A trial: one configuration end to end, as a function that returns metrics.

data -> noise.corrupt -> training graph -> engine -> metrics, checkpoints and artifacts.
Ray Tune wraps `run_trial` in a few lines (harness.tune_runner) and `harness train` calls
it directly; neither needs anything here but torch, numpy and PyYAML.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import noise
from harness import config as C
from harness.collab import build_training_graph, count_parameters
from harness.contract import INFERENCE_PARAMS, TRAIN_PARAMS
from harness.data import ImageData, load_dataset
from harness.ddp import World, sync_batchnorm
from harness.engine import (
    FitOptions,
    fit,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
    stops_on_collapse,
)
from harness.loaders import make_loaders

# on_epoch(epoch, metrics, checkpoint_dir or None)
TrialCallback = Callable[[int, dict[str, float], Path | None], None]

CHECKPOINT_FILE = "state.pt"


def corrupt_labels(data: ImageData, spec: C.NoiseConfig, *, seed: int) -> noise.NoisyLabels:
    """The trial's training labels: the clean ones corrupted as the noise config says."""
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
        if not np.array_equal(clean_full[data.train_indices], data.train_y):
            raise ValueError(
                f"noise.label_file {spec.label_file}: its clean labels disagree with {data.name}'s training labels; "
                "is the data set in the official order?"
            )
        full = noise.corrupt(clean_full, ns, num_classes=data.num_classes, seed=seed)
        return noise.NoisyLabels.from_pair(data.train_y, full.labels[data.train_indices], data.num_classes)
    features = None
    if spec.kind == "instance":
        features = data.train_x.reshape(len(data.train_y), -1).float().numpy() / 255.0
    return noise.corrupt(data.train_y, ns, num_classes=data.num_classes, seed=seed, features=features)


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
) -> dict[str, float]:
    """Train one config; return the final metrics (DESIGN.md names, accuracies as fractions).

    Writes `out_dir/checkpoint/state.pt` every `run.checkpoint_every` epochs and, after the
    last epoch, `out_dir/checkpoint/artifacts/` (config.yaml, noise_transition.csv,
    metrics.json, inference_head.pt). `resume_from` is a checkpoint directory to go on from.

    In a data-parallel trial (torch.distributed initialized, by harness.raytrain) every process
    calls this; each trains on its shard (harness.ddp) and gets the same metrics and callbacks,
    and only rank 0 logs and writes files (`on_epoch` gets the checkpoint folder on rank 0 only).
    """
    out_dir = Path(out_dir)
    world = World.current()
    if not world.is_main:
        log = _silent
    device = resolve_device(cfg.run.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a data-parallel worker's own card
    if device.type == "cuda":
        # gpu/peak_mem_mb is this trial's own, also after other trials in this process (harness run):
        # free what they left in the caching allocator and start the peak anew
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(cfg.run.seed)

    data = load_dataset(
        cfg.data.name,
        root=os.path.expanduser(cfg.data.root) if cfg.data.root else None,
        download=cfg.data.download,
        train_subset=cfg.data.train_subset,
        val_fraction=cfg.data.val_fraction,
        image_size=cfg.data.image_size,
    )
    noisy = corrupt_labels(data, cfg.noise, seed=cfg.run.seed)  # the full set, before sharding
    world.check_same(noisy.labels, "noisy training labels", device)
    log(
        f"{data.name}: {len(data.train_y)} training images, {data.num_classes} classes; "
        f"noise {cfg.noise.kind} {cfg.noise.rate}: {noisy.rate:.2%} of labels flipped; device {device}"
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
    if world.parallel and cfg.run.sync_bn:
        graph = sync_batchnorm(graph, device)
    channels_last = cfg.run.channels_last and device.type == "cuda"
    graph = graph.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
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
    )
    sizes = {
        TRAIN_PARAMS: count_parameters(graph),
        INFERENCE_PARAMS: count_parameters(graph.export_head(cfg.collab.kept_head)),
        "noise/realized_rate": noisy.rate,
    }

    resume = None
    if resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).exists():
        resume = load_checkpoint(Path(resume_from) / CHECKPOINT_FILE)
    ckpt_dir = out_dir / "checkpoint"
    opts = fit_options(cfg)

    def epoch_done(epoch: int, metrics: dict[str, float], state: dict) -> None:
        if epoch == 1 or (resume is not None and epoch == resume["epoch"] + 1):
            metrics = {**sizes, **metrics}
        last = epoch == opts.epochs or stops_on_collapse(opts, metrics)
        written = None
        if world.is_main and (last or (opts.checkpoint_every and epoch % opts.checkpoint_every == 0)):
            save_checkpoint(state, ckpt_dir / CHECKPOINT_FILE)
            written = ckpt_dir
        if world.is_main and last:
            write_artifacts(ckpt_dir / "artifacts", cfg, graph, noisy, {**sizes, **metrics})
        if on_epoch is not None:
            on_epoch(epoch, metrics, written)

    if resume is not None and has_ended(resume, opts):
        # Killed after the last epoch's checkpoint but before the run was reported: report that
        # epoch again from the checkpoint. fit would start past the end (or past a collapse stop).
        graph.load_state_dict(resume["model"])
        epoch, last = resume["epoch"], {**sizes, **resume["history"][-1]}
        log(f"epoch {epoch} of {opts.epochs} was the last and is in the checkpoint: nothing left to train")
        if world.is_main:
            save_checkpoint(resume, ckpt_dir / CHECKPOINT_FILE)
            write_artifacts(ckpt_dir / "artifacts", cfg, graph, noisy, last)
        if on_epoch is not None:
            on_epoch(epoch, last, ckpt_dir if world.is_main else None)
        return last

    final = fit(
        graph,
        train_loader,
        eval_loaders,
        opts,
        device=device,
        resume=resume,
        on_epoch=epoch_done,
        log=log,
        world=world,
    )
    return {**sizes, **final}


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

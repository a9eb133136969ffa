"""A data-parallel trial (`run.workers` > 1) as a Ray Train `TorchTrainer`.

Ray 2.60's recipe for Train under Tune (Ray Train V2, "Hyperparameter Tuning with Ray Tune"): the
Tune trial is only the Train driver. It starts a TorchTrainer of `run.workers` workers, each with
the sweep file's per-worker `cpu`/`gpu`; Ray Train places them (across nodes if need be), sets
up the process group (NCCL on GPUs, gloo on CPUs) and runs `worker_loop` on each. Every worker
trains the trial with harness.run.lifecycle.train_trials, which harness.train.ddp makes
data-parallel, in a scratch folder of its own, and reports each epoch with `ray.train.report`:
rank 0 as a Tune trial reports (harness.cluster.report), with its trial folder as the checkpoint.
`TuneReportCallback` hands rank 0's reports to Tune, where the driver's MLflow callback logs them
as it logs every Tune trial's.

Fault tolerance: when a worker dies, Ray Train restarts the whole group with the same world
size from the last reported checkpoint (`ray.train.get_checkpoint()`), `max_failures` times.
A killed Tune trial restarts its TorchTrainer, which finds its run again by (storage, name).

`harness train --set run.workers=N` starts the same TorchTrainer on a local Ray, without Tune
(harness.cluster.local). This module imports no MLflow: every Ray Train worker imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import config as C
from harness.cluster.report import TrialsReport
from harness.cluster.transport import TrialSpec
from harness.run.layout import TrialFolder
from harness.run.lifecycle import TrialResult, TrialRun, train_trials
from harness.run.runtime import runtime_tags
from harness.train.checkpoint import load_checkpoint
from harness.train.device import resolve_device

DRIVER_CPU = 0.01  # the Tune trial that drives a TorchTrainer only waits for it


def make_trainer(
    loop_config: dict[str, Any],
    *,
    workers: int,
    cpu: float,
    gpu: float,
    name: str,
    storage: str,
    max_failures: int,
    callbacks: list,
):
    """The TorchTrainer of one trial. `loop_config`: {"trial": its TrialSpec as a mapping, and
    optionally "resume_from": a trial folder every worker can read, whose checkpoint to start from
    when Ray Train has no checkpoint of its own (`harness train --resume`)}."""
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    return TorchTrainer(
        worker_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )


def worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the trial as one of its processes, reporting every epoch."""
    import ray.train
    import ray.train.torch
    import torch

    _quiet_reports()
    spec = TrialSpec(**loop_config["trial"])
    cfg = C.build_config(spec.config)
    if resolve_device(cfg.run.device).type == "cuda":
        torch.cuda.set_device(ray.train.torch.get_device())  # this worker's card
    rank = ray.train.get_context().get_world_rank()
    scratch = Path(tempfile.mkdtemp(prefix=f"harness_rank{rank}_"))
    root = scratch / "trials"  # as a Tune trial's folder: the trial's folder in it under its name
    folder = TrialFolder(root / spec.dirname)
    checkpoint = ray.train.get_checkpoint()  # after a restart: the last one reported
    if checkpoint is not None:
        checkpoint.to_directory(str(root))
    elif loop_config.get("resume_from"):
        shutil.copytree(TrialFolder(Path(loop_config["resume_from"])).checkpoint_dir, folder.checkpoint_dir)

    def report(result: dict[str, Any], written: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(written)) if written is not None else None
        ray.train.report(result, checkpoint=ckpt)

    reporter = TrialsReport([spec], root, runtime_tags(cfg.run.device), report)
    if rank == 0 and folder.has_checkpoint:
        # A resumed run reports its checkpoint's epochs again with its first epoch: whoever logs the
        # reports may not have received them (a driver interrupted after Ray Train kept the checkpoint).
        reporter.replay[spec.key] = list(load_checkpoint(folder.state_file)["history"])

    def on_ended(ended: dict[int, TrialResult]) -> None:
        # a failure is raised, not reported: Ray Train restarts the worker group from the last
        # checkpoint, and the Tune trial fails only when it gives up
        reporter.on_ended({i: r for i, r in ended.items() if r.state.ok})

    try:
        run = TrialRun(cfg, folder.root, reporter.on_epoch(spec, cfg), resume=True)
        (result,) = train_trials([run], on_ended=on_ended)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.error is not None:
        raise result.error


def _quiet_reports() -> None:
    """No log line per report and checkpoint with the whole metrics dict: the epoch line says it."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:  # Ray Train V2 logs each report under its module's file name
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - another Ray layout: the lines stay
        pass


def run_under_tune(spec: TrialSpec, launch: dict[str, Any], name: str) -> None:
    """The Tune trial of a data-parallel trial: start its TorchTrainer and wait for it.

    `launch`: {"storage", "cpu", "gpu", "max_failures"}, the same for every trial of a sweep.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = C.build_config(spec.config)
    trainer = make_trainer(
        {"trial": dataclasses.asdict(spec)},
        workers=cfg.run.workers,
        cpu=launch["cpu"],
        gpu=launch["gpu"],
        name=name,
        storage=launch["storage"],
        max_failures=launch["max_failures"],
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()

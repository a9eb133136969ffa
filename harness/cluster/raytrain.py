"""A data-parallel trial (`run.workers` > 1) as a Ray Train `TorchTrainer`.

Ray 2.60's recipe for Train under Tune (Ray Train V2, "Hyperparameter Tuning with Ray Tune"): the
Tune trial is only the Train driver. It starts a TorchTrainer of `run.workers` workers, each with
the sweep file's per-worker `cpu`/`gpu`; Ray Train places them (across nodes if need be), sets
up the process group (NCCL on GPUs, gloo on CPUs) and runs `worker_loop` on each. Every worker
runs `harness.run.trial.run_trial`, which `harness.train.ddp` makes data-parallel; every worker reports
each epoch with `ray.train.report`, rank 0 with its checkpoint. `TuneReportCallback` hands rank
0's metrics to Tune, where the driver's MLflow callback logs them as for a one-process trial.

Fault tolerance: when a worker dies, Ray Train restarts the whole group with the same world
size from the last reported checkpoint (`ray.train.get_checkpoint()`), `max_failures` times.
A killed Tune trial restarts its TorchTrainer, which finds its run again by (storage, name).

`harness train --set run.workers=N` starts a local Ray and the same TorchTrainer without Tune
(`train_locally`); its MLflow run is logged from the Train controller (`log_epochs`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import config as C

DRIVER_CPU = 0.01  # the Tune trial that drives a TorchTrainer only waits for it
DEFAULT_TRIAL_FN = "harness.run.trial:run_trial"


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
    """The TorchTrainer of one trial. `loop_config`: {"config": trial config tree, "fn":
    'module:function' (called like run_trial), "out_dir": a folder rank 0 writes, or None for a
    temporary one, and optionally "resume_from": a checkpoint folder every worker can read, to
    start from when Ray Train has no checkpoint of its own (`harness train --resume`)}."""
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
    """What each Ray Train worker runs: the trial, reporting every epoch to Ray Train."""
    import importlib

    import ray.train
    import ray.train.torch
    import torch

    from harness.contract import ENV_RESULT_KEY, REPLAY_RESULT_KEY
    from harness.run.runtime import runtime_tags
    from harness.train.device import resolve_device

    _quiet_reports()
    cfg = C.build_config(loop_config["config"])
    module, _, attr = loop_config.get("fn", DEFAULT_TRIAL_FN).partition(":")
    run_trial = getattr(importlib.import_module(module), attr)
    if resolve_device(cfg.run.device).type == "cuda":
        torch.cuda.set_device(ray.train.torch.get_device())  # this worker's card
    context = ray.train.get_context()
    env = runtime_tags(cfg.run.device)
    scratch = Path(tempfile.mkdtemp(prefix=f"harness_rank{context.get_world_rank()}_"))
    out_dir = Path(loop_config["out_dir"]) if loop_config.get("out_dir") else scratch / "trial"
    resume_from = None
    checkpoint = ray.train.get_checkpoint()  # after a restart: the last one reported
    if checkpoint is not None:
        resume_from = Path(checkpoint.to_directory(str(scratch / "restored")))
    elif loop_config.get("resume_from"):
        resume_from = Path(loop_config["resume_from"])

    # A resumed run reports its checkpoint's epochs again with its first epoch: whoever logs the
    # reports may not have received them (a driver interrupted after Ray Train kept the checkpoint).
    replay = _history(resume_from) if resume_from is not None and context.get_world_rank() == 0 else []

    def on_epoch(epoch: int, metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        nonlocal replay
        result = {**metrics, "epoch": epoch, ENV_RESULT_KEY: env}
        if replay:
            result[REPLAY_RESULT_KEY], replay = replay, []
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(result, checkpoint=ckpt)

    try:
        run_trial(cfg, out_dir=out_dir, on_epoch=on_epoch, resume_from=resume_from)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _history(checkpoint_dir: Path) -> list[dict[str, float]]:
    """The per-epoch metrics a trial's checkpoint holds."""
    from harness.run.trial import CHECKPOINT_FILE
    from harness.train.checkpoint import load_checkpoint

    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    return list(load_checkpoint(path)["history"]) if path.exists() else []


def _quiet_reports() -> None:
    """No log line per report and checkpoint with the whole metrics dict: the epoch line says it."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:  # Ray Train V2 logs each report under its module's file name
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - another Ray layout: the lines stay
        pass


def run_under_tune(spec_config: dict[str, Any], fn: str, launch: dict[str, Any], name: str) -> None:
    """The Tune trial of a data-parallel trial: start its TorchTrainer and wait for it.

    `launch`: {"storage", "cpu", "gpu", "max_failures"}, the same for every trial of a sweep.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = C.build_config(spec_config)
    trainer = make_trainer(
        {"config": spec_config, "fn": fn, "out_dir": None},
        workers=cfg.run.workers,
        cpu=launch["cpu"],
        gpu=launch["gpu"],
        name=name,
        storage=launch["storage"],
        max_failures=launch["max_failures"],
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def local_resources(cfg: C.TrialConfig) -> tuple[dict[str, float], list[str]]:
    """Per-worker resources of `harness train` on this machine, and why they do not fit (empty when they do).

    CPU workers share the machine's cores (at most one each); GPU workers take one card each.
    """
    import torch

    from harness.train.device import resolve_device

    workers = cfg.run.workers
    per_worker = {"cpu": min(1.0, (os.cpu_count() or 1) / workers), "gpu": 0.0}
    if resolve_device(cfg.run.device).type != "cuda":
        return per_worker, []
    cards = torch.cuda.device_count()
    problems = []
    if cards < workers:
        problems.append(
            f"run.workers {workers} asks for {workers} GPUs (one per worker); this machine has {cards}"
        )
    return {**per_worker, "gpu": 1.0}, problems


def train_locally(
    tree: dict[str, Any],
    out_dir: Path,
    *,
    resources: dict[str, float],
    resume_from: Path | None,
    max_failures: int,
    logger=None,
) -> None:
    """`harness train` of a data-parallel trial: a local Ray, the TorchTrainer, rank 0 writing `out_dir`."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # the workers' lines once, not twice
    import ray

    cfg = C.build_config(tree)
    if resume_from is None:  # a new run, as with one process (Ray Train would restore the last one)
        shutil.rmtree(out_dir / "ray_train", ignore_errors=True)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        callbacks = [log_epochs(logger.tracking_uri, logger.run_id)] if logger is not None else []
        trainer = make_trainer(
            {
                "config": tree,
                "fn": DEFAULT_TRIAL_FN,
                "out_dir": str(out_dir),
                "resume_from": str(resume_from) if resume_from else None,
            },
            workers=cfg.run.workers,
            cpu=resources["cpu"],
            gpu=resources["gpu"],
            name="ray_train",
            storage=str(out_dir),
            max_failures=max_failures,
            callbacks=callbacks,
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()


def log_epochs(tracking_uri: str, run_id: str):
    """A Ray Train callback that logs rank 0's reports to the MLflow run `run_id`.

    It runs in the Train controller, a process of its own: it opens the store there. (Built on
    call, so that importing this module does not import Ray Train.)
    """
    from ray.train import UserCallback

    from harness.tracking import TrialLogger, open_store

    class LogEpochs(UserCallback):
        def __init__(self) -> None:
            self._logger = None

        def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
            if self._logger is None:
                self._logger = TrialLogger(open_store(tracking_uri), run_id)
            self._logger.log_report(metrics[0])

    return LogEpochs()

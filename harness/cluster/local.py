"""`harness train --set run.workers=N`: a data-parallel trial on this machine, without Tune.

A local Ray and the trial's TorchTrainer (harness.cluster.raytrain); its MLflow run is logged from
the Train controller (`log_epochs`), and the last checkpoint's trial folder is copied into `--out`
at the end. Apart from harness.cluster.raytrain, which every Ray Train worker imports, so that
they load no MLflow.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from harness import config as C
from harness.cluster.raytrain import make_trainer
from harness.cluster.report import entry_metrics, trial_entry
from harness.cluster.transport import TrialSpec
from harness.run.layout import TrialFolder, member_folder
from harness.train.device import resolve_device


def local_resources(cfg: C.TrialConfig) -> tuple[dict[str, float], list[str]]:
    """Per-worker resources of `harness train` on this machine, and why they do not fit (empty when they do).

    CPU workers share the machine's cores (at most one each); GPU workers take one card each.
    """
    import torch

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


# a data-parallel `harness train`'s one trial, as Ray Train's reports name it
LOCAL_TRIAL_KEY, LOCAL_TRIAL_DIR = "train", "trial"


def train_locally(
    tree: dict[str, Any],
    out_dir: Path,
    *,
    resources: dict[str, float],
    resume: bool,
    max_failures: int,
    logger=None,
) -> None:
    """`harness train` of a data-parallel trial: a local Ray, the TorchTrainer, and its last
    checkpoint's trial folder copied into `out_dir` (its checkpoint and artifacts) at the end. With
    `resume`, Ray Train goes on from its own last checkpoint (in `out_dir/ray_train`), else from
    `out_dir`'s checkpoint."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # the workers' lines once, not twice
    import ray

    cfg = C.build_config(tree)
    if not resume:  # a new run, as with one process (Ray Train would restore the last one)
        shutil.rmtree(out_dir / "ray_train", ignore_errors=True)
    spec = TrialSpec(0, LOCAL_TRIAL_KEY, "train", LOCAL_TRIAL_DIR, tree)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        callbacks = [log_epochs(logger.tracking_uri, logger.run_id)] if logger is not None else []
        trainer = make_trainer(
            {"trial": dataclasses.asdict(spec), "resume_from": str(out_dir) if resume else None},
            workers=cfg.run.workers,
            cpu=resources["cpu"],
            gpu=resources["gpu"],
            name="ray_train",
            storage=str(out_dir),
            max_failures=max_failures,
            callbacks=callbacks,
        )
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    with result.checkpoint.as_directory() as root:
        last = member_folder(Path(root), LOCAL_TRIAL_DIR).checkpoint_dir
        target = TrialFolder(out_dir).checkpoint_dir
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(last, target)


def log_epochs(tracking_uri: str, run_id: str):
    """A Ray Train callback that logs rank 0's reports to the MLflow run `run_id`.

    It runs in the Train controller, a process of its own: it opens the store there. (Built on
    call, so that importing this module does not import Ray Train.)
    """
    from ray.train import UserCallback

    from harness.contract import ENV_RESULT_KEY
    from harness.tracking import TrialLogger, open_store

    class LogEpochs(UserCallback):
        def __init__(self) -> None:
            self._logger = None

        def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
            if self._logger is None:
                self._logger = TrialLogger(open_store(tracking_uri), run_id)
            rank0 = metrics[0]
            entry = trial_entry(rank0, LOCAL_TRIAL_KEY)
            self._logger.log_report({**entry_metrics(entry), ENV_RESULT_KEY: rank0.get(ENV_RESULT_KEY)})

    return LogEpochs()

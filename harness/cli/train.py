"""`harness train`: one trial from a config file and/or --set overrides, without Ray.

With `--set run.workers=N` (N > 1) the trial is data-parallel: a local Ray starts it as a Ray
Train TorchTrainer of N workers (harness.cluster.raytrain), one GPU each on CUDA, sharing the cores on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from harness import config as C
from harness.run.layout import TrialFolder
from harness.run.lifecycle import TrialResult
from noise.safeload import UnsafeFileError


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "config", nargs="?", help="trial config YAML (sections data, noise, model, collab, optim, run)"
    )
    C.add_overrides_option(
        parser, "override a dotted key, e.g. --set noise.rate=0.4 (repeatable; values read as YAML)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for checkpoints and artifacts [runs/train-<time>]"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the final metrics to this JSON file")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--experiment", default="harness-train", help="MLflow experiment [harness-train]")
    parser.add_argument(
        "--no-mlflow", action="store_true", help="do not log to MLflow even where it is installed"
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=1,
        help="run.workers > 1: restarts of the worker group after a worker dies, from the last checkpoint [1]",
    )


def main(args: argparse.Namespace) -> int:
    checked = _checked(args)
    if isinstance(checked, int):
        return checked
    cfg, out = checked
    if cfg.run.workers > 1:
        return _data_parallel(cfg, out, args)
    from harness.run.lifecycle import TrialRun, train_trials
    from harness.train.loop import TrainingDiverged

    logger = None if args.no_mlflow else _mlflow_logger(cfg, args.experiment)
    on_epoch = (lambda epoch, metrics, ckpt: logger.log_epoch(epoch, metrics)) if logger else None
    try:
        (result,) = train_trials([TrialRun(cfg, out, on_epoch, resume=args.resume)], progress=True)
    except BaseException as exc:  # the data set would not load, an interrupt, the device failed
        result = TrialResult.failure(exc)
    if not result.state.ok:
        exc = result.error
        if logger:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            logger.finish({}, None, status=status, error=repr(exc))
        # a data, label or checkpoint file that is not where the config says, or one that could run code
        if isinstance(exc, (FileNotFoundError, UnsafeFileError)):
            print(f"harness train: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, TrainingDiverged):
            print(f"harness train: {exc}", file=sys.stderr)
            return 1
        raise exc
    if logger:
        logger.finish(result.metrics, TrialFolder(out).artifacts, status=result.state.run_status)
    return _report(result.metrics, out, args)


def _checked(args: argparse.Namespace) -> tuple[C.TrialConfig, Path] | int:
    """The trial's config and folder, or exit status 2 after saying what is wrong: before anything is
    written (no MLflow run for a trial that cannot start)."""
    try:
        tree = C.load_yaml(args.config) if args.config else {}
        cfg = C.build_config(tree, C.parse_overrides(args.overrides), source=args.config)
    except (C.ConfigError, FileNotFoundError) as exc:
        print(f"harness train: {exc}", file=sys.stderr)
        return 2
    if args.resume and args.out is None:
        print("harness train: --resume needs --out (the folder of the run to continue)", file=sys.stderr)
        return 2
    out = (args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")).resolve()
    from harness.train.device import resolve_device

    try:
        resolve_device(cfg.run.device)
    except RuntimeError as exc:
        print(f"harness train: run.device: {exc}", file=sys.stderr)
        return 2
    for problem in C.label_file_problems([cfg]):
        print(f"harness train: {problem}", file=sys.stderr)
        return 2
    state = TrialFolder(out).state_file
    if args.resume and not state.exists():
        print(f"harness train: no checkpoint to resume at {state}", file=sys.stderr)
        return 2
    return cfg, out


def _report(final: dict, out: Path, args: argparse.Namespace) -> int:
    """Print the final metrics and where the artifacts are; write --json."""
    print("final metrics:")
    for key in sorted(final):
        value = final[key]
        print(f"  {key:<24} {value:.4f}" if isinstance(value, float) else f"  {key:<24} {value}")
    print(f"artifacts: {TrialFolder(out).artifacts}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(final, indent=2, sort_keys=True))
        print(f"metrics written to {args.json}")
    return 0


def _data_parallel(cfg: C.TrialConfig, out: Path, args: argparse.Namespace) -> int:
    """The trial as run.workers Ray Train workers on a local Ray; nothing starts unless they fit."""
    if importlib.util.find_spec("ray") is None:
        print("harness train: run.workers > 1 needs Ray Train: pip install 'ray[train]'", file=sys.stderr)
        return 2
    from harness.cluster.local import local_resources, train_locally

    resources, problems = local_resources(cfg)
    if args.max_failures < 0:
        problems.append(f"--max-failures must be >= 0, got {args.max_failures}")
    for problem in problems:
        print(f"harness train: {problem}", file=sys.stderr)
    if problems:
        return 2
    logger = None if args.no_mlflow else _mlflow_logger(cfg, args.experiment)
    print(
        f"{cfg.run.workers} data-parallel workers on a local Ray, each cpu {resources['cpu']:g}, gpu {resources['gpu']:g}"
    )
    try:
        train_locally(
            C.to_dict(cfg),
            out,
            resources=resources,
            resume=args.resume,
            max_failures=args.max_failures,
            logger=logger,
        )
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C (Ray's handler exits the driver)
        if logger:
            logger.finish({}, None, status="KILLED", error=repr(exc))
        print(
            f"harness train: interrupted; `--resume --out {out}` goes on from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        if logger:
            logger.finish({}, None, status="FAILED", error=repr(exc))
        print(f"harness train: the data-parallel trial failed: {exc}", file=sys.stderr)
        return 1
    artifacts = TrialFolder(out).artifacts
    final = json.loads((artifacts / "metrics.json").read_text())
    if logger:
        logger.catch_up()  # the epochs were logged from the Ray Train controller
        logger.finish(final, artifacts, status="FINISHED")
    return _report(final, out, args)


def _mlflow_logger(cfg: C.TrialConfig, experiment: str):
    """A TrialLogger where MLflow is installed, None where it is not (e.g. a bare GPU box)."""
    try:
        from harness.tracking import TrialLogger
    except ImportError:
        print("MLflow is not installed: metrics go to the console and --json only")
        return None
    logger = TrialLogger.start_single(cfg, experiment=experiment)
    print(f"MLflow: experiment {experiment!r}, run {logger.run_id} ({logger.tracking_uri})")
    return logger

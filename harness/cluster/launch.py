"""What must hold before a sweep starts on Ray: its folder (`--resume`, `--overwrite`), `--mps`, and
resources that some node can give (`check_launch`, `check_resources`); how many data-parallel
trials fit at once.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

from harness.cluster.raytrain import DRIVER_CPU
from harness.config.sweepfile import Sweep
from harness.run.mps import CONTROL
from harness.tracking import read_sweep_state


def experiment_dir(storage: Path, sweep: Sweep) -> Path:
    return Path(storage).resolve() / sweep.name


def check_launch(
    sweep: Sweep,
    *,
    storage: Path,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    mps: bool = False,
) -> list[str]:
    """Problems with how a sweep is to be launched, found before anything starts or is written."""
    problems = []
    exp_dir = experiment_dir(storage, sweep)
    if resume and overwrite:
        problems.append("--resume and --overwrite exclude each other")
    if mps:
        problems.extend(_mps_problems(sweep, address or os.environ.get("RAY_ADDRESS")))
    if address not in (None, "local") and (num_cpus is not None or num_gpus is not None):
        problems.append(
            "--num-cpus/--num-gpus declare the resources of a local Ray; a cluster (--address) has its own"
        )
    if resume:
        state = read_sweep_state(exp_dir)
        if state is None:
            problems.append(
                f"nothing to resume: {exp_dir} holds no run of sweep {sweep.name!r} (run it without --resume)"
            )
        else:
            old, new = set(state.get("trials", {})), {t.key for t in sweep.trials}
            if old != new:
                problems.append(
                    f"the trials differ from the run in {exp_dir} ({len(new - old)} new, {len(old - new)} gone): "
                    "resume needs the same sweep file and --set options (or start anew with --overwrite)"
                )
    elif exp_dir.exists() and any(exp_dir.iterdir()) and not overwrite:
        problems.append(
            f"{exp_dir} holds an earlier run of sweep {sweep.name!r}: pass --resume to finish its unfinished "
            "trials, --overwrite to delete it and start over, or choose another --storage"
        )
    return problems


def _mps_problems(sweep: Sweep, address: str | None) -> list[str]:
    problems = []
    if address not in (None, "local"):
        problems.append(
            "--mps starts CUDA MPS for a local Ray; on a cluster run `nvidia-cuda-mps-control -d` on each node"
        )
    if not 0 < sweep.resources["gpu"] < 1:
        problems.append(
            f"--mps lets trials share a GPU, but resources.gpu is {sweep.resources['gpu']:g}: "
            "give each trial a fraction, e.g. 0.25"
        )

    if shutil.which(CONTROL) is None:
        problems.append(f"--mps needs {CONTROL} (the NVIDIA driver's compute utilities) on PATH")
    return problems


def check_resources(sweep: Sweep, cluster: dict[str, float], *, local: bool) -> int | None:
    """Trials asking for more than the cluster has would wait for ever: say so now.

    Returns how many data-parallel trials fit at once (None for one-process trials): Ray Train
    starts a trial only when all its workers fit, and Tune would otherwise start the drivers of
    every trial, the extra ones waiting (and timing out) for workers (Ray's Train + Tune guide).
    """
    workers = sweep.workers
    per_worker = {"CPU": sweep.resources["cpu"], "GPU": sweep.resources["gpu"]}
    need = {kind: amount * workers for kind, amount in per_worker.items()}
    if workers > 1:
        need["CPU"] += DRIVER_CPU
    short = [kind for kind in need if need[kind] > cluster.get(kind, 0) + 1e-9]
    if short:
        message = "resources do not fit: " + "; ".join(
            f"{kind.lower()}: {_per_trial(kind, workers, per_worker[kind], need[kind])}, "
            f"the Ray cluster has {cluster.get(kind, 0):g}"
            for kind in short
        )
        if local:
            raise ValueError(f"{message} ({'; '.join(_local_fix(kind, need[kind]) for kind in short)})")
        print(f"warning: {message}; trials wait until the cluster grows", file=sys.stderr)
    if workers == 1:
        return None
    return max(1, min(int((cluster.get(kind, 0) + 1e-9) // need[kind]) for kind in need if need[kind] > 0))


def _local_fix(kind: str, need: float) -> str:
    """What makes a local Ray hold one trial: CPUs may be oversubscribed, GPUs must be there."""
    least = math.ceil(need - 1e-9)
    if kind == "CPU":
        return f"--num-cpus {least} lets a local Ray offer them, sharing the cores; or ask for less"
    return f"a local Ray offers the GPUs it finds; --num-gpus {least} only where the machine has them"


def _per_trial(kind: str, workers: int, per_worker: float, total: float) -> str:
    """`2 workers x 1 + 0.01 for the trial's driver = 2.01 per trial`: the whole sum a trial asks for."""
    if workers == 1:
        return f"{total:g} per trial"
    driver = f" + {DRIVER_CPU:g} for the trial's driver" if kind == "CPU" else ""
    return f"{workers} workers x {per_worker:g}{driver} = {total:g} per trial"


def concurrent_trials(asked: int | None, fitting: int | None) -> int | None:
    """Tune's max_concurrent_trials: the sweep file's, and no more data-parallel trials than fit."""
    if fitting is None:
        return asked
    return fitting if asked is None else min(asked, fitting)

"""Trial functions that fail on purpose, for the tests of failure handling (and for drills), and
`gloo_trial`, which runs one trial as data-parallel CPU processes without Ray.

A sweep's trial spec names the function that trains each trial (`trial_fn` of
harness.cluster.tune.run_sweep, `harness.run.trial:run_trial` unless told otherwise); a test names one
of these instead. They live in the installed package, not in tests/, because a Ray worker
imports the function by its name and sees the package, not the test folder. Nothing in the
harness calls them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harness import config as C
from harness.run.trial import run_trial


def failing_after_epoch(seed: int, epoch: int = 1) -> Callable[..., dict[str, float]]:
    """`run_trial`, except that a trial with run.seed == `seed` raises at the end of epoch `epoch`,
    before reporting it (so a retry has no checkpoint of it and fails again)."""

    def trial(cfg: C.TrialConfig, *, on_epoch=None, **kwargs) -> dict[str, float]:
        def report(done: int, metrics: dict[str, float], checkpoint_dir) -> None:
            if cfg.run.seed == seed and done == epoch:
                raise RuntimeError(f"deliberate failure after epoch {done} (run.seed {seed})")
            if on_epoch is not None:
                on_epoch(done, metrics, checkpoint_dir)

        return run_trial(cfg, on_epoch=report, **kwargs)

    return trial


seed5_fails = failing_after_epoch(5)
SEED5_FAILS = "harness.testing:seed5_fails"  # as a trial spec names it: the seed-5 trials raise after epoch 1


def gloo_trial(tree: dict[str, Any], out_dir: Path, world_size: int) -> dict[str, float]:
    """`run_trial` of the config `tree` as `world_size` gloo processes on this machine; rank 0's final metrics.

    The engine's data-parallel path alone, for the equivalence tests: Ray Train starts the
    processes of a real trial (harness.cluster.raytrain), this starts them with torch.multiprocessing.
    Rank 0 writes `out_dir` (checkpoint, artifacts) as in a trial.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (tree, str(out_dir), world_size, port)
    torch.multiprocessing.start_processes(_gloo_worker, args=args, nprocs=world_size, start_method="fork")
    return json.loads((Path(out_dir) / "final_metrics.json").read_text())


def _gloo_worker(rank: int, tree: dict[str, Any], out_dir: str, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        final = run_trial(C.build_config(tree), out_dir=Path(out_dir))
        if rank == 0:
            (Path(out_dir) / "final_metrics.json").write_text(json.dumps(final))
    finally:
        dist.destroy_process_group()

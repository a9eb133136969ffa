"""`harness bench --concurrent N [--mps]`: N independent processes timing the same step on one device
at once, and their total throughput: the number to pick `resources.gpu` by. Under `--mps` they run
as clients of a private CUDA MPS daemon (harness.run.mps), so their kernels can overlap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench.table import describe, print_row
from harness.run.mps import MPSDaemon, MPSUnavailable


def run_concurrent(
    args: argparse.Namespace, topology: str, batch_size: int, mps: MPSDaemon | None = None
) -> dict:
    """N worker processes timing the same step at once; total images over the common wall time.

    With `mps` the workers are clients of that MPS daemon; the record's `mps` says whether its
    server was up while they ran (a worker that cannot reach the daemon runs without it).
    """
    env = {**os.environ, **mps.env()} if mps else None
    with tempfile.TemporaryDirectory() as tmp:
        barrier = Path(tmp) / "barrier"
        barrier.mkdir()
        procs = []
        for i in range(args.concurrent):
            out = Path(tmp) / f"w{i}.json"
            cmd = [
                *(sys.executable, "-m", "harness.cli", "bench", "--device", args.device, "--arch", args.arch),
                *("--batch-size", str(batch_size), "--heads", str(args.heads), "--topologies", topology),
                *("--steps", str(args.steps), "--warmup", str(args.warmup)),
                *("--num-classes", str(args.num_classes), "--concurrent", str(args.concurrent)),
                *("--barrier", str(barrier), "--json", str(out)),
                *(["--no-amp"] if args.no_amp else []),
                *(["--no-cuda-graph"] if args.no_cuda_graph else []),
                *(["--branch-streams"] if args.branch_streams else []),
            ]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env), out))
        try:
            # every worker builds its model and runs its warm-up steps (graph capture), then waits here
            while len(list(barrier.glob("ready-*"))) < len(procs):
                failed = [proc.returncode for proc, _ in procs if proc.poll() not in (None, 0)]
                if failed:
                    raise RuntimeError(f"a concurrent bench worker failed (exit {failed[0]})")
                time.sleep(0.05)
            servers = mps.servers() if mps else []  # every worker has a CUDA context by now
            (barrier / "go").touch()
            records = []
            for proc, out in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"a concurrent bench worker failed (exit {proc.returncode})")
                records.extend(json.loads(out.read_text()))
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    if mps and not servers:
        print(
            "warning: no MPS server was running: the workers were time-sliced, not under MPS", file=sys.stderr
        )
    wall = max(r["t_end"] for r in records) - min(r["t_start"] for r in records)
    if min(r["t_end"] for r in records) < max(r["t_start"] for r in records):
        print("warning: the workers' timed windows did not overlap; raise --steps", file=sys.stderr)
    total = sum(r["batch_size"] * args.steps for r in records)
    merged = dict(records[0])
    merged.update(
        concurrent=args.concurrent,
        mps=bool(servers),
        img_per_s=total / wall,
        img_per_s_per_trial=total / wall / args.concurrent,
        ms_per_step=1000 * wall / args.steps,
        peak_mem_mb=sum(r["peak_mem_mb"] for r in records) if records[0]["peak_mem_mb"] is not None else None,
        per_process_img_per_s=[r["img_per_s"] for r in records],
    )
    steps = total / records[0]["batch_size"]  # every process's steps, over the common wall time
    merged["tflops"] = steps * records[0]["step_gflops"] * 1e9 / wall / 1e12
    peak = records[0].get("peak_tflops")
    merged["peak_fraction"] = merged["tflops"] / peak if peak else None
    return merged


def main_concurrent(
    args: argparse.Namespace, topologies: list[str], *, cuda: bool, records: list[dict]
) -> int:
    """--concurrent N: this process only starts the workers (and MPS); it creates no CUDA context.
    With --pack and --mps, N processes are timed both without and under MPS."""
    print(describe(args, args.device, cuda) + " (each measurement starts the processes anew)", flush=True)
    modes = [False, True] if args.mps and args.pack else [args.mps]
    for mps_on in modes:
        with contextlib.ExitStack() as stack:
            mps = None
            if mps_on:
                try:
                    mps = stack.enter_context(MPSDaemon())
                except MPSUnavailable as exc:
                    print(f"harness bench: cannot start CUDA MPS: {exc}", file=sys.stderr)
                    return 2
            for batch_size in args.batch_size:
                for topology in topologies:
                    try:
                        records.append(run_concurrent(args, topology, batch_size, mps))
                    except RuntimeError as exc:  # a worker failed; its own error is printed above
                        print(f"harness bench: {exc}", file=sys.stderr)
                        return 2
                    print_row(records, heading=f"device: {records[0]['device_name']}")
    return 0

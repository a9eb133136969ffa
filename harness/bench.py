"""`harness bench`: time the training step of each topology on synthetic data.

The timed step is the engine's own: a batch from the GPU-resident loader (random crop and
flip on the device), forward of every head, the collaborative loss, backward and the SGD
update, captured in a CUDA graph where the engine would capture it. Needs torch only.

--concurrent N starts N independent processes on the same device, all timing the same
topology at once, and reports their total throughput: the number to pick `resources.gpu`.
--mps runs them under a private CUDA MPS daemon (harness.mps), so their kernels can overlap.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.collab import TOPOLOGIES, build_training_graph, count_parameters
from harness.engine import FitOptions, resolve_device, setup_training
from harness.loaders import TensorLoader
from harness.mps import MPSDaemon, MPSUnavailable

# (channels, image size) of the synthetic batch by arch family
INPUT_SHAPES = {"cnn_small": (1, 8), "resnet50": (3, 224)}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto [auto]")
    parser.add_argument("--arch", default="resnet32", help="backbone [resnet32]")
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[128], help="one or more batch sizes [128]"
    )
    parser.add_argument("--heads", type=int, default=4, help="heads of the collaborative topologies [4]")
    parser.add_argument(
        "--topologies", default=",".join(TOPOLOGIES), help=f"comma-separated subset of {','.join(TOPOLOGIES)}"
    )
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement [50]")
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first (CUDA graph capture, autotuning) [10]"
    )
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast on CUDA")
    parser.add_argument("--no-cuda-graph", action="store_true", help="eager steps on CUDA")
    parser.add_argument(
        "--concurrent", type=int, default=1, help="N processes at once on the device, total throughput"
    )
    parser.add_argument(
        "--mps",
        action="store_true",
        help="with --concurrent: run the processes under a private CUDA MPS daemon so their kernels overlap",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the records (a JSON list) here")
    # a --concurrent worker: the folder where the workers meet to start their timed steps together
    parser.add_argument("--barrier", type=Path, default=None, help=argparse.SUPPRESS)


def bench_options(*, amp: bool, cuda_graph: bool) -> FitOptions:
    """The trial defaults (the paper's recipe) at a constant lr 0.05: the scheduler is never stepped here."""
    from harness import config as C
    from harness.trial import fit_options

    return fit_options(C.build_config(None, {"optim.lr": 0.05, "run.amp": amp, "run.cuda_graph": cuda_graph}))


def bench_one(
    topology: str,
    *,
    arch: str,
    heads: int,
    batch_size: int,
    device: torch.device,
    steps: int,
    warmup: int,
    num_classes: int = 10,
    amp: bool = True,
    cuda_graph: bool = True,
    barrier: Path | None = None,
) -> dict:
    """Time `steps` training steps of one topology; a record of the JSON schema in the README."""
    heads = 1 if topology == "individual" else heads
    channels, size = INPUT_SHAPES.get(arch, (3, 32))
    baseline_mb = 0.0
    if device.type == "cuda":
        # measure this topology alone: whatever earlier measurements left behind is not its cost
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline_mb = torch.cuda.memory_allocated(device) / 2**20
    torch.manual_seed(0)
    graph = build_training_graph(arch, num_classes, topology, heads, in_channels=channels)
    channels_last = device.type == "cuda"
    graph = graph.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    # enough synthetic images for a few batches; the loader keeps them on the device
    n = batch_size * 4
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,))
    loader = TensorLoader(
        images,
        labels,
        labels,
        batch_size=batch_size,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        augment=True,
        pad=4 if size >= 32 else 1,
        flip=True,
        shuffle=True,
        drop_last=True,
        device=device,
        seed=0,
        channels_last=channels_last,
    )
    opts = bench_options(amp=amp, cuda_graph=cuda_graph)
    step = setup_training(graph, opts, device=device, steps_per_epoch=4, batch_size=batch_size).step

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    if device.type == "cuda":
        static_mb = (
            torch.cuda.memory_allocated(device) / 2**20 - baseline_mb
        )  # weights and data, before any step
    for _ in range(warmup):
        b = next(stream)
        step(b.x, b.y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if barrier is not None:  # concurrent workers: say ready, start the timed steps together
        (barrier / f"ready-{os.getpid()}").touch()
        while not (barrier / "go").exists():
            if not barrier.exists():  # the parent is gone
                raise SystemExit(1)
            time.sleep(0.005)
    t0 = time.perf_counter()
    for _ in range(steps):
        b = next(stream)
        loss, _ = step(b.x, b.y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"{topology}: the loss is not finite; the benchmark step is broken")
    return {
        "topology": topology,
        "heads": heads,
        "arch": arch,
        "batch_size": batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ms_per_step": 1000 * elapsed / steps,
        "img_per_s": batch_size * steps / elapsed,
        # everything this run allocated at its peak: weights, gradients, SGD buffers, data, activations
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 - baseline_mb
        if device.type == "cuda"
        else None,
        "static_mem_mb": static_mb if device.type == "cuda" else None,
        "params": count_parameters(graph),
        "amp": amp and device.type == "cuda",
        "cuda_graph": cuda_graph and device.type == "cuda",
        "concurrent": 1,
        "t_start": time.time() - elapsed,
        "t_end": time.time(),
    }


def init_cuda(device: torch.device) -> None:
    """Create cuBLAS/cuDNN handles and workspaces once, so the first measurement is not charged for them."""
    conv = torch.nn.Conv2d(3, 8, 3).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        conv(torch.randn(2, 3, 8, 8, device=device)).float().sum().backward()
    torch.cuda.synchronize(device)


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
        ms_per_step=1000 * wall / args.steps,
        peak_mem_mb=sum(r["peak_mem_mb"] for r in records) if records[0]["peak_mem_mb"] is not None else None,
        per_process_img_per_s=[r["img_per_s"] for r in records],
    )
    return merged


def format_table(records: list[dict]) -> str:
    head = f"{'topology':<13} {'heads':>5} {'batch':>5} {'procs':>7} {'ms/step':>9} {'img/s':>10} {'peak MB':>9} {'params':>11}"
    lines = [head, "-" * len(head)]
    for r in records:
        mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "n/a"
        procs = f"{r['concurrent']}{' mps' if r.get('mps') else ''}"
        lines.append(
            f"{r['topology']:<13} {r['heads']:>5} {r['batch_size']:>5} {procs:>7} {r['ms_per_step']:>9.2f} "
            f"{r['img_per_s']:>10,.0f} {mem:>9} {r['params']:>11,}"
        )
    return "\n".join(lines)


def print_row(records: list[dict], heading: str | None = None) -> None:
    """The newest record as a table row, under the table's head (and `heading`) for the first."""
    table = format_table(records[-1:]).splitlines()
    if len(records) > 1:
        table = table[-1:]
    elif heading:
        table.insert(0, heading)
    print("\n".join(table), flush=True)


def describe(args: argparse.Namespace, device_name: str, cuda: bool) -> str:
    """The header line: what was timed, on what."""
    return (
        f"harness bench: {args.arch} on {device_name}, torch {torch.__version__}, "
        f"amp={'bf16' if cuda and not args.no_amp else 'off'}, "
        f"cuda_graph={'on' if cuda and not args.no_cuda_graph else 'off'}, {args.steps} steps"
        + (f", {args.concurrent} processes at once" if args.concurrent > 1 else "")
        + (" under MPS" if args.mps else "")
    )


def write_records(records: list[dict], path: Path | None, *, quiet: bool = False) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2))
    if not quiet:
        print(f"records written to {path}")


def main(args: argparse.Namespace) -> int:
    topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    unknown = [t for t in topologies if t not in TOPOLOGIES]
    if unknown:
        print(
            f"harness bench: unknown topology {unknown[0]!r}; choose from {', '.join(TOPOLOGIES)}",
            file=sys.stderr,
        )
        return 2
    try:
        # torch.cuda.is_available creates no CUDA context: a --concurrent parent holds none on the GPU
        device = resolve_device(args.device)
    except RuntimeError as exc:
        print(f"harness bench: --device: {exc}", file=sys.stderr)
        return 2
    if args.mps and (args.concurrent < 2 or device.type != "cuda"):
        print(
            "harness bench: --mps shares a CUDA device among --concurrent N processes (N >= 2)",
            file=sys.stderr,
        )
        return 2
    if args.concurrent > 1 and args.barrier is None:
        return main_concurrent(args, topologies, cuda=device.type == "cuda")
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, args.concurrent)))
    worker = args.barrier is not None
    if device.type == "cuda":
        init_cuda(device)
    if not worker:
        name = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
        )
        print(describe(args, name, device.type == "cuda"), flush=True)
    records = []
    for batch_size in args.batch_size:
        for topology in topologies:
            records.append(
                bench_one(
                    topology,
                    arch=args.arch,
                    heads=args.heads,
                    batch_size=batch_size,
                    device=device,
                    steps=args.steps,
                    warmup=args.warmup,
                    num_classes=args.num_classes,
                    amp=not args.no_amp,
                    cuda_graph=not args.no_cuda_graph,
                    barrier=args.barrier,
                )
            )
            if not worker:
                print_row(records)
    write_records(records, args.json, quiet=worker)
    return 0


def main_concurrent(args: argparse.Namespace, topologies: list[str], *, cuda: bool) -> int:
    """--concurrent N: this process only starts the workers (and MPS); it creates no CUDA context."""
    print(describe(args, args.device, cuda) + " (each measurement starts them anew)", flush=True)
    with contextlib.ExitStack() as stack:
        mps = None
        if args.mps:
            try:
                mps = stack.enter_context(MPSDaemon())
            except MPSUnavailable as exc:
                print(f"harness bench: cannot start CUDA MPS: {exc}", file=sys.stderr)
                return 2
        records = []
        for batch_size in args.batch_size:
            for topology in topologies:
                try:
                    records.append(run_concurrent(args, topology, batch_size, mps))
                except RuntimeError as exc:  # a worker failed; its own error is printed above
                    print(f"harness bench: {exc}", file=sys.stderr)
                    return 2
                print_row(records, heading=f"device: {records[0]['device_name']}")
    write_records(records, args.json)
    return 0

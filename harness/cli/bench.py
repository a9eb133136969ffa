"""`harness bench`: time the training step of each topology on synthetic data (harness.bench.step),
packs of trials beside processes sharing the device (`--pack`, `--concurrent`, `--mps`:
harness.bench.concurrent), or the ImageFolder loader alone (`--loader`: harness.bench.loader).
Needs torch only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from harness.bench.concurrent import main_concurrent
from harness.bench.loader import main_loader
from harness.bench.step import bench_one, init_cuda
from harness.bench.table import describe, format_table, print_row, write_records
from harness.collab import TOPOLOGIES
from harness.train.device import resolve_device


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto [auto]")
    parser.add_argument("--arch", default="resnet32", help="backbone [resnet32]")
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=None, help="one or more batch sizes [128; --loader: 64]"
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
        "--branch-streams",
        action="store_true",
        help="a collaborative graph's sibling branches on streams of their own in the captured step "
        "(run.branch_streams)",
    )
    parser.add_argument(
        "--pack",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="time packs of N trials trained as one step (e.g. --pack 1 2 4 8 16); with --concurrent "
        "(and --mps) the processes are timed in the same run, side by side",
    )
    parser.add_argument(
        "--concurrent", type=int, default=1, help="N processes at once on the device, total throughput"
    )
    parser.add_argument(
        "--mps",
        action="store_true",
        help="with --concurrent: run the processes under a private CUDA MPS daemon so their kernels overlap",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the records (a JSON list) here")
    loader = parser.add_argument_group("--loader: the ImageFolder loader alone, on JPEGs it writes")
    loader.add_argument("--loader", action="store_true", help="time the loader instead of the training step")
    loader.add_argument("--images", type=int, default=640, help="JPEGs in the temporary tree [640]")
    loader.add_argument(
        "--jpeg-size", default="500x375", help="their width x height [500x375, ImageNet-like]"
    )
    loader.add_argument("--classes", type=int, default=4, help="class folders [4]")
    loader.add_argument(
        "--crop", type=int, default=224, help="the loader's output size (data image_size) [224]"
    )
    loader.add_argument("--workers", type=int, default=None, help="DataLoader workers [min(4, CPU cores)]")
    loader.add_argument(
        "--decode", default="workers,device", help="comma-separated decode modes to time [workers,device]"
    )
    # a --concurrent worker: the folder where the workers meet to start their timed steps together
    parser.add_argument("--barrier", type=Path, default=None, help=argparse.SUPPRESS)


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
    if args.loader:
        args.batch_size = args.batch_size or [64]
        return main_loader(args, device)
    args.batch_size = args.batch_size or [128]
    if args.mps and (args.concurrent < 2 or device.type != "cuda"):
        print(
            "harness bench: --mps shares a CUDA device among --concurrent N processes (N >= 2)",
            file=sys.stderr,
        )
        return 2
    if args.pack and (min(args.pack) < 1 or args.barrier is not None):
        print(
            f"harness bench: --pack takes pack sizes >= 1, got {' '.join(map(str, args.pack))}",
            file=sys.stderr,
        )
        return 2
    records: list[dict] = []
    if args.concurrent > 1 and args.barrier is None:
        # the processes first, while this one holds no CUDA context (it creates one for the packs)
        code = main_concurrent(args, topologies, cuda=device.type == "cuda", records=records)
        if code or not args.pack:
            write_records(records, args.json)
            return code
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, args.concurrent)))
    worker = args.barrier is not None
    if device.type == "cuda":
        init_cuda(device)
    if not worker and not records:
        name = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
        )
        print(describe(args, name, device.type == "cuda"), flush=True)
    for batch_size in args.batch_size:
        for topology in topologies:
            for members in args.pack or [1]:
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
                        members=members,
                        branch_streams=args.branch_streams,
                    )
                )
                if not worker:
                    print_row(records)
    if args.pack and args.concurrent > 1:
        print("side by side (x one: img/s over one trial alone, pack 1):")
        print(format_table(records))
    write_records(records, args.json, quiet=worker)
    return 0

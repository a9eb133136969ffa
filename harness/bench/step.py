"""`harness bench`: time the training step of each topology on synthetic data, or the ImageFolder loader.

The timed step is the engine's own: a batch from the GPU-resident loader (random crop and
flip on the device), forward of every head, the collaborative loss, backward and the SGD
update, captured in a CUDA graph where the engine would capture it. Needs torch only.

--pack 1 2 4 8 times packs: N trials (independent graphs, data orders and optimizers) trained as
one step in one process (harness.train.step's pack steps: one CUDA graph, a stream per member), the way
`pack: N` in a sweep file trains them. Each row gives the img/s of all N trials together and per
trial, and the peak memory. With --concurrent N the same run also times N processes at once, and
with --mps N processes under MPS, so the table shows the ways of sharing a GPU side by side.

--concurrent N starts N independent processes on the same device, all timing the same
topology at once, and reports their total throughput: the number to pick `resources.gpu`.
--mps runs them under a private CUDA MPS daemon (harness.run.mps), so their kernels can overlap.

--loader times the ImageFolder loader alone (no model): it writes a tree of ImageNet-sized JPEGs
into a temporary folder and reads it with the trials' `FolderLoader`, a training pass (random
resized crop and flip) and an evaluation pass (resize and center crop) per decode mode.
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

from harness.collab import TOPOLOGIES, build_training_graph
from harness.data.loaders import TensorLoader
from harness.models import count_parameters
from harness.run.mps import MPSDaemon, MPSUnavailable
from harness.train.device import resolve_device
from harness.train.step import make_pack_step
from harness.train.training import FitOptions, setup_training

# (channels, image size) of the synthetic batch by arch family
INPUT_SHAPES = {"cnn_small": (1, 8), "resnet50": (3, 224)}


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


def bench_options(*, amp: bool, cuda_graph: bool) -> FitOptions:
    """The trial defaults (the paper's recipe) at a constant lr 0.05: the scheduler is never stepped here."""
    from harness import config as C
    from harness.run.trial import fit_options

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
    members: int = 1,
    branch_streams: bool = False,
) -> dict:
    """Time `steps` training steps of one topology, or of a pack of `members` trials of it trained
    as one step (each its own graph, seed, data order and optimizer); a record of the JSON schema in
    the README. A step is one step of every member: img/s counts the images of all of them."""
    heads = 1 if topology == "individual" else heads
    channels, size = INPUT_SHAPES.get(arch, (3, 32))
    baseline_mb = 0.0
    if device.type == "cuda":
        # measure this topology alone: whatever earlier measurements left behind is not its cost
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline_mb = torch.cuda.memory_allocated(device) / 2**20
    channels_last = device.type == "cuda"
    graphs = []
    for member in range(members):
        torch.manual_seed(member)
        graph = build_training_graph(arch, num_classes, topology, heads, in_channels=channels)
        graph.use_branch_streams(branch_streams)
        graphs.append(
            graph.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        )
    # enough synthetic images for a few batches; on the device once, shared by the members' loaders
    n = batch_size * 4
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8).to(device)
    labels = torch.randint(0, num_classes, (n,))
    loaders = [
        TensorLoader(
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
            seed=member,
            channels_last=channels_last,
        )
        for member in range(members)
    ]
    opts = bench_options(amp=amp, cuda_graph=cuda_graph)
    trainings = [
        setup_training(
            g, opts, device=device, steps_per_epoch=4, batch_size=batch_size, own_graph=members == 1
        )
        for g in graphs
    ]
    step = make_pack_step(
        [t.step for t in trainings],
        graph=members > 1 and device.type == "cuda" and cuda_graph,  # one trial: its own CUDAGraphStep
        batch_size=batch_size,
    )

    def batches(loader):
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    streams = [batches(loader) for loader in loaders]

    def next_step():
        return step([(b.x, b.y) for b in (next(s) for s in streams)])

    if device.type == "cuda":
        static_mb = (
            torch.cuda.memory_allocated(device) / 2**20 - baseline_mb
        )  # weights and data, before any step
    for _ in range(warmup):
        next_step()
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
        outputs = next_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if not all(torch.isfinite(loss).item() for loss, _ in outputs):
        raise RuntimeError(f"{topology}: the loss is not finite; the benchmark step is broken")
    return {
        "topology": topology,
        "heads": heads,
        "arch": arch,
        "batch_size": batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ms_per_step": 1000 * elapsed / steps,
        "img_per_s": members * batch_size * steps / elapsed,
        "img_per_s_per_trial": batch_size * steps / elapsed,
        # everything this run allocated at its peak: weights, gradients, SGD buffers, data, activations
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 - baseline_mb
        if device.type == "cuda"
        else None,
        "static_mem_mb": static_mb if device.type == "cuda" else None,
        "params": count_parameters(graphs[0]),
        "amp": amp and device.type == "cuda",
        "cuda_graph": cuda_graph and device.type == "cuda",
        "pack": members,
        "branch_streams": branch_streams,
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
    return merged


def format_table(records: list[dict]) -> str:
    """One row per measurement; `x one` is img/s over the same topology's and batch's one trial, when
    timed in the same run (pack 1)."""
    head = (
        f"{'topology':<13} {'heads':>5} {'batch':>5} {'trials':>13} {'ms/step':>9} {'img/s':>10} "
        f"{'per trial':>10} {'x one':>6} {'peak MB':>9} {'params':>11}"
    )
    lines = [head, "-" * len(head)]
    one = {
        (r["topology"], r["batch_size"]): r["img_per_s"]
        for r in records
        if r.get("pack", 1) == 1 and r["concurrent"] == 1
    }
    for r in records:
        mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "n/a"
        if r["concurrent"] > 1:
            how = f"{r['concurrent']} procs" + (" mps" if r.get("mps") else "")
        else:
            how = f"pack {r.get('pack', 1)}" if r.get("pack", 1) > 1 else "1 (alone)"
        base = one.get((r["topology"], r["batch_size"]))
        ratio = f"{r['img_per_s'] / base:.2f}" if base else "-"
        per = r.get("img_per_s_per_trial", r["img_per_s"])
        lines.append(
            f"{r['topology']:<13} {r['heads']:>5} {r['batch_size']:>5} {how:>13} {r['ms_per_step']:>9.2f} "
            f"{r['img_per_s']:>10,.0f} {per:>10,.0f} {ratio:>6} {mem:>9} {r['params']:>11,}"
        )
    return "\n".join(lines)


def print_row(records: list[dict], heading: str | None = None) -> None:
    """The newest record as a table row, under the table's head (and `heading`) for the first."""
    table = format_table(records).splitlines()
    table = table[:2] + table[-1:] if len(records) == 1 else table[-1:]
    if len(records) == 1 and heading:
        table.insert(0, heading)
    print("\n".join(table), flush=True)


def describe(args: argparse.Namespace, device_name: str, cuda: bool) -> str:
    """The header line: what was timed, on what."""
    return (
        f"harness bench: {args.arch} on {device_name}, torch {torch.__version__}, "
        f"amp={'bf16' if cuda and not args.no_amp else 'off'}, "
        f"cuda_graph={'on' if cuda and not args.no_cuda_graph else 'off'}, {args.steps} steps"
        + (", branch streams" if args.branch_streams else "")
        + (f", packs of {' '.join(map(str, args.pack))} trials" if args.pack else "")
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


# --- --loader ------------------------------------------------------------------------------------


def write_jpeg_tree(
    root: Path, *, images: int, classes: int, width: int, height: int, seed: int = 0
) -> list[tuple[str, int]]:
    """An ImageFolder tree `root/train/<class>/*.jpg` of `images` JPEGs of width x height.

    Their content is ImageNet-like for a decoder: smooth gradients and waves under pixel noise,
    saved at quality 92 (about 100 KB at 500x375, where ImageNet's training JPEGs average ~110 KB).
    Returns (path, class) pairs in a fixed order.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x[..., None], y[..., None]
    # one noise field, windows of it per image: drawing fresh noise per image costs more than the encoding
    noise = rng.normal(0, 26, (height + 64, width + 64, 3)).astype(np.float32)
    files = []
    for k in range(images):
        c = k % classes
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, 3) + x * rng.uniform(-0.5, 0.5, 3) + y * rng.uniform(-0.5, 0.5, 3)
        base += 40 * np.sin(x / rng.uniform(5, 40) + rng.uniform(0, 6, 3)) * np.cos(y / rng.uniform(5, 40))
        dy, dx = rng.integers(0, 64, 2)
        base += noise[dy : dy + height, dx : dx + width]
        path = folder / f"{k:05d}.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=92)
        files.append((str(path), c))
    return files


def bench_loader_pass(
    files: list[tuple[str, int]],
    *,
    decode: str,
    augment: bool,
    batch_size: int,
    crop: int,
    workers: int,
    device: torch.device,
) -> dict:
    """One pass of a FolderLoader over `files`; images/s after the first round of batches.

    The first `max(1, workers)` batches are untimed: they include the workers' start, and each
    worker has finished about one batch when they arrive, so what follows is the steady state.
    """
    from harness.data.loaders import FolderLoader

    labels = [c for _, c in files]
    loader = FolderLoader(
        [p for p, _ in files],
        labels,
        labels,
        batch_size=batch_size,
        image_size=crop,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        augment=augment,
        shuffle=augment,
        drop_last=False,
        num_workers=workers,
        device=device,
        seed=0,
        decode=decode,
    )
    # The first batch of each worker is untimed (their start). Workers start one after another, so
    # the early ones run ahead: with few timed batches per worker the rate comes out high (measured,
    # 8 workers on 2 cores: 1,155 img/s over 8 timed batches, 728 over 24). Time 2 per worker at least.
    warm = max(1, workers)
    if len(loader) < warm + 2 * workers or len(loader) <= warm:
        raise ValueError(
            f"--images {len(files)} gives {len(loader)} batches of {batch_size}; the first {warm} are "
            f"untimed and at least {max(1, 2 * workers)} must be timed, so raise --images"
        )
    timed = 0
    for k, batch in enumerate(loader):
        if k == warm - 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        elif k >= warm:
            timed += len(batch.index)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if not torch.isfinite(batch.x).all().item():
        raise RuntimeError(f"{decode}: the loader produced non-finite pixels")
    return {
        "decode": decode,
        "split": "train" if augment else "eval",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": batch_size,
        "crop": crop,
        "workers": workers,
        "images_timed": timed,
        "img_per_s": timed / elapsed,
        "ms_per_batch": 1000 * elapsed * batch_size / timed,
    }


def format_loader_row(r: dict) -> str:
    mode = r["decode"] + (f" ({r['device']})" if r["decode"] == "device" else "")
    return f"{mode:<16} {r['split']:<6} {r['batch_size']:>5} {r['workers']:>7} {r['img_per_s']:>10,.0f} {r['ms_per_batch']:>10.1f}"


LOADER_HEAD = f"{'decode':<16} {'split':<6} {'batch':>5} {'workers':>7} {'img/s':>10} {'ms/batch':>10}"


def main_loader(args: argparse.Namespace, device: torch.device) -> int:
    """--loader: images/s of the FolderLoader alone, per decode mode and split."""
    try:
        width, height = (int(v) for v in args.jpeg_size.lower().split("x"))
    except ValueError:
        print(
            f"harness bench: --jpeg-size must be WIDTHxHEIGHT, e.g. 500x375, got {args.jpeg_size!r}",
            file=sys.stderr,
        )
        return 2
    workers = min(4, os.cpu_count() or 1) if args.workers is None else args.workers
    # workers: PIL in the DataLoader workers; device: the batched decode on the device (nvJPEG on
    # CUDA; on the CPU libjpeg-turbo in the loader's own process, the path as the tests run it)
    modes = [m.strip() for m in args.decode.split(",") if m.strip()]
    if not modes or any(m not in ("workers", "device") for m in modes):
        print(f"harness bench: --decode takes workers and/or device, got {args.decode!r}", file=sys.stderr)
        return 2
    bad = [
        f"{name} must be >= {lo}, got {value}"
        for name, value, lo in (
            ("--images", args.images, 1),
            ("--classes", args.classes, 1),
            ("--crop", args.crop, 1),
            ("--workers", workers, 0),
            ("--jpeg-size", min(width, height), 1),
            *(("--batch-size", b, 1) for b in args.batch_size),
        )
        if value < lo
    ]
    if bad:
        print(f"harness bench: {bad[0]}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    records = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-jpeg-") as tmp:
        t0 = time.perf_counter()
        files = write_jpeg_tree(
            Path(tmp), images=args.images, classes=args.classes, width=width, height=height
        )
        kb = sum(os.path.getsize(p) for p, _ in files) / len(files) / 1e3
        print(
            f"harness bench --loader: {len(files)} JPEGs of {width}x{height} (mean {kb:.0f} KB, {args.classes} "
            f"classes, written in {time.perf_counter() - t0:.1f} s) -> {args.crop}x{args.crop} on {name}, "
            f"torch {torch.__version__}, {workers} DataLoader workers, {torch.get_num_threads()} torch threads",
            flush=True,
        )
        print(LOADER_HEAD + "\n" + "-" * len(LOADER_HEAD), flush=True)
        for batch_size in args.batch_size:
            for decode in modes:
                for augment in (True, False):
                    try:
                        r = bench_loader_pass(
                            files,
                            decode=decode,
                            augment=augment,
                            batch_size=batch_size,
                            crop=args.crop,
                            workers=workers,
                            device=device,
                        )
                    except ValueError as exc:
                        print(f"harness bench: {exc}", file=sys.stderr)
                        return 2
                    r["jpeg_kb"] = kb
                    records.append(r)
                    print(format_loader_row(r), flush=True)
    write_records(records, args.json)
    return 0


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

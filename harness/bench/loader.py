"""`harness bench --loader`: the ImageFolder loader alone (no model), a training pass (random resized
crop and flip) and an evaluation pass (resize and center crop) per decode mode, on a tree of
ImageNet-sized JPEGs it writes (harness.bench.jpeg_tree).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.bench.jpeg_tree import write_jpeg_tree
from harness.bench.table import write_records
from harness.data.loaders import FolderLoader


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

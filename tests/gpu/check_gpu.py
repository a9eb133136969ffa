"""The GPU evidence run (issue: GPU speed), one script for one device call.

Not collected by pytest (the device machine has torch but no pytest, Ray or MLflow):
    PYTHONPATH=. python tests/gpu/check_gpu.py --cifar-root DIR --out DIR
It checks that the CUDA-graph step matches the eager one, prints the `harness bench`
table (batch 128 and 512, eager and graph at 128), four concurrent individual trials
(time-sliced and under CUDA MPS, graph and eager), times real CIFAR-10 epochs of
hierarchical 4-head ResNet-32 through a trial (harness.run.lifecycle), and for ImageNet scale (issue 12): ResNet-50
training img/s on synthetic 224x224 data (`--only resnet50`) and the ImageFolder loader's
images/s with JPEGs decoded on the GPU and by PIL workers (`--only jpeg`).
Every section runs even if an earlier one fails; a failed section prints its traceback.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from harness import config as C
from harness.bench.step import bench_one, bench_options
from harness.bench.table import format_table
from harness.collab import build_training_graph
from harness.train.device import resolve_device
from harness.train.training import setup_training


def section(title):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n=== {title} ===", flush=True)
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            except Exception:
                traceback.print_exc()
                print(f"SECTION FAILED: {title}", flush=True)
            finally:
                print(f"({time.time() - t0:.1f} s)", flush=True)

        return run

    return wrap


@section("CUDA-graph step vs eager step (hierarchical-4 ResNet-32, bf16, 30 steps)")
def check_equivalence(device, steps=30):
    torch.manual_seed(0)
    x = torch.randn(steps, 128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (steps, 128), device=device)
    losses = {}
    finals = {}
    for mode in ("eager", "graph"):
        torch.manual_seed(1)
        graph = build_training_graph("resnet32", 10, "hierarchical", 4).to(
            device, memory_format=torch.channels_last
        )
        opts = bench_options(amp=True, cuda_graph=mode == "graph")
        training = setup_training(graph, opts, device=device, steps_per_epoch=steps, batch_size=128)
        opt, step = training.optimizer, training.step
        out = []
        for i in range(steps):
            for g in opt.param_groups:  # a changing learning rate must reach the captured step
                g["lr"] = 0.05 * (1 - i / steps)
            loss = step(x[i].contiguous(memory_format=torch.channels_last), y[i]).loss
            out.append(loss.item())
        losses[mode] = out
        finals[mode] = torch.cat([p.detach().float().flatten() for p in graph.parameters()])
    rel = [abs(a - b) / abs(a) for a, b in zip(losses["eager"], losses["graph"])]
    drift = (finals["eager"] - finals["graph"]).norm() / finals["eager"].norm()
    print(f"step  1 loss eager {losses['eager'][0]:.5f} graph {losses['graph'][0]:.5f}")
    print(f"step {steps} loss eager {losses['eager'][-1]:.5f} graph {losses['graph'][-1]:.5f}")
    print(f"max relative loss difference {max(rel):.2e}; relative parameter difference {drift:.2e}")
    print("EQUIVALENT within bf16 tolerance" if max(rel) < 2e-2 and drift < 2e-2 else "MISMATCH")


@section("harness bench: ResNet-32, synthetic CIFAR-shaped data, bf16")
def bench_table(device, out: Path, steps: int):
    from harness.bench.step import init_cuda

    if device.type == "cuda":
        init_cuda(device)
    records = []
    for batch in (128, 512):
        for graph_on in [True, False] if batch == 128 else [True]:
            for topo in ("individual", "instances", "simple", "hierarchical"):
                r = bench_one(
                    topo,
                    arch="resnet32",
                    heads=4,
                    batch_size=batch,
                    device=device,
                    steps=steps,
                    warmup=15,
                    amp=True,
                    cuda_graph=graph_on,
                )
                records.append(r)
                print(format_table([r]).splitlines()[-1] + ("" if graph_on else "   (eager)"), flush=True)
    print(format_table(records))
    (out / "bench.json").write_text(json.dumps(records, indent=2))
    by = {(r["topology"], r["batch_size"], r["cuda_graph"]): r for r in records}
    for b in (128, 512):
        ratio = by[("hierarchical", b, True)]["peak_mem_mb"] / by[("instances", b, True)]["peak_mem_mb"]
        print(f"batch {b}: hierarchical / instances peak memory = {ratio:.2f}")


@section("4 concurrent individual trials on one GPU (harness bench --concurrent 4 [--mps])")
def concurrent(out: Path, device: str, steps: int):
    """One trial, four time-sliced, four under a private MPS daemon; CUDA graph, then eager."""
    runs = {}
    for graph in ("graph", "eager"):
        for n, mps in ((1, False), (4, False), (4, True)):
            name = f"{graph}-{n}{'-mps' if mps else ''}"
            cmd = [
                *(sys.executable, "-m", "harness.cli", "bench", "--device", device, "--arch", "resnet32"),
                *("--batch-size", "128", "--topologies", "individual", "--steps", str(steps)),
                *("--warmup", "20", "--concurrent", str(n), "--json", str(out / f"concurrent-{name}.json")),
                *(["--mps"] if mps else []),
                *(["--no-cuda-graph"] if graph == "eager" else []),
            ]
            print(f"$ harness {' '.join(cmd[4:])}", flush=True)
            if subprocess.run(cmd).returncode == 0:
                runs[name] = json.loads((out / f"concurrent-{name}.json").read_text())[0]
    for name, r in runs.items():
        one = runs.get(name.split("-")[0] + "-1")
        ratio = f"{r['img_per_s'] / one['img_per_s']:.2f}x one trial" if one else ""
        print(f"{name:<12} {r['img_per_s']:>10,.0f} img/s  mps={r.get('mps', False)!s:<5}  {ratio}")


@section("real CIFAR-10: hierarchical 4-head ResNet-32, 2 epochs through a trial")
def cifar_epoch(root: Path, out: Path, device):
    cfg = C.build_config(
        {},
        {
            "data.name": "cifar10",
            "data.root": str(root),
            "model.arch": "resnet32",
            "collab.topology": "hierarchical",
            "collab.heads": 4,
            "noise.kind": "symmetric",
            "noise.rate": 0.4,
            "optim.epochs": 2,
            "optim.lr": 0.05,  # at 0.1 this 4-head, 40%-noise run collapses to chance in 2 epochs (see notes)
            "optim.batch_size": 128,
            "run.device": str(device),
        },
    )
    final = train_alone(cfg, out / "cifar-run")
    print(
        f"epoch 2: {final['time/epoch_s']:.2f} s for the epoch (train {final['time/train_s']:.2f} s + eval), "
        f"{final['perf/img_per_s']:.0f} img/s, test acc {final['test/acc']:.4f}"
    )


def train_alone(cfg, folder: Path, log=print) -> dict:
    """One trial trained alone (harness.run.lifecycle); its final metrics, or its error raised."""
    from harness.run.lifecycle import TrialRun, train_trials

    (result,) = train_trials([TrialRun(cfg, folder, log=log)])
    if result.error is not None:
        raise result.error
    return result.metrics


def _harness(args: list[str]) -> int:
    cmd = [sys.executable, "-m", "harness.cli", *args]
    print(f"$ harness {' '.join(args)}", flush=True)
    return subprocess.run(cmd).returncode


@section("ResNet-50 training on one GPU (synthetic 224x224, 1000 classes, bf16)")
def resnet50(out: Path, device: str, steps: int):
    """img/s of one card: with the loader's rate, the time per ImageNet epoch per GPU count (docs/offline-and-cluster.md)."""
    _harness(
        [
            *("bench", "--device", device, "--arch", "resnet50", "--num-classes", "1000"),
            *("--batch-size", "64", "256", "--topologies", "individual,hierarchical", "--heads", "4"),
            *("--steps", str(steps), "--warmup", str(min(10, steps)), "--json", str(out / "resnet50.json")),
        ]
    )


@section("ImageFolder loader alone: JPEGs decoded on the GPU (nvJPEG) vs PIL workers")
def jpeg(out: Path, device: str):
    """4096 ImageNet-like JPEGs, batch 128: 32 batches, the first of each of the 8 workers untimed."""
    _harness(
        [
            *("bench", "--loader", "--device", device, "--images", "4096", "--batch-size", "128"),
            *("--workers", "8", "--json", str(out / "loader.json")),
        ]
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cifar-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default="equiv,bench,concurrent,cifar,resnet50,jpeg")
    p.add_argument("--device", default="cuda", help="cpu for a dry run of the script itself")
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    only = a.only.split(",")
    if "equiv" in only:
        check_equivalence(device, steps=min(30, a.steps))
    if "bench" in only:
        bench_table(device, a.out, a.steps)
    if "concurrent" in only:
        concurrent(a.out, str(device), 400 if device.type == "cuda" else a.steps)
    if "cifar" in only:
        cifar_epoch(a.cifar_root, a.out, device)
    if "resnet50" in only:
        resnet50(a.out, str(device), min(a.steps, 30))
    if "jpeg" in only:
        jpeg(a.out, str(device))


if __name__ == "__main__":
    main()

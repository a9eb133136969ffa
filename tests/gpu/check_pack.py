"""The GPU evidence for packs (issue 18), one script for one device call.

Not collected by pytest (the device machine has torch but no pytest, Ray or MLflow):
    PYTHONPATH=. python tests/gpu/check_pack.py --cifar-root DIR --out DIR [--only equiv,bench,sweep]
- equiv: a pack of 3 ResNet-20 members (seed, lr differ) trained as one CUDA graph on streams
  (harness.train.step.GraphedPack) vs each member's own captured step alone, fp32 and bf16, and
  hierarchical-4 with its sibling branches on streams (run.branch_streams) vs without: the loss of
  every step and the final weights.
- bench: `harness bench --pack 1 2 4 8 16` on ResNet-32 batch 128 for individual and hierarchical-4,
  beside 4 processes time-sliced and under MPS, and hierarchical-4 with branch streams.
- sweep: sweeps/cifar10-gpu-short.yaml with seeds [0, 1] and pack: 4 exported and trained by
  `harness run` (packed), the wall time of the whole sweep and each trial's test accuracy; the
  unpacked seed-0 results of the same file are in results/cifar10-gpu-short/ (an H200).
Every section runs even if an earlier one fails; `--device cpu` is a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from check_gpu import _harness, section

from harness.bench.step import bench_options
from harness.collab import build_training_graph
from harness.train.device import resolve_device
from harness.train.step import make_pack_step
from harness.train.training import setup_training


def _train(members, x, y, *, lrs, amp: bool, packed: bool, device, branch_streams=False):
    """Train `members` graphs (seeds 0..n-1) on the same batches, as one pack or each alone;
    (per-step losses per member, final flat weights per member)."""
    steps, batch = x.shape[0], x.shape[1]
    x = [x[i].contiguous(memory_format=torch.channels_last) for i in range(steps)]
    graphs, trainings = [], []
    for m in range(members["n"]):
        torch.manual_seed(m)
        graph = build_training_graph(members["arch"], 10, members["topology"], members["heads"])
        graph.use_branch_streams(branch_streams)
        graphs.append(graph.to(device, memory_format=torch.channels_last))
        opts = bench_options(amp=amp, cuda_graph=True)
        opts.optim.lr = lrs[m]
        trainings.append(
            setup_training(
                graphs[-1], opts, device=device, steps_per_epoch=steps, batch_size=batch, own_graph=not packed
            )
        )
    losses = [[] for _ in graphs]
    if packed:
        step = make_pack_step([t.step for t in trainings], graph=device.type == "cuda", batch_size=batch)
        for i in range(steps):
            for m, out in enumerate(step([(x[i], y[i])] * len(graphs))):
                losses[m].append(out.loss.item())
    else:
        for m, t in enumerate(trainings):
            for i in range(steps):
                loss = t.step(x[i], y[i]).loss
                losses[m].append(loss.item())
    weights = [torch.cat([p.detach().float().flatten() for p in g.parameters()]) for g in graphs]
    return losses, weights


@section("packs: one CUDA graph on streams vs each member's own graph (ResNet-20, 3 members, 20 steps)")
def check_pack_equivalence(device, steps: int = 20):
    torch.manual_seed(0)
    x = torch.randn(steps, 128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (steps, 128), device=device)
    lrs = [0.05, 0.1, 0.02]
    for topology, heads in (("individual", 1), ("hierarchical", 4)):
        members = {"n": 3, "arch": "resnet20", "topology": topology, "heads": heads}
        for amp in (False, True):
            alone = _train(members, x, y, lrs=lrs, amp=amp, packed=False, device=device)
            pack = _train(members, x, y, lrs=lrs, amp=amp, packed=True, device=device)
            loss_diff = max(abs(a - b) for la, lb in zip(alone[0], pack[0]) for a, b in zip(la, lb))
            weight_diff = max((a - b).abs().max().item() for a, b in zip(alone[1], pack[1]))
            print(
                f"{topology}-{heads} {'bf16' if amp else 'fp32'}: max |loss alone - loss in pack| {loss_diff:.3e}, "
                f"max |weight difference| {weight_diff:.3e}: {'EXACT' if loss_diff == 0 and weight_diff == 0 else 'DIFFERS'}"
            )
    members = {"n": 1, "arch": "resnet32", "topology": "hierarchical", "heads": 4}
    for amp in (False, True):
        plain = _train(members, x, y, lrs=[0.05], amp=amp, packed=False, device=device)
        streams = _train(members, x, y, lrs=[0.05], amp=amp, packed=False, device=device, branch_streams=True)
        loss_diff = max(abs(a - b) for a, b in zip(plain[0][0], streams[0][0]))
        weight_diff = (plain[1][0] - streams[1][0]).abs().max().item()
        print(
            f"hierarchical-4 ResNet-32 branch streams {'bf16' if amp else 'fp32'}: max |loss diff| {loss_diff:.3e}, "
            f"max |weight diff| {weight_diff:.3e}: {'EXACT' if loss_diff == 0 and weight_diff == 0 else 'DIFFERS'}"
        )


@section("harness bench --pack 1 2 4 8 16 beside 4 processes (time-sliced, MPS); ResNet-32 batch 128")
def pack_bench(out: Path, device: str, steps: int):
    common = ["--device", device, "--arch", "resnet32", "--batch-size", "128", "--steps", str(steps)]
    _harness(
        [
            "bench",
            *common,
            *("--topologies", "individual,hierarchical", "--pack", "1", "2", "4", "8", "16"),
            *("--concurrent", "4", "--mps", "--json", str(out / "pack-bench.json")),
        ]
    )
    _harness(
        [
            "bench",
            *common,
            *("--topologies", "hierarchical", "--pack", "1", "4", "--branch-streams"),
            *("--json", str(out / "pack-bench-branch-streams.json")),
        ]
    )


@section("sweeps/cifar10-gpu-short.yaml, seeds [0, 1], pack: 4, through harness run")
def packed_sweep(root: Path, out: Path, device: str, epochs: int | None):
    folder = out / "gpu-short-pack4"
    overrides = ["--set", f"data.root={root}"] + (["--set", f"optim.epochs={epochs}"] if epochs else [])
    sweep = Path("sweeps/cifar10-gpu-short.yaml").read_text().replace("seeds: [0]", "seeds: [0, 1]")
    packed = out / "gpu-short-pack4.yaml"
    packed.write_text(sweep + "pack: 4\n")
    _harness(["sweep", str(packed), "--export", str(folder), *overrides])
    t0 = time.time()
    _harness(["run", str(folder), "--device", device, "--data-root", str(root)])
    print(f"the whole sweep (8 trials, packed): {time.time() - t0:.0f} s wall")
    for trial in sorted(p for p in folder.iterdir() if p.is_dir()):
        metrics = (
            json.loads((trial / "metrics.json").read_text()) if (trial / "metrics.json").is_file() else {}
        )
        print(
            f"{trial.name:<45} test/acc {metrics.get('test/acc', float('nan')):.4f}  "
            f"epoch {metrics.get('time/epoch_s', float('nan')):.2f} s"
        )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cifar-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default="equiv,bench,sweep")
    p.add_argument("--device", default="cuda", help="cpu for a dry run of the script itself")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--epochs", type=int, default=None, help="optim.epochs of the sweep [the file's 12]")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    only = a.only.split(",")
    if "equiv" in only:
        check_pack_equivalence(device, steps=min(20, a.steps))
    if "bench" in only:
        pack_bench(a.out, str(device), a.steps)
    if "sweep" in only:
        packed_sweep(a.cifar_root, a.out, str(device), a.epochs)


if __name__ == "__main__":
    main()

"""The evidence run for the training recipe (issue: collaborative runs must learn), one device call.

Not collected by pytest (the device machine has torch but no pytest, Ray or MLflow):
    PYTHONPATH=. python tests/gpu/check_recipe.py --cifar-root DIR --out DIR [--only table,epochs]

- table: real CIFAR-10, ResNet-32, SGD at a constant lr 0.1 (the paper's recipe, no warm-up), one
  epoch, noise 0 / 0.4 / 0.8 x individual, instances-4, simple-4, hierarchical-4, with the plain He
  init (model.zero_init_residual=false, the recipe before the fix) and with the defaults.
- epochs: the defaults (cosine from lr 0.1) at 40 % symmetric noise, the four topologies, a few epochs.
- gap: why collaborative graphs trail individual training early: one epoch at 40 % noise, constant
  lr 0.1, instances-4 and hierarchical-4 with beta = 1 (labels only, no soft target); beta 0.5 and
  individual training are the table's rows.
- archs: the other residual archs of the paper-style sweeps (ResNet-110, WRN-28-10), one epoch at
  40 % noise and constant lr 0.1: ResNet-110 hierarchical-4, WRN individual and hierarchical-4 (also
  with a one-epoch ramp).
- ramp: hierarchical-4 with the soft target ramped in over 2 of 5 epochs (defaults otherwise).
- ramp-graph: the captured CUDA-graph step follows a ramping soft weight like the eager step.
Each row is printed as it finishes; every result also goes to OUT/<section>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from check_gpu import train_alone

from harness import config as C
from harness.train.device import resolve_device

TOPOLOGIES = [("individual", 1), ("instances", 4), ("simple", 4), ("hierarchical", 4)]
# one epoch at the paper's lr 0.1, held constant (a step schedule whose first milestone never comes)
ONE_EPOCH_AT_LR_0_1 = {
    "optim.epochs": 1,
    "optim.lr": 0.1,
    "optim.schedule": "step",
    "optim.milestones": [100],
}
NOISE_40 = {"noise.kind": "symmetric", "noise.rate": 0.4}
COLUMNS = ("test/acc", "test/acc_ensemble", "train/loss", "train/collapsed", "train/pred_top_share")


def quiet(_msg: str) -> None:
    pass


def trial(args, out: Path, name: str, overrides: dict, *, log=quiet) -> dict:
    base = {
        "data.name": "cifar10",
        "data.root": str(args.cifar_root),
        "data.train_subset": args.train_subset,
        "model.arch": args.arch,
        "run.device": args.device,
        "run.checkpoint_every": 0,
    }
    cfg = C.build_config({}, {**base, **overrides})
    t0 = time.time()
    final = train_alone(cfg, out / name, log=log)
    final["wall_s"] = time.time() - t0
    return final


def row(label: str, m: dict) -> str:
    return (
        f"{label:<40} test {m['test/acc']:.4f}  ens {m['test/acc_ensemble']:.4f}  loss {m['train/loss']:8.3f}  "
        f"collapsed {m['train/collapsed']:.0f}  top-share train {m['train/pred_top_share']:.2f} "
        f"test {m['test/pred_top_share']:.2f}  ({m['wall_s']:.0f} s)"
    )


def table(args, out: Path) -> None:
    print("\n=== one epoch at constant lr 0.1: plain He init (before) vs zero-init residual (after) ===")
    results = []
    for rate in (0.0, 0.4, 0.8):
        for zero_init in (False, True):
            for topology, heads in TOPOLOGIES:
                overrides = {
                    "noise.kind": "symmetric" if rate else "none",
                    "noise.rate": rate,
                    "collab.topology": topology,
                    "collab.heads": heads,
                    "model.zero_init_residual": zero_init,
                    **ONE_EPOCH_AT_LR_0_1,
                }
                label = f"noise {rate:.1f} {'zero-init' if zero_init else 'He init  '} {topology}-{heads}"
                m = trial(args, out, f"table-{rate}-{zero_init}-{topology}", overrides)
                print(row(label, m), flush=True)
                results.append({"noise": rate, "zero_init_residual": zero_init, "topology": topology, **m})
    (out / "table.json").write_text(json.dumps(results, indent=1))


def epochs(args, out: Path) -> None:
    print(f"\n=== defaults, 40 % symmetric noise, {args.epochs} epochs (cosine from lr 0.1) ===")
    results = []
    for topology, heads in TOPOLOGIES:
        overrides = {
            **NOISE_40,
            "collab.topology": topology,
            "collab.heads": heads,
            "optim.epochs": args.epochs,
        }
        print(f"-- {topology}-{heads}", flush=True)
        m = trial(args, out, f"epochs-{topology}", overrides, log=lambda s: print("  " + s, flush=True))
        results.append({"topology": topology, **m})
    for r in results:
        print(row(f"{r['topology']}", r))
    (out / "epochs.json").write_text(json.dumps(results, indent=1))


def gap(args, out: Path) -> None:
    print("\n=== one epoch at constant lr 0.1, 40 % noise: the objective's share of the early gap ===")
    results = []
    for topology, heads in [("instances", 4), ("hierarchical", 4)]:
        for beta in (1.0,):  # beta 0.5 and individual training: the table's rows
            overrides = {
                **NOISE_40,
                **ONE_EPOCH_AT_LR_0_1,
                "collab.topology": topology,
                "collab.heads": heads,
                "collab.beta": beta,
            }
            m = trial(args, out, f"gap-{topology}-{beta}", overrides)
            print(row(f"{topology}-{heads} beta {beta}", m), flush=True)
            results.append({"topology": topology, "beta": beta, **m})
    (out / "gap.json").write_text(json.dumps(results, indent=1))


def archs(args, out: Path) -> None:
    print("\n=== other residual archs: one epoch at constant lr 0.1, 40 % noise ===")
    results = []
    runs = [("resnet110", "hierarchical", 4, 0)]
    runs += [
        ("wrn28_10", "individual", 1, 0),
        ("wrn28_10", "hierarchical", 4, 0),
        ("wrn28_10", "hierarchical", 4, 1),
    ]
    for arch, topology, heads, ramp in runs:
        overrides = {
            **NOISE_40,
            **ONE_EPOCH_AT_LR_0_1,
            "model.arch": arch,
            "collab.topology": topology,
            "collab.heads": heads,
            "collab.soft_rampup_epochs": ramp,
        }
        m = trial(args, out, f"arch-{arch}-{topology}-{ramp}", overrides)
        print(row(f"{arch} {topology}-{heads} ramp {ramp}", m), flush=True)
        results.append({"arch": arch, "topology": topology, "soft_rampup_epochs": ramp, **m})
    (out / "archs.json").write_text(json.dumps(results, indent=1))


def ramp(args, out: Path) -> None:
    print(f"\n=== hierarchical-4, soft target ramped in over 2 of {args.epochs} epochs, 40 % noise ===")
    overrides = {
        **NOISE_40,
        "collab.topology": "hierarchical",
        "collab.heads": 4,
        "collab.soft_rampup_epochs": 2,
        "optim.epochs": args.epochs,
    }
    m = trial(args, out, "ramp-hierarchical", overrides, log=lambda s: print("  " + s, flush=True))
    print(row("hierarchical-4 ramp 2", m))
    (out / "ramp.json").write_text(json.dumps(m, indent=1))


def ramp_graph(args, out: Path, steps: int = 20) -> None:
    print("\n=== CUDA-graph step vs eager step under a ramping soft weight (hierarchical-4, bf16) ===")

    from harness.bench.step import bench_options
    from harness.collab import build_training_graph
    from harness.train.training import setup_training

    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(steps, 128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (steps, 128), device=device)
    losses = {}
    for mode in ("eager", "graph"):
        torch.manual_seed(1)
        graph = build_training_graph("resnet32", 10, "hierarchical", 4).to(device)
        opts = bench_options(amp=True, cuda_graph=mode == "graph")
        opts.collab.soft_rampup_epochs = 1
        training = setup_training(graph, opts, device=device, steps_per_epoch=steps // 2, batch_size=128)
        losses[mode] = []
        for i in range(steps):  # the weight ramps from 0 to 1 over the first half, as fit drives it
            loss = training.step(x[i], y[i]).loss
            losses[mode].append(loss.item())
            training.scheduler.step()
            training.after_step()
    rel = max(abs(a - b) / abs(a) for a, b in zip(losses["eager"], losses["graph"]))
    print(f"eager {[round(v, 3) for v in losses['eager'][::4]]}")
    print(f"graph {[round(v, 3) for v in losses['graph'][::4]]}")
    print(f"max relative loss difference {rel:.2e}: " + ("EQUIVALENT" if rel < 2e-2 else "MISMATCH"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cifar-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default="table,epochs,gap,archs,ramp,ramp-graph")
    p.add_argument("--device", default="cuda", help="cpu for a dry run of the script itself")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-subset", type=int, default=None, help="images per class (dry runs)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    only = args.only.split(",")
    if "table" in only:
        table(args, args.out)
    if "epochs" in only:
        epochs(args, args.out)
    if "gap" in only:
        gap(args, args.out)
    if "archs" in only:
        archs(args, args.out)
    if "ramp" in only:
        ramp(args, args.out)
    if "ramp-graph" in only:
        ramp_graph(args, args.out)


if __name__ == "__main__":
    main()

"""The evidence run for the training recipe (issue: collaborative runs must learn), one device call.

Not collected by pytest (the device machine has torch but no pytest, Ray or MLflow):
    PYTHONPATH=. python tests/gpu/check_recipe.py --cifar-root DIR --out DIR [--only table,epochs]

- table: real CIFAR-10, ResNet-32, SGD at a constant lr 0.1 (the paper's recipe, no warm-up), one
  epoch, noise 0 / 0.4 / 0.8 x individual, instances-4, simple-4, hierarchical-4, with the plain He
  init (model.zero_init_residual=false, the recipe before the fix) and with the defaults.
- epochs: the defaults (cosine from lr 0.1) at 40 % symmetric noise, the four topologies, a few epochs.
Each row is printed as it finishes; every result also goes to OUT/<section>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness import config as C
from harness.engine import resolve_device
from harness.trial import run_trial

TOPOLOGIES = [("individual", 1), ("instances", 4), ("simple", 4), ("hierarchical", 4)]
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
    final = run_trial(cfg, out_dir=out / name, log=log)
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
                    "optim.epochs": 1,
                    "optim.lr": 0.1,
                    "optim.schedule": "step",
                    "optim.milestones": [100],  # constant lr over the one epoch
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
            "noise.kind": "symmetric",
            "noise.rate": 0.4,
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cifar-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", default="table,epochs")
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


if __name__ == "__main__":
    main()

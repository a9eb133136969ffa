"""How `harness bench` shows its records: a table row per measurement, the header line, the JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def format_table(records: list[dict]) -> str:
    """One row per measurement; `x one` is img/s over the same topology's and batch's one trial, when
    timed in the same run (pack 1); TFLOP/s are counted step FLOPs (harness.train.cost) per second, all
    trials', and `% peak` their share of the card's dense bf16 peak where the card is known."""
    head = (
        f"{'topology':<13} {'heads':>5} {'batch':>5} {'trials':>13} {'ms/step':>9} {'img/s':>10} "
        f"{'per trial':>10} {'x one':>6} {'TFLOP/s':>8} {'% peak':>7} {'peak MB':>9} {'params':>11}"
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
        tflops = f"{r['tflops']:.2f}" if r.get("tflops") is not None else "n/a"
        share = f"{100 * r['peak_fraction']:.1f}" if r.get("peak_fraction") is not None else "unknown"
        lines.append(
            f"{r['topology']:<13} {r['heads']:>5} {r['batch_size']:>5} {how:>13} {r['ms_per_step']:>9.2f} "
            f"{r['img_per_s']:>10,.0f} {per:>10,.0f} {ratio:>6} {tflops:>8} {share:>7} {mem:>9} {r['params']:>11,}"
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

"""`harness sweep FILE` and `harness validate FILE`: read and validate a sweep file (harness.config.sweepfile),
then list its trials (`--dry-run`), export them for `harness run` (`--export DIR`, harness.run.export)
or run them under Ray Tune (harness.cluster.tune) and print how each ended.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import config as C
from harness.config.sweepfile import Sweep, load_sweep
from harness.run.outcome import print_problems


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "validate":
        parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="sweep file(s) to check")
        parser.add_argument(
            "--keys",
            action="store_true",
            help="print the config reference: every key, its default and what it allows",
        )
    else:
        parser.add_argument("file", type=Path, metavar="FILE", help="sweep file, e.g. sweeps/quickstart.yaml")
    C.add_overrides_option(
        parser, "set a config key in every trial, over base (e.g. --set data.root=/data/cifar); repeatable"
    )
    if name == "validate":
        return
    parser.add_argument(
        "--dry-run", action="store_true", help="list the trials (name and overrides) and start nothing"
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the trials into DIR instead of running them, for `harness run DIR` on a machine with "
        "torch alone (then `harness sync DIR`); exporting again adds only missing trials",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run of this sweep: unfinished trials go on from their checkpoints",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run's Ray folder and start over (its MLflow runs stay)",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=Path("ray_results"),
        help="Ray results folder; the sweep's is STORAGE/<name> [./ray_results]",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on, e.g. 10.0.0.1:6379 [$RAY_ADDRESS, else a local Ray]; "
        "a cluster with token auth also needs RAY_AUTH_MODE=token and its token "
        "(RAY_AUTH_TOKEN or ~/.ray/auth_token)",
    )
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs a local Ray offers [all]")
    parser.add_argument("--num-gpus", type=float, default=None, help="GPUs a local Ray offers [all it finds]")
    parser.add_argument(
        "--mps",
        action="store_true",
        help="local Ray only: trials sharing a GPU (resources.gpu < 1) run under a private CUDA MPS daemon, "
        "so their kernels overlap instead of taking turns",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="retries of a failed trial from its last checkpoint [the file's max_failures, else 1]",
    )


def main(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return _validate(args)
    return _sweep(args)


def _load(path: Path, raw_overrides: list[str]) -> Sweep | None:
    """The validated sweep, or None after printing every problem to stderr."""
    try:
        sweep = load_sweep(path, C.parse_overrides(raw_overrides))
    except C.ConfigError as exc:
        return _print_problems(exc.source or str(path), exc.problems)
    except FileNotFoundError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return None
    from harness.config import label_file_problems

    problems = label_file_problems([t.config for t in sweep.trials])
    return _print_problems(sweep.source, problems) if problems else sweep


def _print_problems(source: str, problems: list[C.Problem]) -> None:
    print_problems(source, problems, "nothing was started")


def _describe(sweep: Sweep) -> str:
    res = ", ".join(f"{k} {v:g}" for k, v in sweep.resources.items()) + " per trial"
    if sweep.workers > 1:
        res = f"{sweep.workers} data-parallel workers per trial, each {res.removesuffix(' per trial')}"
    conc = f", at most {sweep.max_concurrent} at once" if sweep.max_concurrent else ""
    packs = ""
    if sweep.pack > 1:
        res = res.replace("per trial", "per pack")
        packed = sum(p.size for p in sweep.packs if p.size > 1)
        packs = f"; {packed} of them in {sum(p.size > 1 for p in sweep.packs)} packs of up to {sweep.pack}"
    return (
        f"{sweep.source}: ok: sweep {sweep.name!r}, {len(sweep.trials)} trials "
        f"({sweep.grid_points} grid points x {len(sweep.seeds)} seeds){packs}, {res}{conc}"
    )


def _listing(sweep: Sweep) -> list[str]:
    """The trials, one line each (index, name, what the grid and seed set); with `pack:`, by pack."""
    width = max(len(t.name) for t in sweep.trials)

    def line(t) -> str:
        overrides = " ".join(
            f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in t.overrides.items()
        )
        return f"  {t.index:>3}  {t.name:<{width}}  {overrides}"

    if sweep.pack <= 1:
        return [line(t) for t in sweep.trials]
    from harness.config.packs import differences, unpackable

    lines = []
    for pack in sweep.packs:
        members = [sweep.trials[i] for i in pack.positions]
        if pack.size > 1:
            varied = differences([t.config for t in members])
            lines.append(
                f"pack {pack.id}: {pack.size} trials as one step (they differ in {', '.join(varied)})"
            )
        else:
            why = unpackable(members[0].config) or "no other trial shares its computation"
            lines.append(f"pack {pack.id}: trains alone ({why})")
        lines += [line(t) for t in members]
    return lines


def _validate(args: argparse.Namespace) -> int:
    if args.keys:
        from harness.config.reference import reference

        print(reference(), end="")
    elif not args.files:
        print(
            "harness validate: give sweep file(s) to check, or --keys for the config reference",
            file=sys.stderr,
        )
        return 2
    status = 0
    for path in args.files:
        sweep = _load(path, args.overrides)
        if sweep is None:
            status = 2
        else:
            print(_describe(sweep))
    return status


def _sweep(args: argparse.Namespace) -> int:
    sweep = _load(args.file, args.overrides)
    if sweep is None:
        return 2
    if args.max_failures is not None and args.max_failures < 0:
        print(f"--max-failures must be >= 0, got {args.max_failures}", file=sys.stderr)
        return 2
    print(_describe(sweep))
    if args.export is not None:
        return _export(sweep, args)
    if args.dry_run:
        print("\n".join(_listing(sweep)))
        return 0

    from harness.cluster.launch import check_launch
    from harness.cluster.outcomes import format_summary
    from harness.cluster.tune import run_sweep

    launch = dict(
        storage=args.storage,
        resume=args.resume,
        overwrite=args.overwrite,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        mps=args.mps,
    )
    problems = check_launch(sweep, **launch)
    if problems:
        for problem in problems:
            print(f"harness sweep: {problem}", file=sys.stderr)
        return 2
    from harness.run.mps import MPSUnavailable

    try:
        outcome = run_sweep(sweep, **launch, max_failures=args.max_failures)
    except (ValueError, MPSUnavailable) as exc:  # resources that no node has; an MPS daemon that won't start
        print(f"harness sweep: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(
            f"harness sweep: cannot reach the Ray cluster: {exc}. Is it running, and if it checks tokens, are "
            "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token) set here?",
            file=sys.stderr,
        )
        return 2
    print(format_summary(outcome, sweep.metric))
    return outcome.exit_code


def _export(sweep: Sweep, args: argparse.Namespace) -> int:
    """`--export DIR`: the trials as folders for `harness run` (harness.run.export), nothing run."""
    launch = {
        "--dry-run": args.dry_run,
        "--resume": args.resume,
        "--overwrite": args.overwrite,
        "--address": args.address,
        "--num-cpus": args.num_cpus,
        "--num-gpus": args.num_gpus,
        "--mps": args.mps,
        "--max-failures": args.max_failures,
    }
    clash = [flag for flag, value in launch.items() if value not in (None, False)]
    if clash:
        print(f"harness sweep: --export runs nothing; {', '.join(clash)} do not apply", file=sys.stderr)
        return 2
    if sweep.workers > 1:
        print(
            f"harness sweep: resources.workers: {sweep.workers} data-parallel workers per trial need Ray Train; "
            "`harness run` trains each trial as one process (export a sweep without workers, or run this one "
            "with `harness sweep`)",
            file=sys.stderr,
        )
        return 2
    from harness.run.export import ExportError, write_export

    try:
        added, kept = write_export(
            sweep, C.load_yaml(args.file), C.parse_overrides(args.overrides), args.export
        )
    except ExportError as exc:
        print(f"harness sweep: {exc}", file=sys.stderr)
        return 2
    root = args.export.resolve()
    kept_note = f" ({len(kept)} already there, left as they are)" if kept else ""
    print(f"exported {len(added)} trial(s) to {root}{kept_note}")
    print(
        f"next: copy {args.export} to the machine that trains; there, `harness run {args.export}` "
        f"(with torch alone: `PYTHONPATH=<checkout> python3 -m harness.cli run {args.export}`); "
        f"copy it back, then `harness sync {args.export}`"
    )
    return 0

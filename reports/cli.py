"""`harness report`: the comparison report of a sweep's MLflow runs (options, and what it prints)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.contract import TEST_ACC
from reports.build import DEPRECATED_MODE, DEPRECATED_MODE_NOTE, build_report
from reports.frame import MODES


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_report_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        return run_report(args)
    except ValueError as exc:  # unknown experiment or run, no runs, unknown metric: the user can fix it
        print(f"harness report: {exc}", file=sys.stderr)
        return 2


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``harness report`` options to ``parser`` (a subcommand parser) and return it."""
    parser.add_argument(
        "--experiment", metavar="NAME", help="MLflow experiment (default: that of the latest sweep)"
    )
    parser.add_argument(
        "--sweep",
        metavar="RUN_ID",
        dest="sweep_run_id",
        help="the sweep's parent run id (default: the latest sweep parent run)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        dest="out_dir",
        help="output folder (default: ./reports-out/<experiment>/)",
    )
    parser.add_argument("--metric", default=TEST_ACC, help=f"metric to compare (default: {TEST_ACC})")
    parser.add_argument(
        "--mode",
        choices=(*MODES, DEPRECATED_MODE),
        metavar="{" + ",".join(MODES) + "}",
        default="last",
        help="the main table's metric at the last epoch or best over epochs, an oracle chosen on the test "
        "set (default: last; 'final' is its deprecated old name); the report shows both and the "
        "noisy-validation choice beside them anyway",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        dest="tracking_uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)",
    )
    parser.add_argument(
        "--latex",
        action="store_true",
        help="also write tables.tex (booktabs tables to paste into a paper; needs \\usepackage{booktabs})",
    )
    parser.add_argument(
        "--no-log",
        action="store_false",
        dest="log_to_mlflow",
        help="do not log the report as artifacts on the sweep's parent run",
    )
    return parser


def run_report(args: argparse.Namespace) -> int:
    """Build the report from parsed ``add_report_arguments`` options, print where it is, return 0.

    ValueError (unknown experiment or run, no runs) propagates for the CLI to turn into exit status 2.
    """
    mode = args.mode
    if mode == DEPRECATED_MODE:
        print(f"note: {DEPRECATED_MODE_NOTE}", file=sys.stderr)
        mode = "last"
    result = build_report(
        experiment=args.experiment,
        sweep_run_id=args.sweep_run_id,
        out_dir=args.out_dir,
        metric=args.metric,
        mode=mode,
        tracking_uri=getattr(args, "tracking_uri", None),
        log_to_mlflow=getattr(args, "log_to_mlflow", True),
        latex=getattr(args, "latex", False),
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"Report for sweep {result.sweep_name} (experiment {result.experiment}) in {result.out_dir.resolve()}/"
    )
    for name in ("report.html", "report.md"):
        print(f"  {result.files[name].resolve()}")
    print("  tables: " + ", ".join(n for n in result.files if n.endswith(".csv")))
    print("  plots:  " + ", ".join(n for n in result.files if n.endswith(".png")))
    if "tables.tex" in result.files:
        print(f"  LaTeX:  {result.files['tables.tex'].resolve()}")
    if result.logged_to_mlflow:
        print(f"  logged to MLflow run {result.sweep_run_id} under artifacts report/")
    return 0

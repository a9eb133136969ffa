"""`harness report`: the comparison report of a sweep's MLflow runs."""

from __future__ import annotations

import argparse
import sys

from reports.build import add_report_arguments, run_report


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_report_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        return run_report(args)
    except ValueError as exc:  # unknown experiment or run, no runs, unknown metric: the user can fix it
        print(f"harness report: {exc}", file=sys.stderr)
        return 2

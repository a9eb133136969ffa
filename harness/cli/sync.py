"""`harness sync DIR`: an exported sweep's results into MLflow (harness.tracking.sync), as if the
sweep had run under Ray.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.run.outcome import print_problems
from harness.tracking.sync import open_sweep_run, read_export, sync_table, sync_trial


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="an export folder that `harness run` filled")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=None,
        help="MLflow store [$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db]",
    )


def main(args: argparse.Namespace) -> int:
    checked = read_export(args.dir)
    if isinstance(checked, list):
        print_problems("harness sync", checked, "nothing was logged")
        return 2
    export, trials = checked
    from harness import tracking

    uri = args.tracking_uri or tracking.default_tracking_uri()
    try:
        sweep_run, how = open_sweep_run(tracking.open_store(uri), export, {t.key for t, _ in trials})
        print(f"MLflow: experiment {export.experiment!r}, sweep run {sweep_run.run_id} ({how}) in {uri}")
        rows = [(trial, *sync_trial(sweep_run, export, trial, cfg)) for trial, cfg in trials]
        sweep_run.close(status for *_, status in rows)
    except Exception as exc:  # noqa: BLE001 - the store went away, refused a write, ...
        print(
            f"harness sync: MLflow failed: {type(exc).__name__}: {exc}\n"
            f"harness sync: what was logged stays; run `harness sync {args.dir}` again to complete it",
            file=sys.stderr,
        )
        return 1
    print(sync_table(rows))
    print(f"next: harness report --experiment {export.experiment}")
    return 0

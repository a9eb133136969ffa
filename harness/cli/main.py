"""The `harness` command line: sweep, validate, train, run, sync, report, ui, bench.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and
`main(args) -> int`. Modules are imported only when their command runs, so `harness bench`,
`harness train` and `harness run` work where only torch is installed (no Ray, no MLflow).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (module, one-line help)
COMMANDS = {
    "sweep": ("harness.cli.sweep", "run a sweep file as Ray Tune trials, tracked in MLflow"),
    "validate": ("harness.cli.sweep", "check a sweep file completely and start nothing"),
    "train": ("harness.cli.train", "run one trial without Ray (config file and/or --set key=value)"),
    "run": ("harness.cli.run", "run an exported sweep's trials here, one by one, with torch alone"),
    "sync": ("harness.cli.sync", "log an exported sweep's results into MLflow, as `sweep` would have"),
    "report": ("reports.cli", "comparison tables and plots from a sweep's MLflow runs"),
    "ui": ("harness.cli.ui", "start the MLflow UI on the harness's store"),
    "bench": (
        "harness.cli.bench",
        "time the training step of each topology on synthetic data, or the loader",
    ),
}


def _load(module: str):
    return importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser_for(argv)
    args = parser.parse_args(argv)
    try:
        return int(_load(args._module).main(args) or 0)
    except BrokenPipeError:
        # output piped into e.g. `head`, which stopped reading: not a failure of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the command named in argv loaded (and only those)."""
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Label-noise robustness evaluation harness for collaborative learning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module, command=name)
        if name == wanted:
            _load(module).add_arguments(cmd, name)
    return parser


if __name__ == "__main__":
    sys.exit(main())

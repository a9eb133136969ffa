"""`harness ui`: the MLflow UI on the harness's store, until Ctrl-C.

It prints the address of the latest sweep's runs table (and of every other experiment's), where
a person wants to land, in "Model training" mode (`?workflowType=machine_learning`): MLflow 3's UI
otherwise opens on its GenAI navigation. The server is MLflow's app wrapped by harness.tracking.ui_app, so the
bare address opens in Model training mode too.

The store is the one sweeps write: `MLFLOW_TRACKING_URI`, else `mlflow.db` in the working
directory (harness.tracking.mlflow.default_tracking_uri). The UI binds to 127.0.0.1 by default; reach
it from another machine through an SSH tunnel (`ssh -L 5000:127.0.0.1:5000 host`) rather than
opening it to the network: the MLflow UI has no login.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys

from harness.contract import default_tracking_uri, sqlite_path
from harness.tracking import MODEL_TRAINING_QUERY, UI_HOST, UI_PORT
from harness.tracking.ui import UI_APP, runs_tables, ui_app_installed, ui_command


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--host", default=UI_HOST, help=f"address to listen on [{UI_HOST}]")
    parser.add_argument("--port", type=int, default=UI_PORT, help=f"port to listen on [{UI_PORT}]")
    parser.add_argument("--workers", type=int, default=2, help="server processes [2: one person browsing]")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store [$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db]",
    )


def main(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(
            f"the store is an MLflow server: open {uri.rstrip('/')}/#/experiments?{MODEL_TRAINING_QUERY} "
            "in a browser"
        )
        return 0
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        # `mlflow ui` would create an empty store here; more likely this is the wrong folder
        print(
            f"harness ui: no MLflow store at {db}: run it where you ran the sweep, "
            "or pass --tracking-uri / set MLFLOW_TRACKING_URI",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.port < 65536 or args.workers < 1:
        print(
            f"harness ui: --port must be in 1..65535 and --workers >= 1, got {args.port}, {args.workers}",
            file=sys.stderr,
        )
        return 2
    app = UI_APP if ui_app_installed() else None
    print(f"MLflow UI: http://{args.host}:{args.port}  (store {uri}); Ctrl-C to stop", flush=True)
    if app is None:  # a checkout on PYTHONPATH, not installed: MLflow's own app, GenAI at the bare address
        print(
            "  (the bare address opens MLflow's GenAI home here: install this package, pip install -e ., "
            "for the Model training landing; the links below open Model training either way)",
            flush=True,
        )
    try:
        lines = runs_tables(uri, args.host, args.port)
    except Exception as exc:  # noqa: BLE001 - `mlflow ui` says what is wrong with the store
        lines = [f"(cannot list the experiments: {type(exc).__name__}: {exc})"]
    for line in lines:
        print(f"  {line}", flush=True)
    # The UI in a process group of its own: the server starts helper processes (job consumers),
    # and Ctrl-C here must stop all of them, however this process was interrupted.
    # Browsing needs no job runner (MLflow's GenAI jobs): five fewer processes to start.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # `kill PID` (SIGTERM, as service managers and tests stop it) cleans up like Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    proc = subprocess.Popen(
        ui_command(uri, args.host, args.port, args.workers, app=app), env=env, start_new_session=True
    )
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _signal_group(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        return 0
    finally:
        _signal_group(proc.pid, signal.SIGTERM)  # helpers the server left behind, if any


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)

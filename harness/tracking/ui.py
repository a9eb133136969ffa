"""The MLflow UI on the harness's store: the command that serves it through harness.tracking.ui_app,
and the addresses of each experiment's runs table.
"""

from __future__ import annotations

import sys

from harness.contract import RUN_KIND_TAG, SWEEP_RUN
from harness.tracking import UI_HOST, UI_PORT, runs_table_url

UI_APP = (
    "harness"  # harness.tracking.ui_app as MLflow knows it: the `mlflow.app` entry point in pyproject.toml
)


def ui_app_installed() -> bool:
    """Whether MLflow finds our app plugin: an install of this package (pip install -e .) registers it."""
    from importlib.metadata import entry_points

    return any(ep.name == UI_APP for ep in entry_points(group="mlflow.app"))


def ui_command(uri: str, host: str, port: int, workers: int = 2, *, app: str | None = None) -> list[str]:
    """The `mlflow ui` command line for store `uri`; `app`: an MLflow app plugin to serve instead of MLflow's."""
    return [
        *(sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri),
        *("--host", host, "--port", str(port), "--workers", str(workers)),
        *(("--app-name", app) if app else ()),
    ]


def runs_tables(uri: str, host: str = UI_HOST, port: int = UI_PORT) -> list[str]:
    """One line per experiment with its runs table's address: the latest sweep's first."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments(
        view_type=ViewType.ACTIVE_ONLY, order_by=["last_update_time DESC"]
    )
    latest = client.search_runs(
        [e.experiment_id for e in experiments],
        filter_string=f"tags.`{RUN_KIND_TAG}` = '{SWEEP_RUN}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    lines, first = [], None
    if latest:
        first = latest[0].info.experiment_id
        name = next(e.name for e in experiments if e.experiment_id == first)
        lines.append(
            f"latest sweep {latest[0].info.run_name!r} (experiment {name!r}): "
            f"{runs_table_url(uri, first, host=host, port=port)}"
        )
    for e in experiments:
        if e.experiment_id == first or not client.search_runs([e.experiment_id], max_results=1):
            continue  # MLflow's empty Default experiment, for one
        lines.append(f"experiment {e.name!r}: {runs_table_url(uri, e.experiment_id, host=host, port=port)}")
    return lines

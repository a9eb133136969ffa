"""The MLflow store: opening it, its experiments, the runs table's address, and the helpers the
run writers share (params from a config, the numbers among a report, a trial's run under its sweep).

The store is `MLFLOW_TRACKING_URI` when set (e.g. a team's MLflow server), else the SQLite file
`mlflow.db` in the working directory, as an absolute URI (harness.contract.default_tracking_uri):
Ray trials run in folders of their own, where a relative `sqlite:///mlflow.db` would give each one
an empty store of its own. Opening a store creates it (SQLite's schema migrations) from one
process, before any writer starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from harness import config as C
from harness.contract import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    PARENT_TAG,
    TRIAL_KEY_TAG,
    default_tracking_uri,
)


def open_store(tracking_uri: str | None = None) -> MlflowClient:
    """A client on the store, created now if new.

    Creating the store (SQLite schema migrations) up front, from one process, keeps it out of
    any race between writers that start later.
    """
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    client.search_experiments(max_results=1)
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name`, created (or restored from the bin) if need be.

    Tagged as a model-training experiment where it is not tagged yet: MLflow 3's UI then opens it
    on its runs table instead of the GenAI overview.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


UI_HOST, UI_PORT = "127.0.0.1", 5000  # where `harness ui` serves the store by default
# MLflow 3's UI opens a page in "Model training" mode (runs table, model registry; not its GenAI
# navigation of traces and judges) when its address carries this; the mode is otherwise global
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def runs_table_url(tracking_uri: str, experiment_id: str, *, host: str = UI_HOST, port: int = UI_PORT) -> str:
    """The MLflow UI's runs table of an experiment, in Model training mode: on the server itself for
    an http(s) store, else on `harness ui` at host:port."""
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
    else:
        base = f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _numeric(metrics: Mapping[str, Any], skip: frozenset[str] = frozenset({"epoch"})) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _params(cfg: C.TrialConfig | Mapping[str, Any]) -> dict[str, str]:
    flat = C.to_flat(cfg) if isinstance(cfg, C.TrialConfig) else C.flatten(dict(cfg))
    out = {}
    for key, value in flat.items():
        text = str(value)
        # a 100 x 100 noise matrix does not fit a param; config.yaml (an artifact) holds it whole
        out[key] = (
            text
            if len(text) <= MAX_PARAM_VAL_LENGTH
            else text[: MAX_PARAM_VAL_LENGTH - 20] + " ...(truncated)"
        )
    return out


def find_child_run(client: MlflowClient, exp_id: str, parent_run_id: str, trial_key: str):
    """The run of trial `trial_key` under the sweep run `parent_run_id`, or None."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_KEY_TAG}` = '{trial_key}'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def _last_logged(client: MlflowClient, run) -> tuple[int, set[str]]:
    """The highest step logged in `run` and the metrics logged at it."""
    steps = {
        key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=0)
        for key in run.data.metrics
    }
    last = max(steps.values(), default=0)
    return last, {key for key, step in steps.items() if step == last}

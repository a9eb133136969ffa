"""MLflow tracking: the store's URI, TrialLogger runs (params, per-epoch metrics, artifacts, status), reattaching."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import config as C
from harness import tracking
from harness.cluster import callback as tune_callback
from harness.contract import EXPERIMENT_KIND_TAG, MODEL_TRAINING


@pytest.fixture()
def store(tmp_path, monkeypatch, new_mlflow_store) -> str:
    """The default store (mlflow.db in the working directory), empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    new_mlflow_store(tmp_path)
    return tracking.default_tracking_uri()


def test_default_uri_is_an_absolute_sqlite_file_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.default_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert not (tmp_path / "mlflow.db").exists(), "naming the store must not create it"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.default_tracking_uri() == "http://mlflow.example:5000"


def _artifacts(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text("data: {name: digits}\n")
    (folder / "metrics.json").write_text('{"test/acc": 0.9}')
    return folder


def test_trial_run_has_params_metric_history_artifacts_and_status(store, tmp_path):
    client = tracking.open_store(store)
    assert (tmp_path / "mlflow.db").exists()
    parent = tracking.SweepRun.open(
        client=client, experiment="e", sweep_name="s", sweep_file="s.yaml", num_trials=1
    ).run_id
    cfg = C.build_config({"noise": {"kind": "symmetric", "rate": 0.4}, "optim": {"milestones": [3, 6]}})
    logger = tracking.TrialLogger.start(
        cfg, experiment="e", run_name="sym-0.4 seed0", parent_run_id=parent, trial_key="k1", client=client
    )
    for epoch in (1, 2):
        logger.log_epoch(
            epoch, {"epoch": epoch, "test/acc": 0.5 + epoch / 10, "train/loss": 2.0 / epoch, "note": "x"}
        )
    logger.finish({"epoch": 2, "test/acc": 0.7, "train/loss": 1.0}, _artifacts(tmp_path / "artifacts"))

    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "sym-0.4 seed0"
    tags = run.data.tags
    assert (
        tags["mlflow.parentRunId"] == parent
        and tags["harness.run_kind"] == "trial"
        and tags["harness.trial_key"] == "k1"
    )
    assert run.data.params == {k: str(v) for k, v in C.to_flat(cfg).items()}
    assert run.data.params["optim.milestones"] == "[3, 6]"
    assert set(run.data.metrics) == {"test/acc", "train/loss"}, "only numbers, and 'epoch' is the step"
    history = client.get_metric_history(logger.run_id, "test/acc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.6), (2, 0.7)], (
        "final metrics are not logged twice"
    )
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == ["config.yaml", "metrics.json"]
    sweep_run = client.get_run(parent)
    assert (
        sweep_run.data.tags["harness.run_kind"] == "sweep"
        and sweep_run.data.tags["harness.sweep_name"] == "s"
    )
    assert sweep_run.info.run_name == "s"


def test_a_resumed_trial_continues_its_run(store):
    """Same parent and trial key: the same run, RUNNING again, epochs already logged skipped."""
    client = tracking.open_store(store)
    parent = tracking.SweepRun.open(
        client=client, experiment="e", sweep_name="s", sweep_file="s.yaml", num_trials=2
    ).run_id
    cfg = C.build_config({})
    first = tracking.TrialLogger.start(
        cfg, experiment="e", run_name="t", parent_run_id=parent, trial_key="k", client=client
    )
    for epoch in (1, 2):
        first.log_epoch(epoch, {"test/acc": epoch / 10})
    first.finish(status="KILLED")

    again = tracking.TrialLogger.start(
        cfg, experiment="e", run_name="t", parent_run_id=parent, trial_key="k", client=client
    )
    assert again.run_id == first.run_id and again.last_step == 2
    assert client.get_run(again.run_id).info.status == "RUNNING"
    again.log_epoch(2, {"test/acc": 0.99})  # redone after the checkpoint: already logged
    again.finish({"epoch": 2, "test/acc": 0.2}, status="KILLED")  # nothing new: nothing logged
    again = tracking.TrialLogger.start(
        cfg, experiment="e", run_name="t", parent_run_id=parent, trial_key="k", client=client
    )
    again.log_epoch(3, {"test/acc": 0.3})
    again.finish(status="FAILED", error="RuntimeError: NaN loss")

    other = tracking.TrialLogger.start(
        cfg, experiment="e", run_name="u", parent_run_id=parent, trial_key="k2", client=client
    )
    assert other.run_id != first.run_id
    runs = client.search_runs(
        [tracking.experiment_id(client, "e")], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert len(runs) == 2
    run = client.get_run(first.run_id)
    assert run.info.status == "FAILED" and run.data.tags["harness.error"] == "RuntimeError: NaN loss"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "test/acc")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    resumed = tracking.SweepRun.open(
        client=client, experiment="e", sweep_name="s", sweep_file="s.yaml", num_trials=2, run_id=parent
    )
    assert resumed.run_id == parent and client.get_run(parent).info.status == "RUNNING"


def test_start_single_is_a_tagged_run_outside_any_sweep(store):
    cfg = C.build_config({"collab": {"topology": "simple", "heads": 2}, "run": {"device": "cpu"}})
    logger = tracking.TrialLogger.start_single(cfg, experiment="harness-train")
    logger.log_epoch(1, {"test/acc": 0.5})
    logger.finish({}, None, status="FINISHED")
    run = MlflowClient(logger.tracking_uri).get_run(logger.run_id)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["harness.device"] == "cpu" and run.data.tags["harness.torch"]
    assert run.info.run_name == "digits cnn_small none-0 simple-2 seed0"
    assert run.info.status == "FINISHED"


def test_error_message_unwraps_ray_errors():
    class Wrapper(Exception):  # how Ray's RayTaskError carries the trial's exception
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  ...\nRuntimeError: NaN loss")
            self.cause = cause

    assert (
        tune_callback.error_message(Wrapper(RuntimeError("NaN loss at epoch 3")))
        == "RuntimeError: NaN loss at epoch 3"
    )
    assert tune_callback.error_message(ValueError("bad")) == "ValueError: bad"
    assert "error.txt" in tune_callback.error_message(None)


def test_callback_pickles_without_its_client(store):
    sweep_run = tracking.SweepRun.open(
        tracking_uri=store,
        experiment="e",
        sweep_name="s",
        sweep_file="s.yaml",
        num_trials=0,
        trial_tags={"a": "b"},
    )
    callback = tune_callback.MlflowTuneCallback(sweep_run)
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.sweep_run._client is None and copy._loggers == {}
    assert copy.problems is sweep_run.problems, "a restored copy reports to the same list"
    run = copy.sweep_run
    assert (run.tracking_uri, run.experiment, run.run_id, run.sweep_name, run.trial_tags) == (
        store,
        "e",
        sweep_run.run_id,
        "s",
        {"a": "b"},
    )


def test_experiments_are_tagged_as_model_training(store):
    """MLflow 3's UI opens an experiment without the kind on its GenAI overview, not the runs table."""
    client = tracking.open_store(store)
    new = tracking.SweepRun.open(
        client=client, experiment="new", sweep_name="s", sweep_file="s", num_trials=0
    )
    assert client.get_experiment(new.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    old = client.create_experiment("old")  # made before experiments were tagged
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert tracking.experiment_id(client, "old") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.experiment_id(client, "chosen")
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development", (
        "a kind set is kept"
    )


def test_sweep_summary_and_ui_print_the_runs_table_address(store):
    from harness.cluster.outcomes import SweepOutcome, format_summary
    from harness.tracking.ui import runs_tables

    client = tracking.open_store(store)
    older = tracking.SweepRun.open(
        client=client, experiment="older", sweep_name="a", sweep_file="a", num_trials=0
    )
    time.sleep(0.01)
    latest = tracking.SweepRun.open(
        client=client, experiment="newer", sweep_name="b", sweep_file="b", num_trials=0
    )
    mode = "?workflowType=machine_learning"  # MLflow 3's UI opens the page in Model training mode
    url = f"http://127.0.0.1:5001/#/experiments/{latest.experiment_id}/runs{mode}"
    assert runs_tables(store, "127.0.0.1", 5001) == [
        f"latest sweep 'b' (experiment 'newer'): {url}",
        f"experiment 'older': http://127.0.0.1:5001/#/experiments/{older.experiment_id}/runs{mode}",
    ], "the latest sweep first; the empty Default experiment left out"
    assert (
        tracking.runs_table_url("https://mlflow.example/", "7")
        == f"https://mlflow.example/#/experiments/7/runs{mode}"
    )

    runs_url = tracking.runs_table_url(store, latest.experiment_id)
    text = format_summary(SweepOutcome([], Path("ray_results/b"), latest.run_id, store, runs_url=runs_url))
    assert (
        f"its runs: http://127.0.0.1:5000/#/experiments/{latest.experiment_id}/runs{mode} (after `harness ui`)"
        in text
    )


def test_ui_on_an_mlflow_server_prints_its_address_in_model_training_mode(capsys):
    from harness import cli

    assert cli.main(["ui", "--tracking-uri", "http://mlflow.example:5000/"]) == 0
    assert (
        "open http://mlflow.example:5000/#/experiments?workflowType=machine_learning"
        in capsys.readouterr().out
    )


def test_ui_refuses_a_missing_store_and_creates_none(tmp_path, monkeypatch, capsys):
    from harness import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["ui"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# What MLflow 3.x's UI shows in each mode: its navigation (mlflow/server/js), and the runs table's header
MODEL_TRAINING_NAV = ("Model registry",)
GENAI_NAV = ("Judges", "Sessions", "Evaluation runs", "Agent versions", "Token usage", "MCP registry")


@pytest.mark.slow(seconds=25)
def test_ui_serves_the_store_until_ctrl_c(store, tmp_path, chromium_dom):
    """`harness ui` on loopback: the printed runs link and the bare address render in a real browser
    (headless Chromium) in Model training mode, the runs table with the sweep's run and the model
    registry in the navigation, none of the GenAI navigation. Ctrl-C stops the server and its helper
    processes. (The page asked for in GenAI mode is not rendered here: it keeps polling, and headless
    Chromium's virtual time then waited past two minutes on two loaded cores.)"""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from harness.tracking.ui import ui_app_installed

    assert ui_app_installed(), "harness's MLflow app is not registered: pip install -e . (make install)"
    client = tracking.open_store(store)
    sweep_run = tracking.SweepRun.open(
        client=client, experiment="ui-check", sweep_name="ui-check-sweep", sweep_file="s.yaml", num_trials=0
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mark = f"harness-ui-test-{port}"  # inherited by every process the command starts
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"HARNESS_TEST_MARK": mark}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert f"http://127.0.0.1:{port}" in proc.stdout.readline()
        runs = f"http://127.0.0.1:{port}/#/experiments/{sweep_run.experiment_id}/runs?workflowType=machine_learning"
        assert (
            proc.stdout.readline().strip() == f"latest sweep 'ui-check-sweep' (experiment 'ui-check'): {runs}"
        )
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200 and b"ui-check" in response.read()
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the UI did not answer within 90 s"
                time.sleep(0.5)
        page = chromium_dom(runs)  # the link as printed
        assert "Run Name" in page and "ui-check-sweep" in page, "the runs table with the sweep's run"
        assert all(item in page for item in MODEL_TRAINING_NAV), "Model training navigation"
        assert not [item for item in GENAI_NAV if item in page], "no GenAI navigation"
        home = chromium_dom(f"http://127.0.0.1:{port}/")  # the bare address, typed by hand
        assert all(item in home for item in MODEL_TRAINING_NAV), home[-3000:]
        assert not [item for item in GENAI_NAV if item in home], "no GenAI navigation at the bare address"
        proc.send_signal(signal.SIGINT)
        # the server's graceful stop takes ~3 s on idle cores, and `harness ui` kills it after 15 s
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10  # its server processes exit with it, or are left behind
        while (left := _pids_with_env(mark)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"the UI left processes behind: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _pids_with_env(mark):  # started by this test, and only those
            os.kill(pid, signal.SIGKILL)


def _pids_with_env(mark: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark.encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_trial_error_is_read_locally_when_storage_has_not_synced_it(tmp_path):
    from ray import cloudpickle

    class FakeTrial:  # what the callback reads of a Ray Trial
        pickled_error_file = str(tmp_path / "error.pkl")
        error_file = str(tmp_path / "error.txt")

        def get_pickled_error(self):
            return None  # storage not synced yet: the race seen in CI

    trial = FakeTrial()
    assert tune_callback.trial_error(trial) == "unknown error (see the trial's error.txt)"
    (tmp_path / "error.txt").write_text("Failure # 1\nTraceback ...\nRuntimeError: NaN loss at epoch 3\n")
    assert tune_callback.trial_error(trial) == "RuntimeError: NaN loss at epoch 3"
    (tmp_path / "error.pkl").write_bytes(cloudpickle.dumps(RuntimeError("deliberate failure after epoch 1")))
    assert tune_callback.trial_error(trial) == "RuntimeError: deliberate failure after epoch 1"

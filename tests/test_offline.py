"""Trials that run anywhere: `harness sweep --export`, `harness run` (torch alone), `harness sync`.

digits, cnn_small, 2 epochs on the CPU. Two tests are slow: the SIGKILL one (subprocesses) and the
comparison with a Ray `harness sweep` of the same file (it starts Ray).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import cli
from harness.config.sweepfile import load_sweep
from harness.run import export as X
from harness.run.layout import TrialFolder
from harness.run.trial import TrialJob

ARTIFACTS = ["config.yaml", "inference_head.pt", "metrics.json", "noise_transition.csv"]
TIMING = ("time/", "perf/")  # the only metrics that differ between two runs of one trial


def sweep_file(folder: Path, name: str = "offline", seeds: str = "[0, 1]", epochs: int = 2) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "base:\n"
        "  data: {name: digits, train_subset: 60}\n"
        f"  optim: {{epochs: {epochs}, batch_size: 64}}\n"
        "  run: {device: cpu}\n"
        "grid:\n"
        "  noise.kind: [symmetric]\n"
        "  noise.rate: [0.4]\n"
        "  collab:\n    - {topology: individual, heads: 1}\n    - {topology: hierarchical, heads: 2}\n"
        f"seeds: {seeds}\n"
    )
    return path


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """An export of four trials that `harness run` has finished (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("ran")
    threads = torch.get_num_threads()  # harness run sets them (resources.cpu)
    assert cli.main(["sweep", str(sweep_file(folder)), "--export", str(folder / "X")]) == 0
    assert cli.main(["run", str(folder / "X")]) == 0
    torch.set_num_threads(threads)
    return folder / "X"


def copy_of(ran: Path, tmp_path: Path) -> Path:
    out = tmp_path / "X"
    shutil.copytree(ran, out)
    return out


def trial_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def history_epochs(trial: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (trial / X.HISTORY_FILE).read_text().splitlines()]


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


# --- export -----------------------------------------------------------------------------------


def test_export_writes_one_folder_per_trial_and_never_overwrites(tmp_path, capsys):
    path = sweep_file(tmp_path)
    out = tmp_path / "X"
    assert cli.main(["sweep", str(path), "--export", str(out)]) == 0
    assert "exported 4 trial(s)" in capsys.readouterr().out
    sweep = load_sweep(path)
    dirs = trial_dirs(out)
    assert [d.name for d in dirs] == [t.dirname for t in sweep.trials]
    for trial, folder in zip(sweep.trials, dirs):
        identity = json.loads((folder / X.TRIAL_FILE).read_text())
        assert (identity["index"], identity["name"], identity["key"]) == (trial.index, trial.name, trial.key)
        assert sorted(p.name for p in folder.iterdir()) == [X.CONFIG_FILE, X.TRIAL_FILE]
    # sweep.yaml is a sweep file that expands to the very same trials
    assert [t.key for t in load_sweep(out / X.SWEEP_FILE).trials] == [t.key for t in sweep.trials]
    meta = json.loads((out / X.EXPORT_FILE).read_text())
    assert (meta["sweep"], meta["experiment"], meta["metric"], meta["cpu"]) == (
        "offline",
        "offline",
        "test/acc",
        1.0,
    )

    (dirs[0] / X.STATUS_FILE).write_text("finished\n")  # a result: exporting again must leave it
    (dirs[0] / X.CONFIG_FILE).write_text("# edited\n" + (dirs[0] / X.CONFIG_FILE).read_text())
    before = {p: p.read_text() for p in out.rglob("*") if p.is_file() and p.name != X.SWEEP_FILE}
    assert cli.main(["sweep", str(path), "--export", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported 0 trial(s)" in text and "(4 already there, left as they are)" in text
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file() and p.name != X.SWEEP_FILE} == before
    assert json.loads((out / X.EXPORT_FILE).read_text())["id"] == meta["id"]

    # more seeds: the new trials are added, the others left as they are
    more = sweep_file(tmp_path, seeds="[0, 1, 2]")
    assert cli.main(["sweep", str(more), "--export", str(out)]) == 0
    assert "exported 2 trial(s)" in capsys.readouterr().out
    assert len(trial_dirs(out)) == 6 and (dirs[0] / X.STATUS_FILE).read_text() == "finished\n"


def test_export_refuses_what_it_must_not_write_into(tmp_path, capsys):
    out = tmp_path / "X"
    assert cli.main(["sweep", str(sweep_file(tmp_path)), "--export", str(out)]) == 0
    other = sweep_file(tmp_path, name="other")
    assert cli.main(["sweep", str(other), "--export", str(out)]) == 2
    assert "holds an export of sweep 'offline', not 'other'" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli.main(["sweep", str(other), "--export", str(tmp_path / "busy")]) == 2
    assert "not empty and not an export" in capsys.readouterr().err
    assert cli.main(["sweep", str(other), "--export", str(tmp_path / "Y"), "--resume"]) == 2
    assert "--export runs nothing; --resume do not apply" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(other.read_text().replace("noise.rate: [0.4]", "noise.rate: [1.4]"))
    assert cli.main(["sweep", str(bad), "--export", str(tmp_path / "Z")]) == 2
    assert "grid.noise.rate[0]: must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "Y").exists() and not (tmp_path / "Z").exists(), "bad input writes nothing"


# --- run ------------------------------------------------------------------------------------------


def test_run_fills_each_trial_folder_and_skips_finished_trials(ran, tmp_path, capsys):
    for folder in trial_dirs(ran):
        assert (folder / X.STATUS_FILE).read_text() == "finished\n"
        assert history_epochs(folder) == [1, 2]
        final = json.loads((folder / X.METRICS_FILE).read_text())
        last = json.loads((folder / X.HISTORY_FILE).read_text().splitlines()[-1])
        assert final["epoch"] == 2 and {k: final[k] for k in last} == last
        assert {"model/train_params", "noise/realized_rate"} <= set(final)
        # what a step costs, counted once, logged with the first epoch (harness.train.cost)
        first = json.loads((folder / X.HISTORY_FILE).read_text().splitlines()[0])
        assert (
            first["cost/step_gflops"] > 0 and first["cost/step_mem_mb"] > 0 and first["cost/infer_gflops"] > 0
        )
        assert all(
            json.loads(line)["perf/tflops"] > 0 for line in (folder / X.HISTORY_FILE).read_text().splitlines()
        )
        assert sorted(p.name for p in TrialFolder(folder).artifacts.iterdir()) == ARTIFACTS
        assert TrialFolder(folder).has_checkpoint
        runtime = json.loads((folder / X.RUNTIME_FILE).read_text())
        assert runtime["tags"]["harness.device"] == "cpu" and runtime["overrides"] == {}
    out = copy_of(ran, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert cli.main(["run", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("finished already, skipped") == 4
    assert "4 of 4 trials succeeded" in text and "symmetric-0.4 hierarchical-2 seed1" in text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a finished trial is not touched"


def test_a_failing_trial_does_not_stop_the_others_and_is_retried(tmp_path, monkeypatch, capsys):
    out = tmp_path / "X"
    assert cli.main(["sweep", str(sweep_file(tmp_path)), "--export", str(out)]) == 0
    after_epoch = TrialJob.after_epoch

    def seed1_fails(job, epoch, metrics, state):  # before its epoch-1 checkpoint: a retry starts anew
        if job.cfg.run.seed == 1 and epoch == 1:
            raise RuntimeError("deliberate failure after epoch 1")
        after_epoch(job, epoch, metrics, state)

    monkeypatch.setattr(TrialJob, "after_epoch", seed1_fails)
    assert cli.main(["run", str(out)]) == 1
    text = capsys.readouterr().out
    assert "2 of 4 trials succeeded, 2 failed" in text
    assert "failed: symmetric-0.4 individual-1 seed1: RuntimeError: deliberate failure after epoch 1" in text
    dirs = trial_dirs(out)
    assert [(d / X.STATUS_FILE).read_text().split("\n")[0] for d in dirs] == ["finished"] * 2 + ["failed"] * 2
    assert "deliberate failure" in (dirs[2] / X.STATUS_FILE).read_text().split("\n")[1]
    assert "Traceback" in (dirs[2] / X.ERROR_FILE).read_text()
    monkeypatch.setattr(TrialJob, "after_epoch", after_epoch)
    assert cli.main(["run", str(out), "--only", "*seed1"]) == 0
    text = capsys.readouterr().out
    assert "2 of 2 trials succeeded" in text and "seed0" not in text.split("#  trial")[1]
    assert all((d / X.STATUS_FILE).read_text() == "finished\n" for d in dirs)
    assert not (dirs[2] / X.ERROR_FILE).exists() and history_epochs(dirs[2]) == [1, 2]


def test_a_checkpoint_of_the_last_epoch_finishes_without_training(ran, tmp_path, capsys):
    """Killed after the last epoch's checkpoint but before the status said so: rerunning reports that
    epoch from the checkpoint (its history line too, if it was lost) instead of training on."""
    out = copy_of(ran, tmp_path)
    folder = trial_dirs(out)[1]
    final = json.loads((folder / X.METRICS_FILE).read_text())
    (folder / X.STATUS_FILE).write_text("running\n")
    (folder / X.METRICS_FILE).unlink()
    shutil.rmtree(TrialFolder(folder).artifacts)
    lines = (folder / X.HISTORY_FILE).read_text().splitlines()
    (folder / X.HISTORY_FILE).write_text(lines[0] + "\n" + lines[1][:30])  # epoch 2's line torn
    assert cli.main(["run", str(out)]) == 0
    assert "epoch 2 of 2 was the last and is in the checkpoint" in capsys.readouterr().out
    assert json.loads((folder / X.METRICS_FILE).read_text()) == final
    assert history_epochs(folder) == [1, 2] and (folder / X.STATUS_FILE).read_text() == "finished\n"
    assert sorted(p.name for p in TrialFolder(folder).artifacts.iterdir()) == ARTIFACTS


BLOCKED = """
import json, sys
for name in ("ray", "mlflow"):
    sys.modules[name] = None  # `import ray`, `import mlflow.x` now raise ImportError
{slow}
from harness.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow") and sys.modules[m] is not None)
print("LOADED " + json.dumps(loaded))
sys.exit(code)
"""
# Half a second more per epoch, results unchanged: time for the test to kill the run mid-trial.
SLOW = "import time, harness.train.log as E; f = E.format_epoch; E.format_epoch = lambda *a: (time.sleep(0.5), f(*a))[1]"


@pytest.mark.slow(seconds=14)
def test_run_resumes_after_sigkill_with_the_same_final_metrics_without_ray_or_mlflow(tmp_path):
    """`harness run` in subprocesses where `import ray` and `import mlflow` fail (blocked in sys.modules:
    quicker than a second venv): SIGKILL in the second trial, run again, and every trial ends with
    the metrics of an uninterrupted run."""
    path = sweep_file(tmp_path, seeds="[0]", epochs=4)
    path.write_text(
        path.read_text().replace("heads: 2}\n", "heads: 2}\n    - {topology: simple, heads: 2}\n")
    )
    for name in ("X", "ref"):
        assert cli.main(["sweep", str(path), "--export", str(tmp_path / name)]) == 0
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def command(slow: str = "") -> list[str]:
        return [sys.executable, "-c", BLOCKED.format(slow=slow), "run", "X"]

    second = tmp_path / "X" / "001_symmetric-0.4_hierarchical-2_seed0"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command(SLOW), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not ((second / X.HISTORY_FILE).exists() and history_epochs(second)):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second trial never finished an epoch"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (second / X.STATUS_FILE).read_text() == "running\n" and history_epochs(second)[-1] < 4
    assert not (tmp_path / "X" / "002_symmetric-0.4_simple-2_seed0" / X.STATUS_FILE).exists()

    again = subprocess.run(command(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "finished already, skipped" in again.stdout and "resuming at epoch" in again.stdout
    assert "3 of 3 trials succeeded" in again.stdout
    assert "LOADED []" in again.stdout, "harness run imported Ray or MLflow"

    assert cli.main(["run", str(tmp_path / "ref")]) == 0  # the same trials, uninterrupted
    for folder, ref in zip(trial_dirs(tmp_path / "X"), trial_dirs(tmp_path / "ref")):
        assert history_epochs(folder) == [1, 2, 3, 4], folder.name
        got, want = (without_timing(json.loads((f / X.METRICS_FILE).read_text())) for f in (folder, ref))
        assert got == want, folder.name


def test_run_refuses_unusable_input_and_runs_nothing(ran, tmp_path, capsys):
    assert cli.main(["run", str(tmp_path)]) == 2
    assert f"{tmp_path.resolve()}: is not an export (no export.json)" in capsys.readouterr().err
    out = copy_of(ran, tmp_path)
    first, second = trial_dirs(out)[:2]
    config = second / X.CONFIG_FILE
    config.write_text(config.read_text().replace("  topology: hierarchical", "  toplogy: hierarchical"))
    assert cli.main(["run", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: collab.toplogy: unknown key; did you mean collab.topology?" in err
    assert "nothing was run" in err
    config.write_text(
        config.read_text().replace("toplogy", "topology").replace("name: digits", "name: cifar10")
    )
    config.write_text(config.read_text().replace("root: null", "root: /no/such/data"))
    assert cli.main(["run", str(out)]) == 2
    assert (
        "data.root: folder does not exist: /no/such/data (where is the data on this machine? pass --data-root"
        in (capsys.readouterr().err)
    )
    shutil.copy(first / X.CONFIG_FILE, config)
    (second / X.HISTORY_FILE).write_text('{"epoch": 1, "test/acc": 0.5}\nnot json\n{"epoch": 3}\n')
    assert cli.main(["run", str(out)]) == 2
    assert f"{second / X.HISTORY_FILE}: line 2 is not JSON" in capsys.readouterr().err
    if not torch.cuda.is_available():
        shutil.copy(ran / second.name / X.HISTORY_FILE, second / X.HISTORY_FILE)
        assert cli.main(["run", str(out), "--device", "cuda"]) == 2
        assert "run.device: 'cuda' asked for, but CUDA is not available here" in capsys.readouterr().err


def test_a_checkpoint_that_could_run_code_is_refused(ran, tmp_path, capsys):
    out = copy_of(ran, tmp_path)
    folder = trial_dirs(out)[0]
    (folder / X.STATUS_FILE).write_text("running\n")
    torch.save({"model": {}, "trap": Path("x")}, folder / "checkpoint" / "state.pt")  # names a class
    assert cli.main(["run", str(out), "--only", folder.name]) == 1
    assert "failed: UnsafeFileError" in capsys.readouterr().out
    assert (folder / X.STATUS_FILE).read_text().startswith("failed\nUnsafeFileError")


# --- sync -----------------------------------------------------------------------------------------


def store(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def runs(client, experiment: str = "offline"):
    """(sweep runs, trial runs) of the experiment, deleted ones left out."""
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id])
    kind = lambda r: r.data.tags.get("harness.run_kind")  # noqa: E731
    return [r for r in found if kind(r) == "sweep"], [r for r in found if kind(r) == "trial"]


def steps(client, run, key: str = "test/acc") -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def test_sync_logs_each_trial_once_and_later_only_what_is_new(
    ran, tmp_path, monkeypatch, capsys, new_mlflow_store
):
    monkeypatch.chdir(tmp_path)
    new_mlflow_store(tmp_path)  # an empty store (a copy: conftest makes its schema once)
    out = copy_of(ran, tmp_path)
    dirs = trial_dirs(out)
    # The state a node's time limit leaves: trial 2 not started, trial 3 killed after epoch 1.
    for name in (X.STATUS_FILE, X.HISTORY_FILE, X.METRICS_FILE, X.RUNTIME_FILE):
        (dirs[2] / name).unlink()
    shutil.rmtree(dirs[2] / "checkpoint")
    (dirs[3] / X.STATUS_FILE).write_text("running\n")
    (dirs[3] / X.METRICS_FILE).unlink()
    shutil.rmtree(TrialFolder(dirs[3]).artifacts)
    lines = (dirs[3] / X.HISTORY_FILE).read_text().splitlines()
    (dirs[3] / X.HISTORY_FILE).write_text(lines[0] + "\n")

    assert cli.main(["sync", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sweep run" in text and "(new)" in text and "4 trial folder(s): 3 logged, 1 not started" in text
    client = store(tmp_path)
    (parent,), trials = runs(client)
    assert parent.info.status == "KILLED" and parent.data.tags["harness.export_id"]
    assert len(trials) == 3
    by_name = {r.info.run_name: r for r in trials}
    partial = by_name["symmetric-0.4 hierarchical-2 seed1"]
    assert partial.info.status == "KILLED" and partial.data.tags["harness.unfinished"] == "true"
    assert "Unfinished when synced: epoch 1 of 2" in partial.data.tags["mlflow.note.content"]
    assert steps(client, partial) == [1]
    done = by_name["symmetric-0.4 individual-1 seed0"]
    assert done.info.status == "FINISHED" and done.data.tags["harness.launcher"] == "run"
    assert done.data.tags["harness.collapsed"] == "false" and done.data.tags["harness.device"] == "cpu"
    assert done.data.params["collab.topology"] == "individual" and done.data.params["run.seed"] == "0"
    assert steps(client, done) == [1, 2] and steps(client, done, "train/memorized") == [1, 2]
    assert sorted(a.path for a in client.list_artifacts(done.info.run_id)) == ARTIFACTS

    assert cli.main(["run", str(out)]) == 0  # the rest of the sweep, then sync again
    capsys.readouterr()
    assert cli.main(["sync", str(out)]) == 0
    text = capsys.readouterr().out
    assert "made by an earlier sync of this export" in text
    assert "4 trial folder(s): 1 logged, 1 updated, 2 up to date" in text
    (parent,), trials = runs(client)
    assert parent.info.status == "FINISHED" and len(trials) == 4
    again = client.get_run(partial.info.run_id)
    assert again.info.status == "FINISHED" and steps(client, again) == [1, 2]
    assert "harness.unfinished" not in again.data.tags and "mlflow.note.content" not in again.data.tags
    assert all(steps(client, r) == [1, 2] for r in trials)

    assert cli.main(["sync", str(out)]) == 0
    assert "4 trial folder(s): 4 up to date" in capsys.readouterr().out
    _, trials = runs(client)
    assert len(trials) == 4 and all(steps(client, r) == [1, 2] for r in trials)
    assert cli.main(["report", "--experiment", "offline", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "accuracy.csv").read_text().count("symmetric 40%") == 2


def test_a_sync_that_fails_midway_completes_when_run_again(
    ran, tmp_path, monkeypatch, capsys, new_mlflow_store
):
    from harness import tracking

    monkeypatch.chdir(tmp_path)
    new_mlflow_store(tmp_path)  # an empty store (a copy: conftest makes its schema once)
    out = copy_of(ran, tmp_path)
    real = tracking.TrialLogger.log_epoch
    calls = []

    def flaky(self, epoch, metrics):
        calls.append(epoch)
        if len(calls) == 4:  # trial 1's second epoch: the store went away
            raise ConnectionError("store unreachable")
        real(self, epoch, metrics)

    monkeypatch.setattr(tracking.TrialLogger, "log_epoch", flaky)
    assert cli.main(["sync", str(out)]) == 1
    assert "run `harness sync" in capsys.readouterr().err
    monkeypatch.setattr(tracking.TrialLogger, "log_epoch", real)
    assert cli.main(["sync", str(out)]) == 0
    assert "4 trial folder(s): 2 logged, 1 updated, 1 up to date" in capsys.readouterr().out
    client = store(tmp_path)
    (parent,), trials = runs(client)
    assert parent.info.status == "FINISHED" and len(trials) == 4
    assert all(r.info.status == "FINISHED" and steps(client, r) == [1, 2] for r in trials)
    assert all(sorted(a.path for a in client.list_artifacts(r.info.run_id)) == ARTIFACTS for r in trials)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("history", "history.jsonl: line 2: test/acc: must be a number, got 'high'"),
        ("metrics", "metrics.json: not valid JSON"),
        ("status", "status: unknown state 'done'; expected running, finished, failed, collapsed"),
        ("config", "config.yaml: optim.epochs: must be >= 1, got 0"),
        ("foreign", "trial.json: this trial belongs to export"),
    ],
)
def test_sync_refuses_unusable_input_and_logs_nothing(ran, tmp_path, monkeypatch, capsys, damage, message):
    monkeypatch.chdir(tmp_path)
    out = copy_of(ran, tmp_path)
    folder = trial_dirs(out)[2]
    if damage == "history":
        lines = (folder / X.HISTORY_FILE).read_text().splitlines()
        (folder / X.HISTORY_FILE).write_text(
            lines[0] + "\n" + lines[1].replace('"test/acc": 0.', '"test/acc": "high", "x": 0.') + "\n"
        )
    elif damage == "metrics":
        (folder / X.METRICS_FILE).write_text('{"epoch": 2, "test/acc": 0.4')
    elif damage == "status":
        (folder / X.STATUS_FILE).write_text("done\n")
    elif damage == "config":
        config = folder / X.CONFIG_FILE
        config.write_text(config.read_text().replace("epochs: 2", "epochs: 0"))
    else:
        identity = json.loads((folder / X.TRIAL_FILE).read_text())
        (folder / X.TRIAL_FILE).write_text(json.dumps({**identity, "export": "elsewhere"}))
    assert cli.main(["sync", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{folder}/{message}" in err, err
    assert "nothing was logged" in err
    assert not (tmp_path / "mlflow.db").exists(), "not even the store was created"
    assert cli.main(["sync", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: does not exist; make one with `harness sweep FILE --export" in capsys.readouterr().err


def test_sync_needs_no_data_and_logs_the_device_it_ran_on(ran, tmp_path, monkeypatch, new_mlflow_store):
    """A trial run elsewhere with --device/--data-root: params say what ran; the data need not be here."""
    monkeypatch.chdir(tmp_path)
    new_mlflow_store(tmp_path)  # an empty store (a copy: conftest makes its schema once)
    out = copy_of(ran, tmp_path)
    folder = trial_dirs(out)[0]
    config = folder / X.CONFIG_FILE
    config.write_text(
        config.read_text().replace("name: digits", "name: cifar10").replace("root: null", "root: ~/data")
    )
    runtime = json.loads((folder / X.RUNTIME_FILE).read_text())
    runtime["overrides"] = {"run.device": "cuda", "data.root": "/scratch/cifar"}
    (folder / X.RUNTIME_FILE).write_text(json.dumps(runtime))
    assert cli.main(["sync", str(out)]) == 0
    _, trials = runs(store(tmp_path))
    params = next(r for r in trials if r.info.run_name.endswith("individual-1 seed0")).data.params
    assert (params["run.device"], params["data.root"], params["data.name"]) == (
        "cuda",
        "/scratch/cifar",
        "cifar10",
    )


def metric_histories(client, run) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (step, value) history but the timings."""
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
        if not key.startswith(TIMING)
    }


@pytest.mark.slow(seconds=28)
def test_export_run_sync_report_equals_a_ray_sweep_of_the_same_file(
    tmp_path, monkeypatch, capsys, ray_cluster, new_mlflow_store
):
    """The same sweep file through Ray (`harness sweep`) and through export -> run -> sync: the same
    runs, metric by metric and epoch by epoch, and the same report. Then the export synced into the
    store that holds the Ray sweep adds no run, and replaces only a run that did not finish."""
    from mlflow import MlflowClient

    path = sweep_file(tmp_path)
    for name in ("ray", "offline"):
        new_mlflow_store(tmp_path / name)
    monkeypatch.chdir(tmp_path / "ray")
    assert cli.main(["sweep", str(path)]) == 0  # on the shared Ray of this process (conftest)
    assert cli.main(["report", "--experiment", "offline", "--out", str(tmp_path / "ray" / "report")]) == 0
    monkeypatch.chdir(tmp_path / "offline")
    assert cli.main(["sweep", str(path), "--export", "X"]) == 0
    assert cli.main(["run", "X"]) == 0
    assert cli.main(["sync", "X"]) == 0
    assert cli.main(["report", "--experiment", "offline", "--out", str(tmp_path / "offline" / "report")]) == 0
    capsys.readouterr()

    reports = [tmp_path / name / "report" for name in ("ray", "offline")]
    for table in ("accuracy", "gains", "memorization", "collapsed", "failed"):
        ray_table, offline_table = ((r / f"{table}.csv").read_text() for r in reports)
        assert ray_table == offline_table, table
    timing = ["peak_mem_mb", "time_epoch_s", "img_per_s", "tflops"]
    ray_cost, offline_cost = (pd.read_csv(r / "cost.csv").drop(columns=timing) for r in reports)
    assert ray_cost.equals(offline_cost), (
        "setups and parameter counts (the timing columns differ, as they must)"
    )

    ray_store = MlflowClient(f"sqlite:///{tmp_path / 'ray' / 'mlflow.db'}")
    offline_store = MlflowClient(f"sqlite:///{tmp_path / 'offline' / 'mlflow.db'}")
    (ray_parent,), ray_trials = runs(ray_store)
    _, offline_trials = runs(offline_store)
    by_key = {r.data.tags["harness.trial_key"]: r for r in offline_trials}
    assert sorted(by_key) == sorted(r.data.tags["harness.trial_key"] for r in ray_trials)
    for ray_run in ray_trials:
        run = by_key[ray_run.data.tags["harness.trial_key"]]
        assert run.info.run_name == ray_run.info.run_name and run.info.status == ray_run.info.status
        assert run.data.params == ray_run.data.params, run.info.run_name
        assert metric_histories(offline_store, run) == metric_histories(ray_store, ray_run), run.info.run_name
        assert run.data.tags["harness.collapsed"] == ray_run.data.tags["harness.collapsed"]

    # The export into the store that has the same sweep from Ray: the Ray runs stay, nothing is added.
    ray_uri = f"sqlite:///{tmp_path / 'ray' / 'mlflow.db'}"
    assert cli.main(["sync", "X", "--tracking-uri", ray_uri]) == 0
    text = capsys.readouterr().out
    assert f"sweep run {ray_parent.info.run_id} (joined: harness sweep holds trials of this sweep)" in text
    assert "4 trial folder(s): 4 kept" in text
    parents, trials = runs(ray_store)
    assert len(parents) == 1 and sorted(r.info.run_id for r in trials) == sorted(
        r.info.run_id for r in ray_trials
    )
    # A Ray run that failed gives way to the export's finished one (deleted, so restorable).
    failed = ray_trials[0]
    ray_store.set_terminated(failed.info.run_id, status="FAILED")
    assert cli.main(["sync", "X", "--tracking-uri", ray_uri]) == 0
    text = capsys.readouterr().out
    assert (
        "4 trial folder(s): 1 logged, 3 kept" in text
        and f"replaced the FAILED run {failed.info.run_id}" in text
    )
    parents, trials = runs(ray_store)
    assert len(parents) == 1 and len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert ray_store.get_run(failed.info.run_id).info.lifecycle_stage == "deleted"
    assert cli.main(["sync", "X", "--tracking-uri", ray_uri]) == 0
    assert "4 trial folder(s): 1 up to date, 3 kept" in capsys.readouterr().out


# --- packs and several `harness run` of one folder ------------------------------------------------


def test_run_trains_packs_whose_members_end_as_they_do_alone(ran, tmp_path, capsys):
    path = sweep_file(tmp_path, name="offline")
    path.write_text(path.read_text() + "pack: 2\n")  # the sweep of `ran`, its seeds packed together
    assert cli.main(["sweep", str(path), "--export", str(tmp_path / "P")]) == 0
    assert cli.main(["run", str(tmp_path / "P")]) == 0
    text = capsys.readouterr().out
    assert "4 of them in 2 pack(s) of up to 2" in text and text.count("a pack of 2:") == 2
    assert "2 of 4 trial(s) trained in" in text and "4 of 4 trials succeeded" in text
    for folder, alone in zip(trial_dirs(tmp_path / "P"), trial_dirs(ran)):
        assert folder.name == alone.name and (folder / X.STATUS_FILE).read_text() == "finished\n"
        got, want = (without_timing(json.loads((f / X.METRICS_FILE).read_text())) for f in (folder, alone))
        assert got == want, folder.name
        assert history_epochs(folder) == [1, 2]
        pack = json.loads((folder / X.RUNTIME_FILE).read_text())["tags"]["harness.pack"]
        assert pack in ("0:2", "1:2")  # packs are named by their first trial's index
        assert not held_locks(folder)


def test_a_diverging_member_fails_alone_in_its_pack(tmp_path, capsys):
    path = tmp_path / "lr.yaml"
    path.write_text(
        "name: lr\nbase:\n  data: {name: digits, train_subset: 60}\n  optim: {epochs: 2, batch_size: 64}\n"
        "  run: {device: cpu}\ngrid:\n  optim.lr: [0.05, 10000.0]\npack: 2\n"
    )
    assert cli.main(["sweep", str(path), "--export", str(tmp_path / "X")]) == 0
    assert cli.main(["run", str(tmp_path / "X")]) == 1
    text = capsys.readouterr().out
    assert "1 of 2 trials succeeded, 1 failed" in text and "TrainingDiverged: training loss became" in text
    ok, bad = trial_dirs(tmp_path / "X")
    assert (bad / X.STATUS_FILE).read_text().startswith("failed\nTrainingDiverged")
    assert "Traceback" in (bad / X.ERROR_FILE).read_text()
    alone = tmp_path / "alone"
    assert cli.main(["sweep", str(path), "--export", str(alone), "--set", "optim.lr=0.05"]) != 0  # grid key
    path.write_text(path.read_text().replace("[0.05, 10000.0]", "[0.05]"))
    assert cli.main(["sweep", str(path), "--export", str(alone)]) == 0
    assert cli.main(["run", str(alone)]) == 0
    (single,) = trial_dirs(alone)
    got, want = (without_timing(json.loads((f / X.METRICS_FILE).read_text())) for f in (ok, single))
    assert got == want


def held_locks(root: Path) -> list[Path]:
    """The trial locks under `root` that some process holds now (a lock file stays when released)."""
    from filelock import FileLock, Timeout

    held = []
    for path in root.rglob(".lock"):
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            held.append(path)
        else:
            lock.release()
    return held


def test_a_trial_another_run_holds_is_no_failure_and_wait_trains_it_when_that_run_dies(tmp_path, capsys):
    import fcntl
    import threading

    out = tmp_path / "X"
    assert cli.main(["sweep", str(sweep_file(tmp_path, seeds="[0]")), "--export", str(out)]) == 0
    first = trial_dirs(out)[0]
    held = open(first / ".lock", "a")  # noqa: SIM115 - another `harness run` (this test) holds the first trial
    fcntl.flock(held, fcntl.LOCK_EX)
    assert cli.main(["run", str(out)]) == 0
    text = capsys.readouterr().out
    assert "000_symmetric-0.4_individual-1_seed0: another `harness run` is training it; skipped" in text
    assert "1 of 2 trials succeeded, 1 running elsewhere" in text and "running elsewhere: another" in text
    assert not (first / X.STATUS_FILE).exists()

    # that process dies without finishing the trial: `--wait` waits for its lock, then trains the trial here
    threading.Timer(1.0, held.close).start()
    assert cli.main(["run", str(out), "--wait"]) == 0
    text = capsys.readouterr().out
    assert "waiting for 1 trial(s) that another `harness run` holds" in text
    assert "2 of 2 trials succeeded" in text and (first / X.STATUS_FILE).read_text() == "finished\n"
    assert not held_locks(out)


@pytest.mark.slow
def test_two_harness_run_of_one_folder_share_its_trials_and_both_succeed(tmp_path):
    """A job array: two `harness run` processes on one export at once. Each trial is trained by one of
    them (the other skips it, or finds it finished), both exit 0, and no lock is left held."""
    out = tmp_path / "X"
    assert cli.main(["sweep", str(sweep_file(tmp_path)), "--export", str(out)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "harness.cli", "run", str(out)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    for folder in trial_dirs(out):
        starts = sum(f"] {folder.name} (" in text for text in outputs)
        assert starts == 1, (folder.name, outputs)  # trained once, by one of the two
        assert (folder / X.STATUS_FILE).read_text() == "finished\n" and history_epochs(folder) == [1, 2]
    assert all("4 of 4 trials succeeded" in text or "running elsewhere" in text for text in outputs)
    assert not held_locks(out)

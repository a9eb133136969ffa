"""End-to-end sweeps on Ray Tune with the real trial (digits, cnn_small, CPU): tracking, failures,
fractional GPUs, resume after Ctrl-C, and a data-parallel trial on a running Ray cluster.

They share one local Ray (conftest's `ray_cluster`: its start costs seconds on two cores): in-process
sweeps run on it, a sweep in a subprocess joins it with --address. The --mps sweep must start a Ray
of its own, so it runs last. All are marked slow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import cli

pytestmark = pytest.mark.slow

ARTIFACTS = ["config.yaml", "inference_head.pt", "metrics.json", "noise_transition.csv"]


def _sweep_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "base:\n"
        "  data: {name: digits, train_subset: 60}\n"
        "  optim: {epochs: 2, batch_size: 64}\n"
        "  run: {device: cpu}\n" + body
    )
    return path


def _clean_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)


def _runs(folder: Path):
    """(sweep runs, trial runs) of the store in `folder`."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    sweeps = [r for r in runs if r.data.tags.get("harness.run_kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("harness.run_kind") == "trial"]
    return client, sweeps, trials


def _max_overlap(runs) -> int:
    """Most runs alive at one moment, from their MLflow start and end times."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    alive = best = 0
    for _, step in events:
        alive += step
        best = max(best, alive)
    return best


def _wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _epochs(trial_dir: Path) -> list[int]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def _epochs_so_far(trial_dir: Path) -> list[int]:
    """`_epochs` of a trial the driver is still writing: none yet, or up to a line it is writing."""
    try:
        return _epochs(trial_dir)
    except (OSError, ValueError):
        return []


def _stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a process we started in its own session, and whatever it started there."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # children left in the group (a Ray head drains for 30 s)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow(seconds=42)
def test_resume_after_ctrl_c_finishes_from_checkpoints_with_one_run_per_trial(
    tmp_path, monkeypatch, capsys, ray_cluster
):
    """Ctrl-C while the second of three trials trains; --resume continues it from its checkpoint,
    leaves the finished one alone, runs the third, and every trial keeps exactly one MLflow run.

    The interrupted sweep is a process of its own (Ctrl-C ends it) that joins the shared Ray with
    --address; the resume runs in this process, on the same Ray. Before the resume, the finished
    trial's run is set back to RUNNING, as when a driver is killed between a trial's end and its
    MLflow update: the resume closes it from Ray's record."""
    _clean_env(monkeypatch, tmp_path)
    path = _sweep_file(
        tmp_path,
        "resume",
        "grid:\n  collab:\n    - {topology: individual, heads: 1}\n    - {topology: simple, heads: 2}\n"
        "    - {topology: hierarchical, heads: 2}\n"
        "max_concurrent: 1\n",
    )
    # all of digits and 8 epochs: the second trial trains for seconds after its first checkpoint,
    # time enough for Ctrl-C to land while it runs
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 8").replace(", train_subset: 60", ""))
    command = [sys.executable, "-m", "harness.cli", "sweep", path.name, "--address", ray_cluster.start()]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    exp = tmp_path / "ray_results" / "resume"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            # one trial at a time: when the second has a checkpoint, the first has finished. Its
            # checkpoint folder appears before the driver has taken it in (the worker writes it, then
            # reports); the driver's result.json holding epoch 2 means epoch 1's checkpoint is known
            # (Tune takes a trial's reports and their checkpoints in order), so Ctrl-C cannot land
            # between the two and leave nothing to resume from
            _wait_for(
                lambda: any(len(_epochs_so_far(d)) >= 2 for d in exp.glob("001_*")),
                300,
                proc,
                "the second trial's first checkpoint, taken in by the driver",
            )
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            _stop_group(proc)
    first_log = (tmp_path / "first.log").read_text()
    assert code == 130, first_log[-3000:]
    assert "interrupted: run the same command with --resume" in first_log
    assert "1 of 3 trials succeeded, 2 unfinished" in first_log, "the trial that never started is listed too"
    _, sweeps, trials = _runs(tmp_path)
    status = {r.info.run_name: r.info.status for r in trials}
    assert status["individual-1 seed0"] == "FINISHED" and status["simple-2 seed0"] == "KILLED"
    assert sweeps[0].info.status == "KILLED"
    first_trial = next(exp.glob("000_*"))
    finished_epochs = _epochs(first_trial)
    interrupted_epochs = _epochs(next(exp.glob("001_*")))
    assert finished_epochs == list(range(1, 9)) and interrupted_epochs[-1] < 8
    client, _, trials = _runs(tmp_path)
    stale = next(r for r in trials if r.info.run_name == "individual-1 seed0")
    client.update_run(stale.info.run_id, status="RUNNING")

    code = cli.main(["sweep", path.name, "--resume"])
    second = capsys.readouterr()
    assert code == 0, (second.out + second.err)[-3000:]
    assert "3 of 3 trials succeeded" in second.out
    assert _epochs(first_trial) == finished_epochs, "a finished trial is not run again"
    resumed = _epochs(next(exp.glob("001_*")))
    assert resumed[-1] == 8 and resumed.count(1) == 1, (
        f"resumed from a checkpoint, not from scratch: {resumed}"
    )

    client, sweeps, trials = _runs(tmp_path)
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in trials) == [
        "hierarchical-2 seed0",
        "individual-1 seed0",
        "simple-2 seed0",
    ]
    for run in trials:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test/acc")] == list(range(1, 9))
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ARTIFACTS

    assert [m.step for m in client.get_metric_history(stale.info.run_id, "test/acc")] == list(range(1, 9))


def _pids_using(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow(seconds=45)
def test_data_parallel_sweep_on_a_running_ray_cluster_survives_a_killed_worker(
    tmp_path, monkeypatch, capsys, ray_cluster, gloo_trial
):
    """A data-parallel trial (resources.workers: 2) on the running (shared) Ray: a Ray Train run of
    two gloo workers with one MLflow run, tagged harness.world_size=2. One worker is SIGKILLed after
    the first checkpoint: Ray Train restarts both from it (same world size), and the trial ends
    exactly where an uninterrupted two-process run of its config (gloo, without Ray) ends.

    The sweep runs in this process, on its Ray; a thread kills the worker. (A driver joining a
    cluster with --address in a process of its own: the resume test.)
    """
    import threading

    from harness import config as C
    from harness.config.sweepfile import load_sweep

    _clean_env(monkeypatch, tmp_path)
    path = _sweep_file(tmp_path, "cluster", "resources: {workers: 2, cpu: 0.5}\n")
    # all of digits and 10 epochs: seconds of training after the first checkpoint, to kill a worker in
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 10").replace(", train_subset: 60", ""))
    train_run = tmp_path / "ray_results" / "cluster" / "ray_train"
    done, killed, problems = threading.Event(), [], []

    def kill_a_worker() -> None:  # once a checkpoint is Ray Train's (its manager has recorded it)
        deadline = time.monotonic() + 300
        while not any(train_run.glob("*/checkpoint_manager_snapshot.json")):
            if done.is_set() or time.monotonic() > deadline:
                problems.append("the sweep ended (or 300 s passed) before the trial's first checkpoint")
                return
            time.sleep(0.1)
        workers = _pids_using("RayTrainWorker")
        if len(workers) != 2:
            problems.append(f"expected the trial's 2 Ray Train workers, found {workers}")
            return
        os.kill(max(workers), signal.SIGKILL)
        killed.append(max(workers))

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        code = cli.main(["sweep", path.name])
    finally:
        done.set()
        killer.join(timeout=10)
    output = capsys.readouterr().out
    assert not problems and killed, problems
    assert code == 0, output[-4000:]
    assert "1 of 1 trials succeeded" in output
    client, sweeps, trials = _runs(tmp_path)
    assert len(sweeps) == 1 and len(trials) == 1
    run = trials[0]
    assert run.info.status == "FINISHED" and run.data.tags["harness.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/acc")] == list(range(1, 11))
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ARTIFACTS
    # the workers ran in the cluster: their output is in its session folder, the restart's included
    logs = "".join(
        p.read_text(errors="replace") for p in ray_cluster.temp.glob("session_*/logs/worker-*.out")
    )
    assert re.search(r"resuming at epoch \d+ of 10\b", logs), (
        "the restarted workers went on from the checkpoint"
    )
    reference = gloo_trial(C.to_dict(load_sweep(path).trials[0].config), tmp_path / "reference", 2)
    for key in ("train/loss", "test/acc", "train/acc_noisy", "test/acc_ensemble"):
        assert run.data.metrics[key] == pytest.approx(reference[key], abs=1e-6), key


@pytest.mark.slow(seconds=20)
def test_sweep_tracks_every_trial_shares_a_gpu_and_reports_failures(
    tmp_path, monkeypatch, capsys, fake_mps_control, no_ray_in_this_process
):
    """Four trials: two succeed, two diverge (the lr 1e6 ones: their loss is NaN after epoch 1, a
    failure a user can meet) and are retried once.

    Ray is told of one GPU and 4 CPUs; each trial asks for gpu 0.5 and cpu 0.5, so the GPU caps
    the sweep at two trials at once -- which still run on the CPU (run.device: cpu). With --mps
    every trial is pointed at the sweep's private MPS daemon (played by a script here).

    The store does not exist when the sweep starts, and two trial processes run at once: every run,
    epoch and artifact still lands, because the driver alone writes the store (a store that each trial
    process created and wrote itself would fail here: docs/architecture.md, "Choices and why").
    """
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    assert not (tmp_path / "mlflow.db").exists()
    path = _sweep_file(
        tmp_path,
        "e2e",
        "grid:\n"
        "  noise.kind: [symmetric]\n"
        "  noise.rate: [0.4]\n"
        "  collab:\n    - {topology: individual, heads: 1}\n    - {topology: simple, heads: 2}\n"
        "  optim.lr: [0.05, 1.0e+6]\n"
        "seeds: [0]\n"
        "resources: {cpu: 0.5, gpu: 0.5}\n"
        "max_failures: 1\n",
    )
    code = cli.main(["sweep", str(path), "--num-cpus", "4", "--num-gpus", "1", "--mps"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 1, out[-3000:]
    assert "CUDA MPS: trials sharing a GPU run their kernels at once" in out
    # CPU trials never reach the daemon, and the sweep says so
    assert "no process connected to the CUDA MPS daemon" in captured.err
    calls = fake_mps_control.read_text().splitlines()
    assert calls[0].startswith("-d|") and "quit" not in calls[0]
    pipe = calls[0].partition("|")[2]
    assert not Path(pipe).exists(), "the daemon is stopped and its folder removed after the sweep"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    assert "2 of 4 trials succeeded, 2 failed" in out
    assert (
        "failed: symmetric-0.4 individual-1 lr=1000000.0 seed0: TrainingDiverged: training loss became nan"
        in out
    )

    client, sweeps, trials = _runs(tmp_path)
    assert len(sweeps) == 1 and sweeps[0].info.run_name == "e2e" and sweeps[0].info.status == "FAILED"
    assert sweeps[0].data.tags["harness.sweep_file"] == str(path)
    assert len(trials) == 4 and len({r.data.tags["harness.trial_key"] for r in trials}) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id for r in trials)
    ok = [r for r in trials if r.info.status == "FINISHED"]
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert sorted(r.info.run_name for r in ok) == sorted(
        f"symmetric-0.4 {c} lr=0.05 seed0" for c in ("individual-1", "simple-2")
    )
    assert {r.data.params["optim.lr"] for r in failed} == {"1000000.0"} and len(failed) == 2
    for run in failed:
        assert "TrainingDiverged: training loss became nan" in run.data.tags["harness.error"]
        assert run.data.tags["harness.retries"] == "1", (
            "a failed trial is retried once before it counts as failed"
        )
    for run in ok:
        p, tags = run.data.params, run.data.tags
        assert (p["data.name"], p["noise.kind"], p["noise.rate"], p["optim.epochs"]) == (
            "digits",
            "symmetric",
            "0.4",
            "2",
        )
        assert p["collab.topology"] in ("individual", "simple") and p["run.device"] == "cpu"
        assert tags["harness.device"] == "cpu" and tags["harness.torch"] and tags["harness.ray_trial_id"]
        assert tags["harness.mps_pipe"] == pipe, "every trial ran with the daemon's pipe in its environment"
        assert {"cost/step_gflops", "cost/step_mem_mb", "cost/infer_gflops"} <= set(run.data.metrics)
        for key in ("test/acc", "train/loss", "train/memorized", "time/epoch_s", "perf/tflops"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], (key, history)
        assert 0.0 <= run.data.metrics["test/acc"] <= 1.0
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ARTIFACTS
        if p["collab.topology"] == "simple":
            assert {"test/acc_head1", "test/acc_ensemble"} <= set(run.data.metrics)
    overlap = _max_overlap(trials)
    assert overlap <= 2, f"at most two gpu: 0.5 trials share the one GPU at once (saw {overlap})"
    assert (tmp_path / "ray_results" / "e2e" / "harness_sweep.json").is_file()

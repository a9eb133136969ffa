"""A packed sweep on Ray Tune with the real trial (digits, cnn_small, CPU): one Tune trial trains the
pack, every member keeps its own MLflow run, results, artifacts and failure, and Ray's retry of the
pack does not retrain the members that finished. Starts Ray: slow."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from harness import cli
from harness import config as C

pytestmark = pytest.mark.slow

ARTIFACTS = ["config.yaml", "inference_head.pt", "metrics.json", "noise_transition.csv"]
BASE = {
    "data.name": "digits",
    "data.train_subset": 60,
    "optim.epochs": 2,
    "optim.batch_size": 64,
    "run.device": "cpu",
}


@pytest.mark.slow(seconds=15)
def test_a_packed_sweep_gives_each_trial_its_own_run_and_retries_only_the_failed_member(
    tmp_path, monkeypatch, capsys, ray_cluster, alone
):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "packed.yaml"
    path.write_text(
        "name: packed\n"
        "base:\n"
        "  data: {name: digits, train_subset: 60}\n"
        "  optim: {epochs: 2, batch_size: 64}\n"
        "  run: {device: cpu}\n"
        "grid:\n  optim.lr: [0.05, 0.02, 10000.0]\n"  # the third diverges
        "pack: 3\nmax_failures: 1\nresources: {cpu: 1}\n"
    )
    code = cli.main(["sweep", str(path)])  # on the shared Ray of this process
    out = capsys.readouterr().out
    assert code == 1, out[-3000:]
    assert "3 trials (3 grid points x 1 seeds); 3 of them in 1 packs of up to 3" in out
    assert "2 of 3 trials succeeded, 1 failed" in out
    assert "failed: lr=10000.0 seed0: TrainingDiverged: training loss became nan" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("packed")
    runs = client.search_runs([exp.experiment_id])
    (sweep,) = [r for r in runs if r.data.tags.get("harness.run_kind") == "sweep"]
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("harness.run_kind") == "trial"}
    assert sweep.info.status == "FAILED" and sorted(trials) == [
        "lr=0.02 seed0",
        "lr=0.05 seed0",
        "lr=10000.0 seed0",
    ]
    assert {r.data.tags["harness.pack"] for r in trials.values()} == {"0:3"}
    assert len({r.data.tags["harness.trial_key"] for r in trials.values()}) == 3
    failed = trials["lr=10000.0 seed0"]
    assert failed.info.status == "FAILED" and failed.data.tags["harness.error"].startswith("TrainingDiverged")
    for name, lr in (("lr=0.05 seed0", 0.05), ("lr=0.02 seed0", 0.02)):
        run = trials[name]
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test/acc")] == [1, 2]
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ARTIFACTS
        assert run.data.params["optim.lr"] == str(lr)
        # the member's numbers are those of the trial trained alone (one thread, as a Ray trial of cpu 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            lone = alone(C.build_config({}, {**BASE, "optim.lr": lr}), tmp_path / name)
        finally:
            torch.set_num_threads(threads)
        for key in ("test/acc", "train/loss", "train/acc_noisy"):
            assert run.data.metrics[key] == lone[key], (name, key)

    # Ray retried the pack once: the finished members were reported from their checkpoints, not retrained
    (trial_dir,) = (tmp_path / "ray_results" / "packed").glob("000_pack0*")
    reports = [
        json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()
    ]
    key = trials["lr=0.05 seed0"].data.tags["harness.trial_key"]
    epochs = [r["harness_members"][key].get("epoch") for r in reports if "epoch" in r["harness_members"][key]]
    assert epochs[:2] == [1, 2] and set(epochs[2:]) == {2} and len(epochs) > 3, epochs
    assert failed.data.tags.get("harness.retries") == "1"

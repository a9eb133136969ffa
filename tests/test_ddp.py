"""Data-parallel trials (harness.train.ddp): N gloo processes equal one process with the same global batch.

The processes are started here with torch.multiprocessing (the gloo_trial fixture), so these
tests check the engine's data-parallel path alone; tests/test_sweep_e2e.py runs it under Ray Train.

Which equality holds: with run.sync_bn, BatchNorm normalizes over the global batch and the
2-process run is the 1-process run up to float rounding: the weights agree to ~1e-6 after ten
steps at lr 0.01, also when the processes' parts differ in size (33 = 17 + 16). Rounding
differences grow with training, as between any two summation orders (measured: ~1e-5 after ten
steps at lr 0.05, ~1e-4 after forty). Without sync_bn each process normalizes with its own part
of the batch: another model, whose weights differ by ~1e-2 after the same ten steps.
"""

from __future__ import annotations

import pytest
import torch

from harness import config as C
from harness.data.loaders import Shard, part_size, shard_positions
from harness.train.checkpoint import load_checkpoint
from harness.train.ddp import ALONE, GlooSyncBatchNorm, World


def tree(topology: str, heads: int, batch_size: int, **run) -> dict:
    """Ten steps: 160 synthetic images, two epochs of five batches, augmented."""
    return {
        "data": {"name": "synthetic", "train_subset": 16, "num_workers": 0},
        "model": {"arch": "cnn_small"},
        "collab": {"topology": topology, "heads": heads},
        "optim": {"epochs": 2, "batch_size": batch_size, "lr": 0.01},
        "run": {"device": "cpu", "seed": 3, **run},
    }


def weights(folder) -> dict[str, torch.Tensor]:
    state = load_checkpoint(folder / "checkpoint" / "state.pt")["model"]
    return {k: v.double() for k, v in state.items() if v.is_floating_point()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "topology, heads, batch_size",
    [("individual", 1, 32), ("hierarchical", 4, 33)],  # 33: parts of 17 and 16 samples
)
def test_two_gloo_workers_equal_one_process_with_the_same_global_batch(
    alone, gloo_trial, tmp_path, topology, heads, batch_size
):
    one = alone(C.build_config(tree(topology, heads, batch_size)), tmp_path / "one")
    two = gloo_trial(tree(topology, heads, batch_size, workers=2, sync_bn=True), tmp_path / "two", 2)
    gloo_trial(tree(topology, heads, batch_size, workers=2), tmp_path / "free", 2)

    w1, w2, wf = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(tmp_path / "free")
    synced, unsynced = max_difference(w1, w2), max_difference(w1, wf)
    assert synced < 1e-5, f"sync_bn: weights differ by {synced}"
    assert unsynced > 1e-3, f"per-process BatchNorm statistics should give another model: {unsynced}"
    # the metrics are reduced over the processes: the full training and test sets, every head
    assert two["train/images"] == one["train/images"] == 160 // batch_size * batch_size
    for key in ("train/loss", "test/acc", "test/acc_ensemble", "train/acc_noisy", "test/pred_top_share"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert [k for k in two if k.startswith("test/acc_head")] == [
        k for k in one if k.startswith("test/acc_head")
    ]
    # rank 0 wrote the artifacts, with the inference head of the original architecture
    assert (tmp_path / "two" / "checkpoint" / "artifacts" / "inference_head.pt").exists()


def test_shards_partition_every_global_batch():
    for n, batch, world in [(10, 4, 3), (12, 4, 2), (7, 7, 3), (5, 2, 4), (1000, 33, 8)]:
        parts = [shard_positions(n, batch, Shard(r, world)) for r in range(world)]
        assert sorted(torch.cat([p for p, _ in parts]).tolist()) == list(range(n))
        for b in range(len(parts[0][1])):  # each global batch is split, consecutive, sizes within one
            sizes = [int(s[b]) for _, s in parts]
            assert sum(sizes) == min(batch, n - b * batch) and max(sizes) - min(sizes) <= 1
    assert [part_size(33, Shard(r, 2)) for r in range(2)] == [17, 16]
    with pytest.raises(ValueError, match="rank"):
        Shard(2, 2)


def test_gloo_sync_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn, x = torch.nn.BatchNorm2d(3), torch.randn(8, 3, 4, 4)
    sync = GlooSyncBatchNorm.of(bn)
    torch.testing.assert_close(sync(x), bn(x))
    assert World() == ALONE and not ALONE.parallel and ALONE.is_main and World.current() == ALONE


def test_config_refuses_bad_worker_counts():
    for value, message in [(0, "positive integer"), ("two", "must be int"), (True, "must be int")]:
        with pytest.raises(C.ConfigError, match=message):
            C.build_config(None, {"run.workers": value})
    with pytest.raises(C.ConfigError, match=r"global batch \(2\) is smaller than run.workers \(4\)"):
        C.build_config(None, {"run.workers": 4, "optim.batch_size": 2})
    with pytest.raises(C.ConfigError, match="alternating updates are one process only"):
        C.build_config(None, {"run.workers": 2, "collab.update": "alternating", "collab.topology": "simple"})


# --- refusals: exit 2 with a message, nothing started or written -------------------------------------


def _sweep(tmp_path, resources: str, extra: str = "") -> str:
    path = tmp_path / "dp.yaml"
    path.write_text(
        "name: dp\nbase:\n  data: {name: digits}\n  optim: {epochs: 1, batch_size: 64}\n"
        f"  run: {{device: cpu}}\n{extra}resources: {resources}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    "resources, extra, message",
    [
        ("{workers: 0}", "", "resources.workers: must be a positive integer (processes per trial), got 0"),
        (
            "{workers: 1.5}",
            "",
            "resources.workers: must be a positive integer (processes per trial), got 1.5",
        ),
        ("{workers: 2, gpu: 0.5}", "", "resources.gpu: with workers > 1 each worker takes 0 or 1 whole GPU"),
        ("{workers: 128}", "", "optim.batch_size: the global batch (64) is smaller than run.workers (128)"),
        (
            "{workers: 2}",
            "grid:\n  run.workers: [1, 2]\n",
            "set a trial's data-parallel processes with resources",
        ),
    ],
)
def test_sweep_files_with_bad_workers_are_refused(tmp_path, capsys, resources, extra, message):
    from harness import cli

    assert cli.main(["validate", _sweep(tmp_path, resources, extra)]) == 2
    assert message in capsys.readouterr().err


def test_a_data_parallel_sweep_cannot_be_exported_for_harness_run(tmp_path, capsys):
    from harness import cli

    code = cli.main(["sweep", _sweep(tmp_path, "{workers: 2}"), "--export", str(tmp_path / "out")])
    assert code == 2 and "need Ray Train" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_harness_train_refuses_a_batch_smaller_than_the_workers(tmp_path, capsys):
    from harness import cli

    out = tmp_path / "run"
    args = [
        "train",
        "--set",
        "run.workers=4",
        "--set",
        "optim.batch_size=2",
        "--out",
        str(out),
        "--no-mlflow",
    ]
    assert cli.main(args) == 2
    assert "global batch (2) is smaller than run.workers (4)" in capsys.readouterr().err
    assert not out.exists()


def test_more_gpu_workers_than_there_are_gpus_is_said_before_anything_starts(monkeypatch):
    from harness.cluster import local
    from harness.cluster.launch import check_resources
    from harness.config.sweepfile import parse_sweep

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _, problems = local.local_resources(C.build_config(None, {"run.workers": 2, "run.device": "cuda"}))
    assert problems == ["run.workers 2 asks for 2 GPUs (one per worker); this machine has 1"]
    with pytest.raises(C.ConfigError, match="cuda:1 names one card"):
        C.build_config(None, {"run.workers": 2, "run.device": "cuda:1"})

    tree = {
        "name": "dp",
        "base": {"optim": {"batch_size": 64}},
        "resources": {"workers": 4, "gpu": 1, "cpu": 2},
    }
    sweep = parse_sweep(tree, source="dp.yaml")
    with pytest.raises(
        ValueError, match=r"gpu: 4 workers x 1 = 4 per trial, the Ray cluster has 2 \(.*only where"
    ):
        check_resources(sweep, {"CPU": 32, "GPU": 2}, local=True)
    # two such trials fit a node of 8 GPUs and 32 CPUs at once (Tune starts no more drivers than that)
    assert check_resources(sweep, {"CPU": 32, "GPU": 8}, local=True) == 2


def test_data_parallel_resources_show_the_drivers_cpu_in_the_sum_and_the_fix(capsys):
    """On a 2-core box, 2 workers x 1 CPU do not fit: the trial's driver takes 0.01 CPU more. The
    message shows the whole sum (not "2 per trial, the cluster has 2") and the --num-cpus that fits."""
    from harness.cluster.launch import check_resources
    from harness.cluster.raytrain import DRIVER_CPU
    from harness.config.sweepfile import parse_sweep

    sweep = parse_sweep({"name": "dp", "resources": {"cpu": 1, "workers": 2}}, source="dp.yaml")
    expected = (
        f"resources do not fit: cpu: 2 workers x 1 + {DRIVER_CPU:g} for the trial's driver = "
        f"{2 + DRIVER_CPU:g} per trial, the Ray cluster has 2 (--num-cpus 3 lets a local Ray offer them"
    )
    with pytest.raises(ValueError) as refused:
        check_resources(sweep, {"CPU": 2}, local=True)
    assert str(refused.value).startswith(expected), str(refused.value)
    assert check_resources(sweep, {"CPU": 3}, local=True) == 1, "the fix it names fits"
    # a cluster may grow: a warning with the same sum, no local fix
    assert check_resources(sweep, {"CPU": 2}, local=False) == 1
    err = capsys.readouterr().err
    assert (
        f"= {2 + DRIVER_CPU:g} per trial, the Ray cluster has 2; trials wait until the cluster grows" in err
    )
    assert "--num-cpus" not in err


def test_harness_train_logs_the_workers_epochs_once_through_the_train_controller(tmp_path, new_mlflow_store):
    """`harness train --set run.workers=N` logs its MLflow run from Ray Train's controller
    (harness.cluster.local.log_epochs, given each report of the workers) and closes it from the driver,
    which first learns what the controller logged (TrialLogger.catch_up): each epoch once, the
    runtime tags, world_size N. A report lost before a restart (epoch 2 here) comes back in the
    history the resumed run replays with its first report. (The Ray wiring: tests/test_sweep_e2e.py.)"""
    from harness.cluster.local import LOCAL_TRIAL_DIR, LOCAL_TRIAL_KEY, log_epochs
    from harness.cluster.report import TrialsReport
    from harness.cluster.transport import TrialSpec
    from harness.tracking import TrialLogger

    uri = new_mlflow_store(tmp_path)
    cfg = C.build_config(None, {"run.workers": 2, "optim.epochs": 3})
    driver = TrialLogger.start_single(cfg, experiment="dp", tracking_uri=uri)
    callback = log_epochs(uri, driver.run_id)  # pickled to the controller in a real run
    env = {"harness.device": "cpu", "harness.host": "node-3"}
    # rank 0's reports, as its worker_loop makes them (harness.cluster.report)
    reports = []
    spec = TrialSpec(0, LOCAL_TRIAL_KEY, "train", LOCAL_TRIAL_DIR, C.to_dict(cfg))
    reporter = TrialsReport([spec], tmp_path, env, lambda result, folder: reports.append(result))
    epochs = [{"epoch": e, "test/acc": 0.5 + e / 10, "train/collapsed": 0.0} for e in (1, 2, 3)]
    reporter.on_epoch(spec, cfg)(1, epochs[0], None)
    reporter.report()
    # epoch 2 was checkpointed but its report never arrived; the restarted workers resume after it
    reporter.replay[spec.key] = epochs[:2]
    reporter.on_epoch(spec, cfg)(3, epochs[2], None)
    reporter.report()
    callback.after_report(None, [reports[0]] * 2, None)
    callback.after_report(None, [reports[1]] * 2, None)
    driver.catch_up()
    driver.finish({"epoch": 3, "test/acc": 0.8, "train/collapsed": 0.0}, None, status="FINISHED")

    run = driver.client.get_run(driver.run_id)
    history = [(m.step, m.value) for m in driver.client.get_metric_history(driver.run_id, "test/acc")]
    assert history == [(1, 0.6), (2, 0.7), (3, 0.8)], "each epoch once, the lost one replayed"
    assert run.info.status == "FINISHED" and run.data.tags["harness.host"] == "node-3"
    assert run.data.tags["harness.world_size"] == "2" and run.data.tags["harness.collapsed"] == "false"

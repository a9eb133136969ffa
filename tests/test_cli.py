"""`harness train` and `harness bench` as a user runs them."""

import json
import subprocess
import sys

import pytest
import torch

from harness.collab import build_training_graph
from harness.optim import SGD
from harness.step import CUDAGraphStep, EagerStep, make_loss_fn, make_train_step

BENCH_KEYS = {
    "topology",
    "heads",
    "arch",
    "batch_size",
    "device",
    "ms_per_step",
    "img_per_s",
    "peak_mem_mb",
    "params",
}


def harness(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_bench_writes_one_record_per_topology(tmp_path):
    out = tmp_path / "bench.json"
    proc = harness(
        "bench",
        "--device",
        "cpu",
        "--arch",
        "cnn_small",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert [r["topology"] for r in records] == ["individual", "instances", "simple", "hierarchical"]
    for r in records:
        assert set(r) >= BENCH_KEYS
        assert r["peak_mem_mb"] is None and r["device"] == "cpu" and r["img_per_s"] > 0
    assert records[1]["params"] == 4 * records[0]["params"]  # four full instances
    assert records[0]["params"] < records[3]["params"] < records[1]["params"]  # sharing saves parameters
    assert "hierarchical" in proc.stdout and "img/s" in proc.stdout


def test_bench_rejects_an_unknown_topology(tmp_path):
    proc = harness("bench", "--device", "cpu", "--topologies", "tree", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown topology 'tree'" in proc.stderr


def test_train_runs_one_trial_and_writes_json(tmp_path):
    proc = harness(
        "train",
        "--no-mlflow",
        "--set",
        "optim.epochs=2",
        "--set",
        "noise.kind=symmetric",
        "--set",
        "noise.rate=0.2",
        "--json",
        "m.json",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2/2" in proc.stdout and "final metrics:" in proc.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["noise/realized_rate"] == pytest.approx(
        0.2, abs=0.01
    )
    assert (tmp_path / "run" / "checkpoint" / "artifacts" / "inference_head.pt").exists()


def test_train_rejects_a_bad_key_before_doing_anything(tmp_path):
    proc = harness("train", "--no-mlflow", "--set", "noise.rte=0.1", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "noise.rte: unknown key; did you mean noise.rate?" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cuda_graph_request_falls_back_to_eager_on_cpu():
    graph = build_training_graph("cnn_small", 10, "simple", 2, in_channels=1)
    opt = SGD(graph.parameters(), lr=0.1)
    step = make_train_step(
        graph,
        opt,
        make_loss_fn(T=2.0, beta=0.5),
        device=torch.device("cpu"),
        amp=True,
        cuda_graph=True,
        batch_size=4,
    )
    assert type(step) is EagerStep
    loss, logits = step(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    assert torch.isfinite(loss) and len(logits) == 2
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CUDAGraphStep(graph, opt, make_loss_fn(T=2.0, beta=0.5), device="cpu", amp=True, batch_size=4)


def test_train_names_the_missing_data_file(tmp_path):
    (tmp_path / "data").mkdir()
    proc = harness(
        "train", "--no-mlflow", "--set", "data.name=cifar10", "--set", "data.root=data", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "expected data/cifar-10-batches-py/data_batch_1" in proc.stderr and "Traceback" not in proc.stderr

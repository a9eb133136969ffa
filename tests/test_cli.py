"""`harness train` and `harness bench` as a user runs them (in this process: conftest's harness_here)."""

import json

import pytest
import torch

from harness.collab import build_training_graph
from harness.collab.methods import CollaborativeLearning
from harness.train.objective import Objective
from harness.train.optim import SGD
from harness.train.step import CUDAGraphStep, EagerStep, make_train_step

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


@pytest.mark.slow(seconds=4)  # four topologies, each counted and timed
def test_bench_writes_one_record_per_topology(harness_here, tmp_path):
    out = tmp_path / "bench.json"
    proc = harness_here(
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


@pytest.mark.slow
def test_bench_concurrent_sums_the_processes_throughput(harness_here, tmp_path):
    out = tmp_path / "bench.json"
    proc = harness_here(
        *("bench", "--device", "cpu", "--arch", "cnn_small", "--batch-size", "8"),
        *("--topologies", "individual", "--steps", "20", "--warmup", "1", "--concurrent", "2"),
        *("--json", str(out)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads(out.read_text())
    assert set(record) >= BENCH_KEYS | {"per_process_img_per_s", "mps"}
    assert record["concurrent"] == 2 and record["mps"] is False
    assert len(record["per_process_img_per_s"]) == 2
    # the total is images over the common wall time: no more than the two rates added up
    assert 0 < record["img_per_s"] <= sum(record["per_process_img_per_s"]) * 1.01
    assert "2 processes at once" in proc.stdout


def test_bench_pack_times_packs_of_each_size_beside_one_trial(harness_here, tmp_path):
    out = tmp_path / "bench.json"
    proc = harness_here(
        *("bench", "--device", "cpu", "--arch", "cnn_small", "--batch-size", "8", "--pack", "1", "3"),
        *("--topologies", "individual,hierarchical", "--steps", "3", "--warmup", "1", "--json", str(out)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert [(r["topology"], r["pack"]) for r in records] == [
        ("individual", 1),
        ("individual", 3),
        ("hierarchical", 1),
        ("hierarchical", 3),
    ]
    for r in records:
        assert set(r) >= BENCH_KEYS | {"img_per_s_per_trial"}
        # a step of a pack is a step of every member: all the images count
        assert r["img_per_s"] == pytest.approx(r["pack"] * r["img_per_s_per_trial"])
    assert "packs of 1 3 trials" in proc.stdout and "pack 3" in proc.stdout and "1 (alone)" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--pack", "0"), "--pack takes pack sizes >= 1, got 0"),
        (("--mps",), "--mps shares a CUDA device among --concurrent N processes"),
        (("--mps", "--concurrent", "2"), "--mps shares a CUDA device"),
        (("--device", "cuda"), "'cuda' asked for, but CUDA is not available here"),
    ],
)
def test_bench_rejects_what_this_machine_cannot_do(harness_here, tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = () if "--device" in args else ("--device", "cpu")
    proc = harness_here("bench", *device, *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_rejects_an_unknown_topology(harness_here, tmp_path):
    proc = harness_here("bench", "--device", "cpu", "--topologies", "tree", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown topology 'tree'" in proc.stderr


def test_bench_loader_times_each_decode_mode_on_the_jpegs_it_writes(harness_here, tmp_path):
    out = tmp_path / "loader.json"
    proc = harness_here(
        *("bench", "--loader", "--device", "cpu", "--images", "24", "--jpeg-size", "64x48"),
        *("--crop", "32", "--batch-size", "4", "--workers", "0", "--json", str(out)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert [(r["decode"], r["split"]) for r in records] == [
        ("workers", "train"),
        ("workers", "eval"),
        ("device", "train"),
        ("device", "eval"),
    ]
    # the first batch is untimed: 5 of the 6 batches are
    assert all(r["images_timed"] == 20 and r["img_per_s"] > 0 and r["jpeg_kb"] > 0 for r in records)
    assert "24 JPEGs of 64x48" in proc.stdout and "ms/batch" in proc.stdout
    assert "device (cpu)" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--decode", "gpu"), "--decode takes workers and/or device, got 'gpu'"),
        (("--jpeg-size", "500"), "--jpeg-size must be WIDTHxHEIGHT"),
        (("--images", "4", "--batch-size", "4"), "raise --images"),
    ],
)
def test_bench_loader_refuses_bad_options(harness_here, tmp_path, args, message):
    proc = harness_here("bench", "--loader", "--device", "cpu", "--workers", "0", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


def test_train_runs_one_trial_and_writes_json(harness_here, tmp_path):
    proc = harness_here(
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


def test_train_rejects_a_bad_key_before_doing_anything(harness_here, tmp_path):
    proc = harness_here("train", "--no-mlflow", "--set", "noise.rte=0.1", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "noise.rte: unknown key; did you mean noise.rate?" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_without_cuda_refuses_a_cuda_run_before_writing_anything(harness_here, tmp_path):
    # with MLflow on: the refusal must come before the MLflow run is created
    env_args = ("--set", "run.device=cuda", "--out", "run", "--experiment", "x")
    proc = harness_here("train", *env_args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "run.device: 'cuda' asked for, but CUDA is not available here; use cpu or auto" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_cuda_graph_request_falls_back_to_eager_on_cpu():
    graph = build_training_graph("cnn_small", 10, "simple", 2, in_channels=1)
    opt = SGD(graph.parameters(), lr=0.1)
    step = make_train_step(
        graph,
        opt,
        Objective(CollaborativeLearning(heads=2)),
        device=torch.device("cpu"),
        amp=True,
        cuda_graph=True,
        batch_size=4,
    )
    assert type(step) is EagerStep
    loss, logits, kept = step(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    assert torch.isfinite(loss) and len(logits) == 2 and kept is None  # cl trains on every sample
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CUDAGraphStep(
            graph, opt, Objective(CollaborativeLearning(heads=2)), device="cpu", amp=True, batch_size=4
        )


def test_train_names_the_missing_data_file(harness_here, tmp_path):
    (tmp_path / "data").mkdir()
    proc = harness_here(
        "train", "--no-mlflow", "--set", "data.name=cifar10", "--set", "data.root=data", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "expected data/cifar-10-batches-py/data_batch_1" in proc.stderr and "Traceback" not in proc.stderr

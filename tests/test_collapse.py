"""Collapse: the recipe that keeps collaborative runs learning, and the detector that flags a run that did not.

A collapsed network predicts one class for (almost) every input; harness.train.evaluate defines it and
records train/collapsed per epoch, the tracking tags the run, reports leave it out (test_reports).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import config as C
from harness.collab import build_training_graph
from harness.collab.methods import CollaborativeLearning
from harness.models import build_backbone, zero_init_residual_
from harness.run.layout import TrialFolder
from harness.train import evaluate as engine_evaluate
from harness.train.device import Place
from harness.train.evaluate import COLLAPSE_SHARE, class_counts, is_collapsed
from harness.train.loop import train_one_epoch
from harness.train.objective import Objective
from harness.train.optim import SGD
from harness.train.step import EagerPack, EagerStep, StepOutput

CPU = Place(torch.device("cpu"))
K = 10


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


# --- the detector on constructed predictions -------------------------------------------------------


def one_hot_logits(classes: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, K).float() * 5.0


def test_class_counts_counts_argmax_per_class():
    logits = one_hot_logits(torch.tensor([3, 3, 1, 3, 0]))
    assert class_counts(logits).tolist() == [1, 1, 0, 3, 0, 0, 0, 0, 0, 0]


def test_threshold_is_the_share_of_the_most_frequent_prediction():
    assert COLLAPSE_SHARE == 0.95
    assert is_collapsed(0.95) and is_collapsed(1.0) and is_collapsed(0.2, 0.97)
    assert not is_collapsed(0.94) and not is_collapsed(0.1, 0.84)


class FakeLoader:
    """Batches of (x, y, clean) whose predictions a FakeStep decides."""

    def __init__(self, predictions: list[torch.Tensor]):
        self.predictions = predictions

    def __iter__(self):
        for i, pred in enumerate(self.predictions):
            clean = torch.arange(len(pred)) % K
            yield SimpleNamespace(x=torch.full((len(pred),), i), y=clean, clean=clean)


def fake_step(predictions):
    def step(x, y):
        return StepOutput(torch.tensor(2.3), [one_hot_logits(predictions[int(x[0])])], None)

    return step


def epoch_share(predictions: list[torch.Tensor]) -> float:
    training = SimpleNamespace(
        step=fake_step(predictions),
        scheduler=SimpleNamespace(step=lambda: None),
        after_step=lambda: None,
        loss_weight=1.0,
    )
    step = EagerPack([training.step])  # a pack of one, as a lone trial trains
    (metrics,) = train_one_epoch(step, [training], [FakeLoader(predictions)], CPU, kept_heads=[0])
    return metrics["train/pred_top_share"]


def test_one_class_for_every_sample_is_collapsed():
    share = epoch_share([torch.full((64,), 7) for _ in range(5)])
    assert share == 1.0 and is_collapsed(share)


def test_a_constant_class_that_changes_from_batch_to_batch_is_collapsed():
    # BatchNorm in train mode: a dead net's constant output moves with each batch's statistics.
    # Counted over the epoch this looks like 10 % per class; counted per batch it is 100 %.
    share = epoch_share([torch.full((64,), b % K) for b in range(10)])
    assert share == 1.0 and is_collapsed(share)


def test_a_classifier_of_balanced_classes_is_not_collapsed():
    share = epoch_share([torch.arange(64) % K for _ in range(5)])  # right on every sample
    assert share == pytest.approx(7 / 64) and not is_collapsed(share)
    # even one that puts most samples in one class (but not 95 %) is not flagged
    mostly = [torch.where(torch.arange(100) < 90, 2, torch.arange(100) % K) for _ in range(3)]
    assert not is_collapsed(epoch_share(mostly))


# --- the detector, the stop and the artifacts through a trial --------------------------------------

QUICK = {"optim.epochs": 4, "optim.batch_size": 64, "optim.lr": 0.05, "run.device": "cpu"}


def test_a_learning_run_is_not_collapsed_and_logs_both_shares(alone, tmp_path):
    cfg = C.build_config({}, {**QUICK, "optim.epochs": 2, "data.train_subset": 60})
    final = alone(cfg, tmp_path / "run")
    assert final["train/collapsed"] == 0.0 and final["train/collapsed_epochs"] == 0
    assert 0.0 < final["train/pred_top_share"] < COLLAPSE_SHARE
    assert 0.0 < final["test/pred_top_share"] < COLLAPSE_SHARE


def test_stop_on_collapse_ends_the_trial_with_its_artifacts(alone, tmp_path, monkeypatch):
    # Every epoch counts as collapsed when the threshold is 0: the stop rule is what is tested.
    monkeypatch.setattr(engine_evaluate, "COLLAPSE_SHARE", 0.0)
    cfg = C.build_config({}, {**QUICK, "data.train_subset": 30, "run.stop_on_collapse": 2})
    seen, lines = [], []
    final = alone(cfg, tmp_path / "run", lambda e, m, c: seen.append((e, c)), log=lines.append)
    assert [e for e, _ in seen] == [1, 2]  # of 4 epochs
    assert final["train/collapsed"] == 1.0 and final["train/collapsed_epochs"] == 2
    assert seen[-1][1] is not None  # the last epoch wrote a checkpoint ...
    artifacts = tmp_path / "run" / "checkpoint" / "artifacts"
    assert json.loads((artifacts / "metrics.json").read_text())["train/collapsed"] == 1.0  # ... and artifacts
    assert any("stopping: the kept head has been collapsed for 2 epochs" in line for line in lines)
    assert any("COLLAPSED" in line for line in lines)


def test_without_stop_on_collapse_a_collapsed_run_trains_every_epoch(alone, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_evaluate, "COLLAPSE_SHARE", 0.0)
    cfg = C.build_config({}, {**QUICK, "optim.epochs": 3, "data.train_subset": 30})
    seen = []
    final = alone(cfg, tmp_path / "run", lambda e, m, c: seen.append(e))
    assert seen == [1, 2, 3] and final["train/collapsed_epochs"] == 3


def test_the_collapse_count_survives_a_resume(tmp_path, monkeypatch, interrupted_and_resumed):
    monkeypatch.setattr(engine_evaluate, "COLLAPSE_SHARE", 0.0)
    cfg = C.build_config({}, {**QUICK, "data.train_subset": 30, "run.stop_on_collapse": 3})
    final, epochs = interrupted_and_resumed(cfg, tmp_path / "run", stop=2)
    assert epochs == [3] and final["train/collapsed_epochs"] == 3
    assert TrialFolder(tmp_path / "run").has_checkpoint


def test_stop_on_collapse_must_not_be_negative():
    with pytest.raises(C.ConfigError, match="run.stop_on_collapse: must be >= 0"):
        C.build_config({}, {"run.stop_on_collapse": -1})


def test_harness_train_tags_a_collapsed_run_and_the_report_leaves_it_out(
    tmp_path, monkeypatch, new_mlflow_store
):
    """Writer to reader: the tag harness train's tracking sets is the one the report reads."""
    pytest.importorskip("mlflow")
    from harness.cli import train as train_cli
    from reports.build import build_report

    uri = new_mlflow_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_evaluate, "COLLAPSE_SHARE", 0.0)
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser, "train")
    sets = [f"{k}={v}" for k, v in {**QUICK, "optim.epochs": 1, "data.train_subset": 30}.items()]
    args = parser.parse_args(
        ["--experiment", "collapse", "--out", str(tmp_path / "run"), *sum([["--set", s] for s in sets], [])]
    )
    assert train_cli.main(args) == 0

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("collapse").experiment_id])
    assert run.data.tags["harness.collapsed"] == "true"
    assert run.data.metrics["train/collapsed"] == 1.0

    result = build_report(experiment="collapse", out_dir=tmp_path / "report", tracking_uri=uri)
    assert result.tables["collapsed"].run_id.tolist() == [run.info.run_id]
    assert result.tables["accuracy"]["n"].tolist() == [0]  # left out of the mean
    assert result.tables["failed"].empty  # collapsed is not failed
    assert "Collapsed runs" in (tmp_path / "report" / "report.md").read_text()


# --- the recipe: zero-init residual keeps the collaborative graph out of collapse --------------------


def test_zero_init_residual_starts_every_block_as_the_identity():
    expected = {
        "resnet20": 9,
        "resnet32": 15,
        "wrn28_10": 12,
        "resnet50": 16,
        "densenet40": 0,
        "cnn_small": 0,
    }
    for arch, blocks in expected.items():
        plain = build_backbone(arch, K, zero_init_residual=False)
        assert zero_init_residual_(plain) == blocks, arch
    net = build_backbone("resnet32", K)
    x = torch.randn(2, 16, 8, 8)
    block = net.stages[0][0].eval()
    torch.testing.assert_close(block(x), torch.relu(x))  # identity branch, then the block's ReLU


def test_zero_init_residual_is_a_config_key_that_reaches_the_graph(tmp_path):
    cfg = C.build_config({}, {**QUICK, "model.arch": "resnet20", "model.zero_init_residual": False})
    assert C.to_flat(cfg)["model.zero_init_residual"] is False
    assert C.build_config({}, {}).model.zero_init_residual is True


@pytest.fixture(scope="session")
def cifar_batches(cifar10_root):
    """conftest's 1,000 real CIFAR-10 training images (clean labels) in a fixed order, normalized like
    the loaders do; once per test process, as both tests that use it may be run apart."""
    from harness.data import load_dataset

    data = load_dataset("cifar10", root=str(cifar10_root))
    x = data.train_x.float() / 255.0
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    y = torch.as_tensor(data.train_y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def first_steps(batches, *, zero_init_residual: bool, steps: int, batch: int = 32):
    """The paper's recipe on a hierarchical 4-head ResNet-32: SGD lr 0.1, Nesterov 0.9, wd 5e-4, T=2, beta=0.5."""
    x, y = batches
    torch.manual_seed(0)
    graph = build_training_graph("resnet32", K, "hierarchical", 4, zero_init_residual=zero_init_residual)
    opt = SGD(graph.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step = EagerStep(graph, opt, Objective(CollaborativeLearning(heads=4)), device="cpu", amp=False)
    losses, scales = [], []
    for i in range(steps):
        j = (i * batch) % (len(y) - batch)
        loss, logits, _ = step(x[j : j + batch], y[j : j + batch])
        losses.append(loss.item())
        scales.append(logits[0].std().item())
    return losses, scales


# A constant uniform prediction of 4 heads: each head's loss is beta * ln K + (1 - beta) * T^2 * ln K.
CONSTANT_LOSS = 4 * (0.5 + 0.5 * 4) * math.log(K)


@pytest.mark.slow(seconds=41)
def test_hierarchical_graph_learns_at_lr_0_1_from_its_first_steps(cifar_batches):
    """Regression: with the plain He init this graph's logits blew up within a few steps and it ended
    at a constant output (loss pinned at CONSTANT_LOSS); zero-init residual keeps it learning."""
    losses, scales = first_steps(cifar_batches, zero_init_residual=True, steps=30)
    assert max(scales) < 2.0, scales  # the logit scale stays bounded
    late = sum(losses[-5:]) / 5
    assert late < CONSTANT_LOSS - 0.2, (late, losses)  # measured: 22.69 (He init: 23.13)


@pytest.mark.slow(seconds=9)
def test_plain_he_init_blows_the_logits_up_in_its_first_steps(cifar_batches):
    """The cause, kept as evidence: without zero-init the same steps push the logit scale past 3."""
    _, scales = first_steps(cifar_batches, zero_init_residual=False, steps=6)
    assert max(scales) > 3.0, scales


def test_sweep_summary_names_collapsed_trials():
    from harness.cluster.outcomes import SweepOutcome, format_summary
    from harness.run.outcome import TrialOutcome
    from harness.run.state import TrialState

    finished, collapsed = (
        {"test/acc": acc, "train/collapsed": flag} for acc, flag in ((0.61, 0.0), (0.10, 1.0))
    )
    trials = [
        TrialOutcome(0, "sym-0.4 individual seed0", "a", TrialState.of_end(finished), finished),
        TrialOutcome(1, "sym-0.4 hierarchical-4 seed0", "b", TrialState.of_end(collapsed), collapsed),
    ]
    text = format_summary(SweepOutcome(trials, Path("ray_results/x"), "run123", "sqlite:///m.db"))
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}
    assert "ok, collapsed" in rows["1"] and "collapsed" not in rows["0"]
    assert "1 trial(s) ended collapsed" in text and "2 of 2 trials succeeded" in text


@pytest.mark.slow(seconds=3)
def test_soft_target_ramp_grows_over_its_epochs_and_survives_a_resume(
    alone, tmp_path, interrupted_and_resumed
):
    overrides = {
        **QUICK,
        "data.train_subset": 40,
        "collab.topology": "simple",
        "collab.heads": 2,
        "collab.soft_rampup_epochs": 2,
        "optim.epochs": 3,
    }
    cfg = C.build_config({}, overrides)
    weights = []
    straight = alone(cfg, tmp_path / "a", lambda e, m, c: weights.append(m["train/soft_weight"]))
    assert weights == [0.5, 1.0, 1.0]
    paper = alone(C.build_config({}, {**overrides, "collab.soft_rampup_epochs": 0}), tmp_path / "b")
    assert paper["train/soft_weight"] == 1.0 and paper["train/loss"] != straight["train/loss"]

    resumed, epochs = interrupted_and_resumed(cfg, tmp_path / "c", stop=1)  # mid-ramp
    assert epochs == [2, 3]
    assert resumed["train/loss"] == straight["train/loss"] and resumed["test/acc"] == straight["test/acc"]

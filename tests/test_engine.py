"""The engine end to end on the CPU: it learns, it is deterministic, it resumes exactly, it stops on NaN."""

import json

import pytest
import torch

from harness import config as C
from harness.train.loop import TrainingDiverged

QUICK = {"optim.epochs": 3, "optim.batch_size": 64, "optim.lr": 0.05, "run.device": "cpu"}


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def trial(alone, tmp_path):
    """`trial(name, **overrides)`: a quick digits trial trained alone in tmp_path/name; its final metrics."""

    def run(name, **overrides):
        return alone(C.build_config({}, {**QUICK, **overrides}), tmp_path / name)

    return run


pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_learns_without_noise(trial, tmp_path):
    final = trial("clean", **{"optim.epochs": 15})
    assert final["test/acc"] >= 0.9, final
    assert "train/memorized" not in final, "nothing is flipped: a share of no samples is not logged (not 0)"
    assert final["train/acc_clean"] == final["train/acc_noisy"], "the labels trained on are the true ones"
    assert final["model/train_params"] == final["model/inference_params"]


def test_hierarchical_heads_all_learn_and_metrics_are_complete(trial, tmp_path):
    final = trial(
        "hier",
        **{
            "collab.topology": "hierarchical",
            "collab.heads": 4,
            "noise.kind": "symmetric",
            "noise.rate": 0.4,
            "optim.epochs": 6,
        },
    )
    for key in [
        "test/acc",
        "test/acc_ensemble",
        "train/loss",
        "train/acc_noisy",
        "train/acc_clean",
        "train/memorized",
        "train/collapsed",
        "time/epoch_s",
        "perf/img_per_s",
    ] + [f"test/acc_head{h}" for h in range(4)]:
        assert key in final, key
        if key.startswith(("test/", "train/acc", "train/mem")):
            assert 0.0 <= final[key] <= 1.0
    assert min(final[f"test/acc_head{h}"] for h in range(4)) > 0.5
    assert final["train/collapsed"] == 0.0  # it learned
    assert final["test/acc"] == final["test/acc_head0"]
    # the inference network is the original one, however many heads were trained
    assert final["model/train_params"] > 2 * final["model/inference_params"]
    assert abs(final["noise/realized_rate"] - 0.4) < 0.01


def test_same_seed_same_result_other_seed_differs(trial, tmp_path):
    a = trial("a", **{"noise.kind": "symmetric", "noise.rate": 0.2})
    b = trial("b", **{"noise.kind": "symmetric", "noise.rate": 0.2})
    c = trial("c", **{"noise.kind": "symmetric", "noise.rate": 0.2, "run.seed": 1})
    assert a["train/loss"] == b["train/loss"] and a["test/acc"] == b["test/acc"]
    assert a["train/loss"] != c["train/loss"]


def test_resume_from_checkpoint_reaches_the_same_result(trial, tmp_path, interrupted_and_resumed):
    overrides = {
        "collab.topology": "simple",
        "collab.heads": 2,
        "noise.kind": "pairflip",
        "noise.rate": 0.3,
        "optim.epochs": 4,
    }
    straight = trial("straight", **overrides)
    cfg = C.build_config({}, {**QUICK, **overrides})
    resumed, epochs = interrupted_and_resumed(cfg, tmp_path / "resumed", stop=2)
    assert epochs == [3, 4]
    for key in ["train/loss", "test/acc", "test/acc_head1", "train/memorized"]:
        assert resumed[key] == straight[key], key


def test_final_epoch_writes_checkable_artifacts(trial, tmp_path):
    final = trial("art", **{"noise.kind": "symmetric", "noise.rate": 0.2, "optim.epochs": 1})
    art = tmp_path / "art" / "checkpoint" / "artifacts"
    assert C.load_yaml(art / "config.yaml")["noise"]["rate"] == 0.2
    rows = (art / "noise_transition.csv").read_text().splitlines()
    assert len(rows) == 11 and abs(float(rows[1].split(",")[1]) - 0.8) < 0.02  # P(observed 0 | true 0)
    assert json.loads((art / "metrics.json").read_text())["test/acc"] == final["test/acc"]
    head = torch.load(art / "inference_head.pt", weights_only=True)
    assert (
        sum(v.numel() for k, v in head["state_dict"].items() if "running" not in k and "num_batches" not in k)
        == final["model/inference_params"]
    )


def test_divergence_stops_with_a_clear_error(trial, tmp_path):
    with pytest.raises(TrainingDiverged, match="loss became nan|loss became inf"):
        trial(
            "nan",
            **{"optim.lr": 1e6, "optim.epochs": 2, "optim.nesterov": False, "optim.momentum": 0.0},
        )


def test_alternating_update_trains_every_head(trial, tmp_path):
    final = trial(
        "alt",
        **{"collab.topology": "simple", "collab.heads": 2, "collab.update": "alternating", "optim.epochs": 6},
    )
    assert min(final["test/acc_head0"], final["test/acc_head1"]) > 0.5


@pytest.mark.parametrize("heads", [2, 4])
def test_rescale_loss_scales_the_loss_fit_trains_on_by_one_over_the_heads(trial, tmp_path, heads):
    # one batch per epoch (60 images, batch 64): train/loss is the loss of the first step, before any update
    one_step = {
        "data.train_subset": 6,
        "optim.epochs": 1,
        "collab.topology": "hierarchical",
        "collab.heads": heads,
        "optim.batch_size": 64,
    }
    summed = trial("none", **one_step, **{"collab.rescale": "none"})
    scaled = trial("loss", **one_step, **{"collab.rescale": "loss"})
    assert summed["train/steps"] == 1
    assert scaled["train/loss"] == pytest.approx(summed["train/loss"] / heads, rel=1e-6)

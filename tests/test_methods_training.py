"""The peer methods in training (harness.collab.methods through the engine): Co-teaching's selection
works on real noisy labels, its kept share follows its schedule, a pack of method trials equals its
members trained alone, and a config a method cannot train with is refused naming its key.

(The methods' rules against references written from the papers, on fixed batches: test_methods.py.)
"""

from __future__ import annotations

import math

import pytest

from harness import config as C
from harness.collab.methods import forget_rate
from harness.run.lifecycle import TrialRun, train_trials
from harness.run.state import TrialState

pytestmark = pytest.mark.usefixtures("one_thread")

PAIR = {"collab.topology": "instances", "collab.heads": 2}
NOISY = {"noise.kind": "symmetric", "noise.rate": 0.4, "optim.batch_size": 64, "optim.lr": 0.05}


def epochs_of(cfg, folder):
    """A trial trained alone: its epochs' metrics, in order."""
    epochs = []
    (result,) = train_trials([TrialRun(cfg, folder, lambda e, m, c: epochs.append(m), log=lambda _: None)])
    assert result.state is TrialState.FINISHED, result.traceback
    return epochs


@pytest.mark.slow(seconds=3)
def test_coteaching_keeps_its_scheduled_share_and_selects_clean_labels_on_noisy_digits(tmp_path):
    cfg = C.build_config(
        {}, {**PAIR, **NOISY, "collab.method": "coteaching", "collab.forget_epochs": 2, "optim.epochs": 6}
    )
    epochs = epochs_of(cfg, tmp_path)
    batch = 64  # digits' 1347 training images: 21 full batches (the last partial one is dropped)
    for epoch, m in enumerate(epochs, 1):
        rate = forget_rate(epoch, 0.4, 2)  # the published R(t): 0, 0.2, then 0.4
        assert m["train/kept"] == math.floor((1 - rate) * batch) / batch, epoch
    clean_share = 1 - epochs[0]["noise/realized_rate"]  # 0.6 of the labels are true
    precision = [m["train/kept_precision"] for m in epochs]
    assert precision[0] == pytest.approx(clean_share, abs=0.01), "epoch 1 keeps everything"
    assert precision[-1] > clean_share + 0.2, f"selection finds the clean labels: {precision}"


def test_a_method_that_trains_on_every_sample_logs_no_selection(tmp_path):
    cfg = C.build_config(
        {}, {**PAIR, **NOISY, "collab.method": "dml", "optim.epochs": 1, "data.train_subset": 20}
    )
    (m,) = epochs_of(cfg, tmp_path)
    assert "train/kept" not in m and "train/kept_precision" not in m and 0 <= m["test/acc"] <= 1


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(("time/", "perf/"))}


def test_a_pack_of_method_trials_ends_as_its_members_do_alone(tmp_path):
    """Co-teaching trials differing in forget rate, seed and noise train as one step, each exactly as
    alone (a pack may mix forget rates: each member's schedule lives in its own device tensors)."""
    base = {**PAIR, **NOISY, "collab.method": "coteaching", "collab.forget_epochs": 1, "optim.epochs": 2}
    base["data.train_subset"] = 30
    members = [
        {"run.seed": 0, "collab.forget_rate": 0.2},
        {"run.seed": 1, "collab.forget_rate": "auto", "noise.rate": 0.3},
        {"run.seed": 2, "collab.forget_rate": 0.5, "collab.forget_exponent": 2.0},
    ]
    configs = [C.build_config({}, {**base, **m}) for m in members]
    packed = [[] for _ in configs]
    runs = [
        TrialRun(
            cfg, tmp_path / f"p{i}", lambda e, m, c, i=i: packed[i].append(untimed(m)), log=lambda _: None
        )
        for i, cfg in enumerate(configs)
    ]
    assert [r.state for r in train_trials(runs)] == [TrialState.FINISHED] * 3
    for i, cfg in enumerate(configs):
        assert packed[i] == [untimed(m) for m in epochs_of(cfg, tmp_path / f"a{i}")], f"member {i}"
    kept = [p[-1]["train/kept"] for p in packed]
    assert len(set(kept)) == 3, f"each member kept its own share: {kept}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"collab.forget_rate": 1.5}, "collab.forget_rate: must be auto or a number in [0, 1), got 1.5"),
        ({"collab.heads": 3}, "collab.heads: coteaching trains exactly two networks"),
        ({"collab.topology": "individual", "collab.heads": 1}, "collab.heads: coteaching trains exactly two"),
        (
            {"noise.kind": "none", "noise.rate": 0.0},
            "collab.forget_rate: auto takes the trial's noise rate, but noise kind none at rate 0 has none",
        ),
        ({"collab.update": "alternating"}, "collab.update: alternating updates are collaborative learning's"),
    ],
)
def test_a_config_the_method_cannot_train_is_refused_naming_its_key(
    harness_here, tmp_path, overrides, message
):
    sets = {**PAIR, **NOISY, "collab.method": "coteaching", **overrides}
    args = ["train", "--no-mlflow", "--out", str(tmp_path / "run")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    done = harness_here(*args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_forget_rate_auto_is_the_noise_rate_and_for_given_labels_their_own_rate(tmp_path):
    from harness.collab.methods.rules import resolve_forget_rate

    assert resolve_forget_rate("auto", "symmetric", 0.5) == 0.5
    assert resolve_forget_rate("auto", "asymmetric", 0.4) == 0.2  # JoCoR's rule, for every method
    assert resolve_forget_rate(0.2, "human", 0.0, labels_rate=0.4) == 0.2
    # matrix noise: the share of the drawn training labels that are wrong (CIFAR-N's label sets alike)
    k, off = 10, 0.3
    matrix = [[1 - off if i == j else (off if j == (i + 1) % k else 0.0) for j in range(k)] for i in range(k)]
    overrides = {**PAIR, **NOISY, "noise.kind": "matrix", "noise.rate": 0.0, "noise.matrix": matrix}
    overrides |= {"collab.method": "coteaching", "collab.forget_epochs": 1, "optim.epochs": 2}
    epochs = epochs_of(C.build_config({}, {**overrides, "data.train_subset": 30}), tmp_path)
    realized = epochs[0]["noise/realized_rate"]
    assert realized == pytest.approx(off, abs=0.02)
    assert epochs[1]["train/kept"] == math.floor((1 - realized) * 64) / 64

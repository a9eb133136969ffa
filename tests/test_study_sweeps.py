"""The paper-style sweep files hold out a noisy validation split, and the baselines and peers studies have
their methods.
(Every sweep file also validates: tests/test_sweep_validate.py.)"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from harness.config.sweepfile import load_sweep

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
# short GPU checks with committed results keep their recipe; ImageNet has its own val/ folder
NO_HOLDOUT = {"cifar10-gpu-short", "imagenet-resnet50", "quickstart", "peers-digits"}


def test_paper_style_sweeps_hold_out_five_percent_with_noisy_labels():
    studies = [p for p in sorted(SWEEPS.glob("*.yaml")) if p.stem not in NO_HOLDOUT]
    assert len(studies) >= 12
    for path in studies:
        data = yaml.safe_load(path.read_text())["base"]["data"]
        assert data.get("val_fraction") == 0.05, path.name
    quick = yaml.safe_load((SWEEPS / "quickstart.yaml").read_text())["base"]["data"]
    assert quick["val_fraction"] == 0.1  # digits is small: 135 held-out images


def test_the_baselines_study_crosses_two_graphs_with_four_label_terms(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    sweep = load_sweep(SWEEPS / "cifar10-baselines.yaml")
    methods = {
        (c.collab.topology, c.collab.heads, c.optim.label_loss, c.optim.label_smoothing)
        for c in (t.config for t in sweep.trials)
    }
    assert methods == {
        (topology, heads, loss, eps)
        for topology, heads in (("individual", 1), ("hierarchical", 4))
        for loss, eps in (("ce", 0.0), ("ce", 0.1), ("gce", 0.0), ("sce", 0.0))
    }
    configs = [t.config for t in sweep.trials]
    assert {(c.noise.kind, c.noise.rate) for c in configs} == {("symmetric", r) for r in (0.2, 0.4, 0.6, 0.8)}
    assert {c.run.seed for c in configs} == {0, 1, 2} and len(configs) == 8 * 4 * 3
    assert all(
        (c.model.arch, c.optim.epochs, c.optim.gce_q, c.data.val_fraction) == ("resnet32", 200, 0.7, 0.05)
        for c in configs
    )


PEERS = {
    ("cl", "individual", 1),
    ("cl", "hierarchical", 4),
    ("dml", "instances", 2),
    ("coteaching", "instances", 2),
    ("coteaching", "simple", 2),  # two heads sharing the ILRs up to the fork
    ("coteaching_plus", "instances", 2),
    ("jocor", "instances", 2),
}


def test_the_peers_study_puts_every_method_under_every_noise(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data" / "cifar-n").mkdir(parents=True)
    labels = {"worse_label": list(range(10)) * 5000, "aggre_label": list(range(10)) * 5000}
    torch.save(
        {k: torch.tensor(v) for k, v in labels.items()}, tmp_path / "data" / "cifar-n" / "CIFAR-10_human.pt"
    )
    configs = [t.config for t in load_sweep(SWEEPS / "cifar10-peers.yaml").trials]
    assert {(c.collab.method, c.collab.topology, c.collab.heads) for c in configs} == PEERS
    noises = {(c.noise.kind, c.noise.rate if c.noise.kind != "human" else c.noise.label_set) for c in configs}
    assert noises == {
        ("symmetric", 0.2), ("symmetric", 0.5), ("symmetric", 0.8), ("pairflip", 0.45),
        ("human", "worse"), ("human", "aggre"),
    }  # fmt: skip
    assert len(configs) == 7 * 6 * 3 and {c.run.seed for c in configs} == {0, 1, 2}
    assert {(c.model.arch, c.optim.epochs, c.collab.forget_rate) for c in configs} == {
        ("resnet32", 200, "auto")
    }


def test_the_digits_peers_sweep_runs_every_method_on_the_cpu():
    configs = [t.config for t in load_sweep(SWEEPS / "peers-digits.yaml").trials]
    assert {(c.collab.method, c.collab.topology, c.collab.heads) for c in configs} == PEERS
    assert {(c.data.name, c.noise.kind, c.noise.rate, c.run.device) for c in configs} == {
        ("digits", "symmetric", 0.4, "cpu")
    }
    assert {c.run.seed for c in configs} == {0, 1}

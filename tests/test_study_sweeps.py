"""The paper-style sweep files hold out a noisy validation split, and the baselines study has its methods.
(Every sweep file also validates: tests/test_sweep_validate.py.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.config.sweepfile import load_sweep

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
# short GPU checks with committed results keep their recipe; ImageNet has its own val/ folder
NO_HOLDOUT = {"cifar10-gpu-short", "imagenet-resnet50", "quickstart"}


def test_paper_style_sweeps_hold_out_five_percent_with_noisy_labels():
    studies = [p for p in sorted(SWEEPS.glob("*.yaml")) if p.stem not in NO_HOLDOUT]
    assert len(studies) >= 12
    for path in studies:
        data = yaml.safe_load(path.read_text())["base"]["data"]
        assert data.get("val_fraction") == 0.05, path.name
    quick = yaml.safe_load((SWEEPS / "quickstart.yaml").read_text())["base"]["data"]
    assert quick["val_fraction"] == 0.1  # digits is small: 135 held-out images


def test_the_baselines_study_crosses_two_graphs_with_three_label_terms(tmp_path, monkeypatch):
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
        for loss, eps in (("ce", 0.0), ("ce", 0.1), ("gce", 0.0))
    }
    configs = [t.config for t in sweep.trials]
    assert {(c.noise.kind, c.noise.rate) for c in configs} == {("symmetric", r) for r in (0.2, 0.4, 0.6, 0.8)}
    assert {c.run.seed for c in configs} == {0, 1, 2} and len(configs) == 6 * 4 * 3
    assert all(
        (c.model.arch, c.optim.epochs, c.optim.gce_q, c.data.val_fraction) == ("resnet32", 200, 0.7, 0.05)
        for c in configs
    )

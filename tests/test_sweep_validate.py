"""Sweep files: every shipped file validates; bad input fails with its place, exit 2, and writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness import cli
from harness import config as C
from harness.cluster.launch import check_launch
from harness.config.sweepfile import load_sweep, parse_sweep
from harness.tracking import SWEEP_STATE_FILE as STATE_FILE

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


def _paths_in(tree: dict) -> list[str]:
    """The data paths a sweep file names (base and grid), as written."""
    found = []
    flat = C.flatten(tree.get("base") or {})
    for axis, values in (tree.get("grid") or {}).items():
        for value in values:
            flat.update(
                {f"{axis}.{k}": v for k, v in C.flatten(value).items()}
                if isinstance(value, dict)
                else {axis: value}
            )
    for key in ("data.root", "noise.label_file"):
        if isinstance(flat.get(key), str):
            found.append((key, flat[key]))
    return found


def cifar_n_file(
    n: int = 50_000,
    keys=("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3", "noisy_label"),
) -> dict:
    """The shape of a CIFAR-N label file: clean_label and one array per label set, n labels each."""
    return {key: np.zeros(n, np.int64) for key in ("clean_label", *keys)}


@pytest.mark.parametrize(
    ("data", "label_set", "content", "message"),
    [
        (
            "cifar10",
            "aggre",
            {"keys": ("noisy_label",)},
            "noise.label_set 'aggre' needs keys 'clean_label' and 'aggre_label', but {file} holds clean_label, "
            "noisy_label (CIFAR-10N sets: aggre, worse, random1..3; CIFAR-100N: noisy)",
        ),
        (
            "cifar100",
            "aggre",
            {},
            "noise.label_set 'aggre' is a CIFAR-10N label set (10 classes), but the data set has 100 classes",
        ),
        (
            "cifar10",
            "worse",
            {"n": 10_000},
            "{file} labels 10000 images, but the data set has 50000 training images; is it the label file of "
            "another data set?",
        ),
    ],
    ids=["cifar100n-file-with-aggre", "cifar10n-set-on-cifar100", "wrong-length"],
)
def test_a_label_file_that_does_not_fit_the_data_is_an_error_before_anything_starts(
    tmp_path, monkeypatch, capsys, data, label_set, content, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    torch.save(cifar_n_file(**content), tmp_path / "labels.pt")
    (tmp_path / "x.yaml").write_text(
        f"name: x\nbase:\n  data: {{name: {data}, root: data}}\n"
        f"  noise: {{kind: human, label_set: {label_set}, label_file: labels.pt}}\n"
    )
    assert cli.main(["validate", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"x.yaml: noise.label_file: {message.format(file=tmp_path / 'labels.pt')}\n" in err
    assert "1 problem(s); nothing was started" in err


def test_sweeps_folder_holds_the_studies():
    names = {p.stem for p in SWEEPS}
    assert {
        "quickstart",
        "cifar10-symmetric",
        "cifar10-asymmetric",
        "cifar100-symmetric",
        "cifar100-asymmetric",
        "cifar10n-human",
        "cifar10-topology",
        "cifar10-rescale",
        "cifar10-update",
        "cifar10-temperature",
        "imagenet-resnet50",
    } <= names


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_validates(path: Path, tmp_path, monkeypatch, capsys):
    """Files name their data under ~ (portable); with those folders present each file validates."""
    tree = yaml.safe_load(path.read_text())
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in _paths_in(tree):
        assert value.startswith("~/"), f"{path.name}: {key} should be a ~/ path, got {value}"
        target = tmp_path / value[2:]
        if key == "noise.label_file":  # validation reads label files (safely): a CIFAR-N-shaped one
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cifar_n_file(), target)
        else:
            target.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    sweep = load_sweep(path)
    assert f"{len(sweep.trials)} trials" in out
    assert sweep.name == path.stem, "the sweep name is the file name: one Ray folder per file"
    assert len({t.key for t in sweep.trials}) == len(sweep.trials)


def test_quickstart_is_the_cpu_study():
    sweep = load_sweep(SWEEPS[[p.stem for p in SWEEPS].index("quickstart")])
    kinds = {t.config.noise.kind for t in sweep.trials}
    rates = {t.config.noise.rate for t in sweep.trials}
    assert kinds == {"symmetric", "pairflip"} and len(rates) >= 2
    assert {(t.config.collab.topology, t.config.collab.heads) for t in sweep.trials} == {
        ("individual", 1),
        ("hierarchical", 4),
    }
    assert {t.config.run.seed for t in sweep.trials} == {0, 1}
    assert all(t.config.data.name == "digits" and t.config.model.arch == "cnn_small" for t in sweep.trials)
    assert sweep.resources["gpu"] == 0


def test_grid_is_cross_product_times_seeds_seed_by_seed():
    tree = {
        "name": "g",
        "grid": {
            "noise.kind": ["symmetric"],
            "noise.rate": [0.2, 0.4],
            "collab": [{"topology": "individual", "heads": 1}, {"topology": "hierarchical", "heads": 4}],
        },
        "seeds": [3, 1],
    }
    sweep = parse_sweep(tree, source="g.yaml")
    assert sweep.grid_points == 4 and len(sweep.trials) == 8
    assert [t.config.run.seed for t in sweep.trials] == [3] * 4 + [1] * 4
    first = sweep.trials[:4]
    assert [(t.config.noise.rate, t.config.collab.topology, t.config.collab.heads) for t in first] == [
        (0.2, "individual", 1),
        (0.2, "hierarchical", 4),
        (0.4, "individual", 1),
        (0.4, "hierarchical", 4),
    ]
    assert sweep.trials[3].name == "symmetric-0.4 hierarchical-4 seed3"
    assert sweep.trials[3].overrides == {
        "noise.kind": "symmetric",
        "noise.rate": 0.4,
        "collab.topology": "hierarchical",
        "collab.heads": 4,
        "run.seed": 3,
    }
    # the key is the digest of the resolved config: stable across parses, different per trial
    again = parse_sweep(tree, source="g.yaml")
    assert [t.key for t in again.trials] == [t.key for t in sweep.trials]
    assert len({t.key for t in sweep.trials}) == 8
    assert sweep.metric == "test/acc" and sweep.mode == "max" and sweep.experiment == "g"
    assert sweep.max_failures == 1 and sweep.resources == {"cpu": 1.0, "gpu": 0.0}


def test_set_overrides_base_and_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar").mkdir()
    tree = {
        "name": "s",
        "base": {"data": {"name": "cifar10", "root": "/nowhere"}},
        "grid": {"noise.rate": [0.0]},
    }
    with pytest.raises(C.ConfigError, match="base.data.root: folder does not exist"):
        parse_sweep(tree, source="s.yaml")
    sweep = parse_sweep(tree, source="s.yaml", overrides={"data.root": "cifar"})
    assert sweep.trials[0].config.data.root == str(tmp_path / "cifar")
    with pytest.raises(
        C.ConfigError, match=r"--set noise.rate: the grid varies this key \(grid.noise.rate\[0\]\)"
    ):
        parse_sweep(tree, source="s.yaml", overrides={"data.root": "cifar", "noise.rate": 0.2})


# (file text, expected 'place: message' lines): each must exit 2 from both commands, creating nothing
BAD = {
    "typo in a grid key": (
        "name: x\ngrid:\n  noise.rte: [0.1]\n",
        ["grid.noise.rte: unknown key; did you mean noise.rate?"],
    ),
    "rate out of range": (
        "name: x\ngrid:\n  noise.kind: [symmetric]\n  noise.rate: [0.2, 0.4, 1.5]\n",
        ["grid.noise.rate[2]: must be in [0, 1], got 1.5"],
    ),
    "collaboration with one head": (
        "name: x\ngrid:\n  collab:\n    - {topology: individual, heads: 1}\n    - {topology: simple, heads: 1}\n",
        ["grid.collab[1].heads: topology simple needs at least 2 heads, got 1"],
    ),
    "unknown arch": (
        "name: x\nbase:\n  model: {arch: resnet33}\n",
        ["base.model.arch: unknown arch 'resnet33'", "did you mean resnet32?"],
    ),
    "unknown dataset and noise kind": (
        "name: x\nbase:\n  data: {name: cifar11}\ngrid:\n  noise.kind: [symetric]\n",
        ["base.data.name: unknown dataset 'cifar11'", "grid.noise.kind[0]: unknown noise kind 'symetric'"],
    ),
    "missing data folder": (
        "name: x\nbase:\n  data: {name: cifar10, root: /no/such/folder}\n",
        ["base.data.root: folder does not exist: /no/such/folder"],
    ),
    "wrong types": (
        "name: x\nbase:\n  optim: {epochs: ten}\n  collab: {rescale: maybe}\nseeds: [0, one]\n",
        [
            "base.optim.epochs: must be int, got str 'ten'",
            "base.collab.rescale: unknown rescale mode 'maybe'; choose from backprop, loss, none",
            "seeds[1]: must be an integer in [0, 2**32)",
        ],
    ),
    "unknown top-level keys": (
        "name: x\nseed: [1]\nnoise: {rate: 0.2}\nresources: {cpus: 2, gpu: -1}\nmax_concurrent: 0\n",
        [
            "seed: unknown key; did you mean seeds?",
            "noise: unknown key; config sections go under base",
            "resources.cpus: unknown key; did you mean cpu?",
            "resources.gpu: must be >= 0",
            "max_concurrent: must be an integer >= 1, got 0",
        ],
    ),
    "bad name, metric and grid shape": (
        "name: my sweep\nmetric: test/accuracy\ngrid:\n  noise.rate: 0.2\n  optim: [{lr: 0.1}, {lr: 0.1}]\n",
        [
            "name: must be a folder-safe name",
            "metric: unknown metric 'test/accuracy'",
            "grid.noise.rate: must be a non-empty list of values, got float 0.2; write [0.2]",
            "grid.optim[1]: repeats grid.optim[0]",
        ],
    ),
    "head metric beyond the heads": (
        "name: x\nmetric: test/acc_head3\ngrid:\n  collab: [{topology: simple, heads: 2}]\n",
        ["metric: test/acc_head3 needs heads > 3 in every trial; some trials have 2"],
    ),
    "ranked by memorization where nothing is flipped": (
        "name: x\nmetric: train/memorized\ngrid:\n  noise.kind: [symmetric]\n  noise.rate: [0.0, 0.4]\n",
        [
            "metric: train/memorized is logged only where labels are flipped; some trials have noise.kind "
            "symmetric, rate 0"
        ],
    ),
    "an image size for a data set of fixed size": (
        "name: x\nbase:\n  data: {name: digits, image_size: 64}\n",
        ["base.data.image_size: digits images keep their own size (they are not resized)"],
    ),
    "seed in the grid": (
        "name: x\ngrid:\n  run.seed: [0, 1]\n",
        ["grid.run.seed[0]: set seeds with the top-level seeds list"],
    ),
    "not a mapping": ("- just\n- a list\n", ["top level must be a mapping"]),
    "not YAML": ("name: x\ngrid: {noise.rate: [0.1\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("command", ["sweep", "validate"])
def test_bad_input_exits_2_names_the_place_and_writes_nothing(case, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text, expected = BAD[case]
    path = tmp_path / "sweeps" / "x.yaml"
    path.parent.mkdir()
    path.write_text(text)
    assert cli.main([command, "sweeps/x.yaml"]) == 2
    err = capsys.readouterr().err
    for line in expected:
        assert re.search(r"^sweeps/x\.yaml: .*" + re.escape(line), err, re.M), f"missing {line!r} in:\n{err}"
    assert "nothing was started" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps"], "bad input must write nothing"


def test_every_problem_is_listed_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "x.yaml"
    path.write_text(
        "name: x\n"
        "base:\n  model: {arch: resnet33}\n  data: {name: cifar10, root: /no/such/folder}\n"
        "grid:\n  noise.rte: [0.1]\n  noise.rate: [0.2, 1.5]\n"
        "  collab: [{topology: simple, heads: 1}]\n"
        "seeds: [-1]\n"
    )
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    for place in (
        "base.model.arch",
        "base.data.root",
        "grid.noise.rte",
        "grid.noise.rate[1]",
        "grid.collab[0].heads",
        "seeds[0]",
    ):
        assert f"{path}: {place}: " in err, f"{place} missing in:\n{err}"
    # noise.kind is left at none, so the valid rate 0.2 is a problem too
    assert f"{path}: grid.noise.rate[0]: noise kind none trains on the clean labels" in err
    assert "7 problem(s)" in err


def test_missing_file_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "nope.yaml"]) == 2
    assert "not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_dry_run_lists_trials_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d.yaml"
    path.write_text(
        "name: d\ngrid:\n  noise.kind: [symmetric, pairflip]\n  noise.rate: [0.2]\nseeds: [0, 1]\n"
    )
    assert cli.main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials (2 grid points x 2 seeds)" in out
    assert "pairflip-0.2 seed1" in out and "noise.kind=pairflip noise.rate=0.2 run.seed=1" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.yaml"]


def test_launch_problems_exit_2_before_anything_starts(tmp_path, monkeypatch, capsys):
    """An earlier run's folder needs --resume or --overwrite; --resume needs an earlier run of the same trials."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "l.yaml"
    path.write_text("name: l\ngrid:\n  noise.kind: [symmetric]\n  noise.rate: [0.2, 0.4]\n")
    assert cli.main(["sweep", str(path), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err

    sweep = load_sweep(path)
    exp = tmp_path / "ray_results" / "l"
    exp.mkdir(parents=True)
    (exp / STATE_FILE).write_text(json.dumps({"trials": {t.key: t.name for t in sweep.trials[:1]}}))
    assert cli.main(["sweep", str(path)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main(["sweep", str(path), "--resume"]) == 2
    assert "the trials differ" in capsys.readouterr().err
    assert check_launch(sweep, storage=tmp_path / "ray_results", resume=True, overwrite=True)
    assert check_launch(sweep, storage=tmp_path / "other", address="10.0.0.1:6379", num_gpus=1)
    assert check_launch(sweep, storage=tmp_path / "other") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.yaml", "ray_results"]
    assert sorted(p.name for p in exp.iterdir()) == [STATE_FILE]


def test_seed_comes_from_seeds_or_else_from_base():
    assert [
        t.config.run.seed for t in parse_sweep({"name": "s", "base": {"run": {"seed": 4}}}, source="s").trials
    ] == [4]
    with pytest.raises(C.ConfigError, match="base.run.seed: the seeds list sets run.seed"):
        parse_sweep({"name": "s", "base": {"run": {"seed": 4}}, "seeds": [1]}, source="s")
    with pytest.raises(C.ConfigError, match=r"--set run.seed: must be an integer in \[0, 2\*\*32\), got 'x'"):
        parse_sweep({"name": "s"}, source="s", overrides={"run.seed": "x"})


def test_mps_needs_a_local_ray_a_gpu_fraction_and_the_control_program(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control here
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\ngrid:\n  noise.kind: [symmetric]\n  noise.rate: [0.2]\nresources: {cpu: 1, gpu: 1}\n"
    )
    assert cli.main(["sweep", str(path), "--mps", "--address", "10.0.0.1:6379"]) == 2
    err = capsys.readouterr().err
    assert "--mps starts CUDA MPS for a local Ray" in err
    assert "resources.gpu is 1: give each trial a fraction, e.g. 0.25" in err
    assert "--mps needs nvidia-cuda-mps-control" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_mps_launch_is_accepted_with_the_control_program_and_a_gpu_fraction(
    tmp_path, monkeypatch, fake_mps_control
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\ngrid:\n  noise.kind: [symmetric]\n  noise.rate: [0.2]\nresources: {cpu: 1, gpu: 0.25}\n"
    )
    assert check_launch(load_sweep(path), storage=tmp_path / "ray_results", mps=True) == []

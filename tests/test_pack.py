"""Packs on the CPU: each member of a pack ends with exactly what it gets alone (losses, metrics, weights,
optimizer state, checkpoints), a member's failure or collapse stop is its own, and a pack resumes.

Tolerance: none. On the CPU in fp32 a member's step is the same sequence of kernels on the same
tensors as alone (harness.step.EagerPack), so the tests compare with ==, tensors with torch.equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import config as C
from harness.config.packs import plan_packs
from harness.run.layout import TrialFolder
from harness.run.lifecycle import TrialResult, TrialRun, check_compatible, train_trials
from harness.run.memory import memory_problem
from harness.run.state import TrialState
from harness.train import evaluate as engine_evaluate
from harness.train.loop import TrainingDiverged

QUICK = {"optim.epochs": 3, "optim.batch_size": 64, "run.device": "cpu", "data.train_subset": 60}
# three members that differ in seed, noise rate and lr (and so in data order, init and labels)
MEMBERS = [
    {"run.seed": 0, "noise.kind": "symmetric", "noise.rate": 0.2, "optim.lr": 0.05},
    {"run.seed": 1, "noise.kind": "symmetric", "noise.rate": 0.4, "optim.lr": 0.1},
    {"run.seed": 2, "noise.kind": "symmetric", "noise.rate": 0.0, "optim.lr": 0.02},
]
TOPOLOGIES = {
    "individual": {"collab.topology": "individual", "collab.heads": 1},
    "hierarchical": {"collab.topology": "hierarchical", "collab.heads": 4},
}
TIMING = ("time/", "perf/")  # wall-clock measurements: the only numbers allowed to differ


def quiet(_msg: str) -> None:
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


def config(topology: str, **member) -> C.TrialConfig:
    return C.build_config({}, {**QUICK, **TOPOLOGIES[topology], **member})


class Recorder:
    """An on_epoch callback that keeps every epoch's metrics and whether it wrote a checkpoint."""

    def __init__(self):
        self.epochs: list[tuple[int, dict, bool]] = []

    def __call__(self, epoch, metrics, checkpoint_dir):
        self.epochs.append((epoch, dict(metrics), checkpoint_dir is not None))


def alone(cfg: C.TrialConfig, out: Path) -> tuple[dict, Recorder]:
    recorder = Recorder()
    (result,) = train_trials([TrialRun(cfg, out, recorder, log=quiet)])
    assert result.error is None, result.traceback
    return result.metrics, recorder


def packed(configs, root: Path, extra: dict | None = None) -> tuple[list[TrialResult], list[Recorder]]:
    """train_trials of `configs` as one pack, member i in root/m<i>; extra[i]: TrialRun fields of member i."""
    recorders = [Recorder() for _ in configs]
    members = [
        TrialRun(cfg, root / f"m{i}", **{"on_epoch": recorders[i], "log": quiet, **(extra or {}).get(i, {})})
        for i, cfg in enumerate(configs)
    ]
    return train_trials(members), recorders


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


def assert_same_checkpoint(a: Path, b: Path) -> None:
    sa = torch.load(TrialFolder(a).state_file, weights_only=True)
    sb = torch.load(TrialFolder(b).state_file, weights_only=True)
    assert sa["epoch"] == sb["epoch"]
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert sa["scheduler"] == sb["scheduler"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])  # a member's checkpoint is a trial's
    assert [untimed(h) for h in sa["history"]] == [untimed(h) for h in sb["history"]]
    ha = torch.load(TrialFolder(a).artifacts / "inference_head.pt", weights_only=True)["state_dict"]
    hb = torch.load(TrialFolder(b).artifacts / "inference_head.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ha[k], hb[k]) for k in ha)


@pytest.fixture(scope="session")  # once per test process: the slow tests that use it run apart from the rest
def lone_runs(tmp_path_factory):
    """Every member of MEMBERS trained alone, per topology: (final metrics, recorder, folder)."""
    root = tmp_path_factory.mktemp("alone")
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' packs (one_thread): it changes CPU results in the last bits
    try:
        for topology in TOPOLOGIES:
            for i, member in enumerate(MEMBERS):
                out = root / f"{topology}{i}"
                final, recorder = alone(config(topology, **member), out)
                runs[topology, i] = (final, recorder, out)
    finally:
        torch.set_num_threads(threads)
    return runs


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_each_member_of_a_pack_ends_as_it_does_alone(tmp_path, lone_runs, topology):
    configs = [config(topology, **m) for m in MEMBERS]
    results, recorders = packed(configs, tmp_path)
    for i, (result, recorder) in enumerate(zip(results, recorders)):
        final, lone_recorder, lone_dir = lone_runs[topology, i]
        assert result.state is TrialState.FINISHED and result.error is None
        assert untimed(result.metrics) == untimed(final)  # losses, accuracies, memorization, sizes
        assert [(e, untimed(m), c) for e, m, c in recorder.epochs] == [
            (e, untimed(m), c) for e, m, c in lone_recorder.epochs
        ]
        assert_same_checkpoint(tmp_path / f"m{i}", lone_dir)
    # the members did train differently: the comparison above is not of three copies of one run
    assert len({r.metrics["train/loss"] for r in results}) == 3
    assert recorders[0].epochs[-1][1]["train/steps"] == 9 and len(recorders[0].epochs) == 3  # 27 steps


def test_a_diverging_member_fails_alone_and_the_others_are_unchanged(tmp_path, lone_runs):
    diverging = {"run.seed": 3, "noise.kind": "symmetric", "noise.rate": 0.2, "optim.lr": 1e4}
    configs = [
        config("individual", **MEMBERS[0]),
        config("individual", **diverging),
        config("individual", **MEMBERS[1]),
    ]
    results, recorders = packed(configs, tmp_path)
    assert results[1].state is TrialState.FAILED and isinstance(results[1].error, TrainingDiverged)
    assert "TrainingDiverged: training loss became" in results[1].traceback
    assert recorders[1].epochs == []  # it reported no epoch: its first one diverged
    for position, member in ((0, 0), (2, 1)):
        final = lone_runs["individual", member][0]
        assert results[position].state is TrialState.FINISHED
        assert untimed(results[position].metrics) == untimed(final)  # bit-equal to alone
        assert_same_checkpoint(tmp_path / f"m{position}", lone_runs["individual", member][2])


def test_a_member_stopped_on_collapse_leaves_the_pack_and_the_others_train_on(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_evaluate, "COLLAPSE_SHARE", 0.0)  # every epoch counts as collapsed
    stopping = {**MEMBERS[0], "run.stop_on_collapse": 1}
    configs = [config("individual", **stopping), config("individual", **MEMBERS[1])]
    results, recorders = packed(configs, tmp_path)
    assert results[0].state is TrialState.COLLAPSED and [e for e, *_ in recorders[0].epochs] == [1]
    assert (TrialFolder(tmp_path / "m0").artifacts / "metrics.json").is_file()
    assert results[1].state is TrialState.COLLAPSED and [e for e, *_ in recorders[1].epochs] == [1, 2, 3]
    final, _ = alone(config("individual", **MEMBERS[1]), tmp_path / "alone")
    assert untimed(results[1].metrics) == untimed(final)


def test_a_member_that_cannot_start_fails_alone(tmp_path, lone_runs):
    (tmp_path / "broken.pt").write_bytes(b"not a label file")
    broken = {
        "run.seed": 5,
        "noise.kind": "human",
        "noise.label_set": "aggre",
        "noise.label_file": str(tmp_path / "broken.pt"),
    }
    configs = [config("individual", **MEMBERS[0]), config("individual", **broken)]
    results, _ = packed(configs, tmp_path)
    assert results[1].state is TrialState.FAILED and "broken.pt" in str(results[1].error)
    assert untimed(results[0].metrics) == untimed(lone_runs["individual", 0][0])


def checkpoint_epochs(root: Path, members: int) -> list[int]:
    """The epoch of each member's checkpoint in root/m<i>."""
    return [
        torch.load(TrialFolder(root / f"m{i}").state_file, weights_only=True)["epoch"] for i in range(members)
    ]


def resume_all(root: Path, members: int) -> dict:
    """`packed`'s extra: every member resumes from its checkpoint."""
    return {i: {"resume": True} for i in range(members)}


class Killed(BaseException):
    """Stands for the process being stopped: not an Exception, so nothing catches it as a member's failure."""


@pytest.mark.slow(seconds=3)
def test_a_pack_killed_mid_round_resumes_to_the_metrics_of_an_uninterrupted_pack(tmp_path, lone_runs):
    configs = [config("hierarchical", **m) for m in MEMBERS]

    def kill_at_epoch_2(epoch, metrics, checkpoint_dir):
        if epoch == 2:
            raise Killed

    # member 1 is stopped after its epoch-2 checkpoint: member 0 has ended epoch 2, member 2 only epoch 1
    with pytest.raises(Killed):
        packed(configs, tmp_path, {1: {"on_epoch": kill_at_epoch_2}})
    assert checkpoint_epochs(tmp_path, 3) == [2, 2, 1]
    results, recorders = packed(configs, tmp_path, resume_all(tmp_path, 3))
    assert [[e for e, *_ in r.epochs] for r in recorders] == [[3], [3], [2, 3]]
    for i, result in enumerate(results):
        final, _, lone_dir = lone_runs["hierarchical", i]
        assert untimed(result.metrics) == untimed(final)
        assert_same_checkpoint(tmp_path / f"m{i}", lone_dir)


def test_a_pack_killed_mid_epoch_resumes_to_the_metrics_of_an_uninterrupted_pack(
    tmp_path, lone_runs, monkeypatch
):
    from harness.train import step as step_module

    configs = [config("individual", **m) for m in MEMBERS]
    calls = {"n": 0}
    take = step_module.EagerPack.__call__

    def killed_at_step_13(self, batches):  # epoch 2 has steps 10..18
        calls["n"] += 1
        if calls["n"] == 13:
            raise Killed
        return take(self, batches)

    monkeypatch.setattr(step_module.EagerPack, "__call__", killed_at_step_13)
    with pytest.raises(Killed):
        packed(configs, tmp_path)
    monkeypatch.setattr(step_module.EagerPack, "__call__", take)
    assert checkpoint_epochs(tmp_path, 3) == [1, 1, 1]
    results, recorders = packed(configs, tmp_path, resume_all(tmp_path, 3))
    assert [[e for e, *_ in r.epochs] for r in recorders] == [[2, 3]] * 3
    for i, result in enumerate(results):
        final, _, lone_dir = lone_runs["individual", i]
        assert untimed(result.metrics) == untimed(final)
        assert_same_checkpoint(tmp_path / f"m{i}", lone_dir)


def test_a_member_whose_checkpoint_is_of_its_last_epoch_is_reported_not_retrained(tmp_path, lone_runs):
    configs = [config("individual", **m) for m in MEMBERS[:2]]
    packed(configs, tmp_path)
    # a retry of the whole pack: member 0 finished (its checkpoint is of epoch 3), member 1 is rewound
    resume = {0: {"resume": True}}
    results, recorders = packed(configs, tmp_path, resume)
    assert [e for e, *_ in recorders[0].epochs] == [3]  # its last epoch reported again, not trained
    assert [e for e, *_ in recorders[1].epochs] == [1, 2, 3]
    assert untimed(results[0].metrics) == untimed(lone_runs["individual", 0][0])
    assert untimed(results[1].metrics) == untimed(lone_runs["individual", 1][0])


def test_only_compatible_trials_share_a_pack():
    base = config("individual", **MEMBERS[0])
    check_compatible([base, config("individual", **MEMBERS[1])])  # seed, noise, lr: fine
    with pytest.raises(ValueError, match="must share every key but"):
        check_compatible([base, config("hierarchical", **MEMBERS[1])])
    with pytest.raises(ValueError, match="must share every key but"):
        check_compatible([base, config("individual", **{**MEMBERS[1], "optim.batch_size": 32})])


def test_packs_are_planned_in_trial_order_and_unpackable_trials_train_alone():
    cfgs = [config("individual", **m) for m in MEMBERS] + [config("hierarchical", **m) for m in MEMBERS]
    cfgs.append(C.build_config({}, {**QUICK, "run.workers": 2}))
    packs = plan_packs(cfgs, 2)
    assert [p.positions for p in packs] == [(0, 1), (2,), (3, 4), (5,), (6,)]
    assert [p.tag for p in packs][:2] == ["0:2", "1:1"]
    assert [p.positions for p in plan_packs(cfgs, 1)] == [(i,) for i in range(7)]


def test_a_pack_that_will_not_fit_is_refused_with_the_numbers():
    gib = 2**30
    assert memory_problem(4, gib, 8 * gib) is None
    message = memory_problem(16, gib, 8 * gib, step_bytes=gib // 2)
    assert "a pack of 16 needs about 16.0 GiB" in message and "8.0 GiB are free" in message
    assert "use pack: 7 or less" in message


def test_a_trial_that_trained_to_its_end_reads_the_collapse_flag():
    assert TrialResult.end({"train/collapsed": 1.0}).state is TrialState.COLLAPSED
    assert TrialResult.end({"train/collapsed": 0.0}).state is TrialState.FINISHED
    assert json.dumps(TrialResult.end({"a": 1.0}).metrics) == '{"a": 1.0}'

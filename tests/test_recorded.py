"""The numbers the harness produces, recorded once and reproduced exactly: a restructuring (or a new
feature that leaves the default path alone) must change none of them.

`tests/recorded_metrics.json` holds every epoch's metrics of a few fixed trials on the CPU with one
thread: individual and hierarchical-4 on digits with 40 % symmetric noise and a held-out split, a
simple-2 graph with alternating updates, a ramped soft target and the loss rescaled, a pack of three
that differ in seed, noise, lr and label loss, and a run interrupted after its second epoch and
resumed. Wall-clock figures (time/, perf/) are left out: they are the only numbers that may differ.
The file was written by `OMP_NUM_THREADS=1 python tests/test_recorded.py --write` on the tree before the restructuring
(commit 16df275); rewrite it only for a change that is meant to change numbers, and say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECORD = Path(__file__).with_name("recorded_metrics.json")
TIMING = ("time/", "perf/", "gpu/")

BASE = {
    "data.name": "digits",
    "data.train_subset": 80,
    "data.val_fraction": 0.1,
    "noise.kind": "symmetric",
    "noise.rate": 0.4,
    "model.arch": "cnn_small",
    "optim.epochs": 3,
    "optim.batch_size": 64,
    "run.device": "cpu",
}
LONE = {
    "individual": {"collab.topology": "individual", "collab.heads": 1},
    "hierarchical-4": {"collab.topology": "hierarchical", "collab.heads": 4, "run.seed": 1},
    "simple-2-alternating": {
        "collab.topology": "simple",
        "collab.heads": 2,
        "collab.update": "alternating",
        "collab.soft_rampup_epochs": 2,
        "collab.rescale": "loss",
        "run.seed": 2,
    },
}
PACK = [
    {"run.seed": 3, "noise.rate": 0.2, "optim.lr": 0.05},
    {"run.seed": 4, "noise.rate": 0.4, "optim.label_loss": "gce"},
    {"run.seed": 5, "noise.kind": "pairflip", "noise.rate": 0.3, "optim.label_smoothing": 0.1},
]
PACK_GRAPH = {"collab.topology": "hierarchical", "collab.heads": 4}
RESUMED = {"collab.topology": "simple", "collab.heads": 2, "optim.epochs": 4, "run.seed": 6}


def kept(metrics: dict) -> dict:
    """The metrics that must reproduce exactly: all but the wall-clock ones."""
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


def record_all(tmp: Path) -> dict[str, list[dict]]:
    """Train the fixed trials (one thread, the CPU) and return each one's epochs, as recorded."""
    import torch

    from harness import config as C
    from harness.run.lifecycle import TrialRun, train_trials
    from harness.run.state import TrialState

    torch.set_num_threads(1)
    quiet = lambda _message: None  # noqa: E731
    out: dict[str, list[dict]] = {}

    def history():
        epochs: list[dict] = []
        return epochs, lambda epoch, metrics, checkpoint: epochs.append(kept({**metrics, "epoch": epoch}))

    for name, keys in LONE.items():
        epochs, on_epoch = history()
        cfg = C.build_config({}, {**BASE, **keys})
        (result,) = train_trials([TrialRun(cfg, tmp / name, on_epoch, log=quiet)])
        assert result.state is TrialState.FINISHED, result.traceback
        out[name] = epochs

    members, histories = [], []
    for i, keys in enumerate(PACK):
        epochs, on_epoch = history()
        cfg = C.build_config({}, {**BASE, **PACK_GRAPH, **keys})
        members.append(TrialRun(cfg, tmp / f"pack-{i}", on_epoch, log=quiet))
        histories.append(epochs)
    results = train_trials(members)
    assert [r.state for r in results] == [TrialState.FINISHED] * len(PACK)
    for i, epochs in enumerate(histories):
        out[f"pack-{i}"] = epochs

    cfg = C.build_config({}, {**BASE, **RESUMED})

    class Interrupted(Exception):
        pass

    def interrupt(epoch, metrics, checkpoint):
        if epoch == 2:
            raise Interrupted

    (stopped,) = train_trials([TrialRun(cfg, tmp / "resumed", interrupt, log=quiet)])
    assert isinstance(stopped.error, Interrupted), "the first run stops after its second epoch"
    epochs, on_epoch = history()
    train_trials([TrialRun(cfg, tmp / "resumed", on_epoch, resume=True, log=quiet)])
    out["resumed"] = epochs
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_recorded_trials_give_exactly_the_recorded_metrics(tmp_path):
    recorded = json.loads(RECORD.read_text())
    now = record_all(tmp_path)
    assert sorted(now) == sorted(recorded)
    for name, epochs in recorded.items():
        assert len(now[name]) == len(epochs), name
        for then, got in zip(epochs, now[name]):
            # every recorded metric is there with the same value (new metrics may be added)
            missing = sorted(set(then) - set(got))
            assert not missing, f"{name} epoch {then['epoch']}: metrics gone: {missing}"
            changed = {k: (v, got[k]) for k, v in then.items() if got[k] != v}
            assert not changed, f"{name} epoch {then['epoch']}: changed (recorded, now): {changed}"


if __name__ == "__main__":  # --write: record this tree's numbers (only for a change meant to change them)
    import sys
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_recorded.py --write")
    with tempfile.TemporaryDirectory() as folder:
        metrics = record_all(Path(folder))
    RECORD.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}: " + ", ".join(f"{k} ({len(v)} epochs)" for k, v in metrics.items()))

"""No file we read can run code: crafted CIFAR batches, CIFAR-N label files and checkpoints are
refused (their code never runs), and the real files, our own copies and our checkpoints still load."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import cli
from harness import config as C
from harness.data import load_dataset
from harness.data.cifar import load_cifar_pickle
from harness.run.layout import STATE_FILE, TrialFolder
from harness.train.checkpoint import load_checkpoint, plain
from noise import load_human_labels
from noise.safeload import UnsafeFileError, torch_load


class Touch:
    """Unpickling this creates the file `marker`: what a crafted file could do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_pickle(path: Path, obj, protocol: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _cifar10_folder(root: Path, batch: dict, protocol: int = 4) -> Path:
    """A CIFAR-10 folder whose data_batch_1 is `batch` (and a valid batches.meta, read first)."""
    folder = root / "cifar-10-batches-py"
    _write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    _write_pickle(folder / "data_batch_1", batch, protocol)
    return folder


def test_the_crafted_object_does_run_code_when_unpickled_unsafely(tmp_path):
    # the check the tests below rely on: without the allowlist, the marker appears
    pickle.loads(pickle.dumps({b"labels": [Touch(tmp_path / "marker")]}))
    assert (tmp_path / "marker").exists()


# --- CIFAR python batches ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
def test_crafted_cifar10_batch_is_refused(tmp_path, protocol):
    marker = tmp_path / "marker"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, Touch(marker)]}
    folder = _cifar10_folder(tmp_path / "data", batch, protocol)
    with pytest.raises(UnsafeFileError) as info:
        load_dataset("cifar10", root=tmp_path / "data")
    assert str(info.value) == (
        f"{folder / 'data_batch_1'} refers to io.open, which a CIFAR batch never holds; refusing to load it"
    )
    assert not marker.exists()


def test_crafted_cifar100_meta_is_refused(tmp_path):
    marker = tmp_path / "marker"
    _write_pickle(tmp_path / "cifar-100-python" / "train", {b"data": np.zeros((1, 3072), np.uint8)})
    _write_pickle(tmp_path / "cifar-100-python" / "meta", {b"fine_label_names": Touch(marker)})
    with pytest.raises(
        UnsafeFileError, match=r"cifar-100-python/meta refers to io\.open, which a CIFAR batch"
    ):
        load_dataset("cifar100", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_reader_takes_numpy_pickles_of_every_protocol(tmp_path, protocol):
    batch = {
        b"data": np.arange(12, dtype=np.uint8).reshape(2, 6),
        b"labels": [np.int64(3), 4],  # numpy scalars in a list, as some writers leave them
        b"batch_label": b"training batch 1 of 5",
        b"filenames": [b"a.png", b"b.png"],
        b"num_vis": 3072,
    }
    _write_pickle(tmp_path / "batch", batch, protocol)
    got = load_cifar_pickle(tmp_path / "batch")
    assert np.array_equal(got[b"data"], batch[b"data"]) and got[b"labels"] == [3, 4]
    assert got[b"filenames"] == [b"a.png", b"b.png"] and got[b"num_vis"] == 3072


def test_cifar_reader_takes_numpy1_names(tmp_path):
    # numpy 1.x (and the official Python 2 batches) name the array constructor numpy.core.multiarray
    raw = pickle.dumps({b"data": np.arange(4, dtype=np.uint8)}, protocol=2)
    (tmp_path / "batch").write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    assert b"numpy.core.multiarray" in (tmp_path / "batch").read_bytes()
    assert np.array_equal(load_cifar_pickle(tmp_path / "batch")[b"data"], np.arange(4))


def test_a_non_pickle_is_still_a_plain_value_error(tmp_path):
    folder = _cifar10_folder(tmp_path, {})
    (folder / "data_batch_1").write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match="not a readable CIFAR pickle") as info:
        load_dataset("cifar10", root=tmp_path)
    assert not isinstance(info.value, UnsafeFileError)


# --- CIFAR-N label files -----------------------------------------------------------------------------


def test_crafted_label_file_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": np.zeros(3, np.int64), "aggre_label": Touch(marker)}, path)
    with pytest.raises(UnsafeFileError) as info:
        load_human_labels(path, "aggre")
    assert str(info.value) == (
        f"{path} refers to io.open, which a CIFAR-N label file never holds; refusing to load it"
    )
    assert not marker.exists()


def test_label_file_that_is_a_bare_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "labels.pt").write_bytes(pickle.dumps({"clean_label": Touch(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError, match="refers to io.open"):
        load_human_labels(tmp_path / "labels.pt", "aggre")
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_label_files_with_numpy_arrays_load(tmp_path, dtype):
    clean = np.arange(20, dtype=dtype) % 10
    torch.save({"clean_label": clean, "aggre_label": clean[::-1].copy()}, tmp_path / "l.pt")
    noisy, got = load_human_labels(tmp_path / "l.pt", "aggre")
    assert np.array_equal(got, clean) and np.array_equal(noisy, clean[::-1])


@pytest.mark.parametrize(
    "name, keys",
    [
        ("CIFAR-10_human.pt", {"clean_label", "aggre_label", "worse_label", "random_label1"}),
        ("CIFAR-100_human.pt", {"clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label"}),
    ],
)
def test_the_official_cifar_n_files_load(shared_dir, name, keys):
    path = shared_dir / "data" / "cifar-n" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = torch_load(path, holds="a CIFAR-N label file", arrays=True)
    assert keys <= set(data) and all(np.asarray(data[k]).shape == (50000,) for k in keys)


# --- checkpoints ------------------------------------------------------------------------------------


def test_crafted_checkpoint_is_refused_with_advice(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model": Touch(marker), "epoch": 1}, tmp_path / STATE_FILE)
    with pytest.raises(UnsafeFileError) as info:
        load_checkpoint(tmp_path / STATE_FILE)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / STATE_FILE} refers to io.open, which a harness checkpoint never")
    assert "older harness" in text and "retrain" in text
    assert not marker.exists()


def test_our_checkpoint_and_inference_head_load_with_weights_only(alone, tmp_path):
    torch.set_num_threads(1)
    cfg = C.build_config({}, {"optim.epochs": 1, "optim.batch_size": 256, "run.device": "cpu"})
    alone(cfg, tmp_path)
    state = torch.load(TrialFolder(tmp_path).state_file, weights_only=True)  # no allowlist at all
    assert state["epoch"] == 1 and isinstance(state["rng"]["torch"], torch.Tensor)
    assert all(type(v) in (int, float) for v in state["history"][0].values())
    head = torch.load(tmp_path / "checkpoint" / "artifacts" / "inference_head.pt", weights_only=True)
    assert set(head) == {"arch", "state_dict"}


def test_plain_turns_numpy_into_python_and_refuses_objects():
    out = plain({"a": np.float64(0.5), "b": [np.int64(2), (np.arange(2),)], "c": np.float32(1)}, "history")
    assert out == {"a": 0.5, "b": [2, ([0, 1],)], "c": 1.0}
    assert type(out["a"]) is float and type(out["b"][0]) is int  # np.float64 is a float subclass
    with pytest.raises(TypeError, match=r"history\[0\]\['x'\] is a builtins.object"):
        plain([{"x": object()}], "history")


# --- through the command line, as a user meets them ---------------------------------------------------


def test_train_refuses_a_crafted_data_batch(harness_here, tmp_path):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, Touch(tmp_path / "marker")]}
    _cifar10_folder(tmp_path / "data", batch)
    proc = harness_here(
        "train", "--no-mlflow", "--set", "data.name=cifar10", "--set", "data.root=data", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "harness train: data/cifar-10-batches-py/data_batch_1 refers to io.open, which a CIFAR batch never "
        "holds; refusing to load it"
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "marker").exists()


def test_train_refuses_a_crafted_label_file(harness_here, tmp_path):
    torch.save({"clean_label": Touch(tmp_path / "marker")}, tmp_path / "evil.pt")
    human = ("noise.kind=human", "noise.label_set=aggre", "noise.label_file=evil.pt")
    proc = harness_here("train", "--no-mlflow", *(a for kv in human for a in ("--set", kv)), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        "harness train: noise.label_file: evil.pt refers to io.open, which a CIFAR-N label file never holds; "
        "refusing to load it" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "marker").exists()


def test_train_resume_refuses_a_crafted_checkpoint(harness_here, tmp_path):
    ckpt = TrialFolder(tmp_path / "run").state_file
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": Touch(tmp_path / "marker"), "epoch": 1}, ckpt)
    proc = harness_here(
        "train", "--no-mlflow", "--set", "optim.epochs=2", "--set", "run.device=cpu", "--out", "run", "--resume",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert (
        f"harness train: {ckpt.resolve()} refers to io.open, which a harness checkpoint never holds"
        in proc.stderr
    )
    assert "retrain" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "marker").exists() and "epoch   1/2" not in proc.stdout


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_validate_and_sweep_refuse_a_crafted_label_file_before_anything_starts(
    tmp_path, monkeypatch, capsys, command
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.save({"clean_label": Touch(tmp_path / "marker")}, tmp_path / "evil.pt")
    (tmp_path / "x.yaml").write_text(
        "name: x\nbase:\n  noise: {kind: human, label_set: aggre, label_file: evil.pt}\n  optim: {epochs: 1}\n"
    )
    assert cli.main([command, "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert (
        f"x.yaml: noise.label_file: {tmp_path / 'evil.pt'} refers to io.open, which a CIFAR-N label file never "
        "holds; refusing to load it\n" in err
    )
    assert "nothing was started" in err and not (tmp_path / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "x.yaml"], "nothing may be written"

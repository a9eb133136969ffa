"""harness.run.mps: the private MPS daemon's life cycle and how bench workers report it.

`nvidia-cuda-mps-control` is played by the `fake_mps_control` script (conftest.py): this machine
has no NVIDIA driver. Whether MPS speeds trials up is measured on a GPU (tests/gpu/check_gpu.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.bench.concurrent import run_concurrent
from harness.run.mps import MPSDaemon, MPSUnavailable, shared_by_children


def test_daemon_starts_in_private_folders_and_is_gone_after_the_block(fake_mps_control, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_SERVERS", "4242")
    with MPSDaemon() as mps:
        env = mps.env()
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        assert (pipe / "control").exists()
        assert Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert pipe.parent.name.startswith("harness-mps-")
        assert mps.servers() == [4242]
    assert not pipe.parent.exists()  # quit, and its folders removed
    calls = fake_mps_control.read_text().splitlines()
    assert calls[0] == f"-d|{pipe}"  # started with its own pipe folder, not the system-wide one
    assert all(call.endswith(f"|{pipe}") for call in calls)
    with pytest.raises(RuntimeError, match="not running"):
        mps.env()


def test_no_servers_before_a_client_connects(fake_mps_control):
    with MPSDaemon() as mps:
        assert mps.servers() == []


def test_daemon_is_stopped_when_the_block_raises(fake_mps_control):
    with pytest.raises(KeyError), MPSDaemon() as mps:
        root = Path(mps.env()["CUDA_MPS_PIPE_DIRECTORY"]).parent
        raise KeyError("boom")
    assert not root.exists()
    assert fake_mps_control.read_text().splitlines()[-2].startswith("|")  # the quit, then the check


def test_missing_control_program_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MPSUnavailable, match="nvidia-cuda-mps-control not found on PATH"):
        MPSDaemon().start()


def test_a_daemon_that_fails_reports_its_log_and_leaves_nothing(fake_mps_control, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_BROKEN", "1")
    before = set(Path(tempfile.gettempdir()).glob("harness-mps-*"))
    daemon = MPSDaemon()
    with pytest.raises(MPSUnavailable, match=r"exited 1(.|\n)*no GPU visible"):
        daemon.start()
    assert daemon.root is None
    assert set(Path(tempfile.gettempdir()).glob("harness-mps-*")) == before


def bench_args(**kw) -> argparse.Namespace:
    base = dict(
        device="cpu",
        arch="cnn_small",
        heads=2,
        steps=3,
        warmup=1,
        num_classes=10,
        concurrent=2,
        no_amp=False,
        no_cuda_graph=False,
        branch_streams=False,
    )
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.slow(seconds=10)
def test_concurrent_workers_report_whether_an_mps_server_ran(fake_mps_control, monkeypatch, capsys):
    with MPSDaemon() as mps:  # no client connects on a CPU: the record must not claim MPS
        record = run_concurrent(bench_args(), "individual", 16, mps)
    assert record["concurrent"] == 2 and record["mps"] is False
    assert len(record["per_process_img_per_s"]) == 2
    assert "no MPS server was running" in capsys.readouterr().err
    monkeypatch.setenv("FAKE_MPS_SERVERS", "777")
    with MPSDaemon() as mps:  # a server is up: one client process is enough to see it
        record = run_concurrent(bench_args(concurrent=1), "individual", 16, mps)
    assert record["mps"] is True
    assert "no MPS server" not in capsys.readouterr().err


def test_children_started_inside_inherit_the_daemon_and_the_environment_is_restored_after(
    fake_mps_control, monkeypatch, capsys
):
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", "/var/log/somewhere-else")
    child = [sys.executable, "-c", "import os; print(os.environ['CUDA_MPS_PIPE_DIRECTORY'])"]
    with shared_by_children(poll_s=0.05) as daemon:
        seen_by_child = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip()
        assert seen_by_child == daemon.env()["CUDA_MPS_PIPE_DIRECTORY"]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    assert os.environ["CUDA_MPS_LOG_DIRECTORY"] == "/var/log/somewhere-else"
    assert "no process connected to the CUDA MPS daemon" in capsys.readouterr().err
    monkeypatch.setenv("FAKE_MPS_SERVERS", "99")  # a client's server shows up: no warning
    with shared_by_children(poll_s=0.05):
        time.sleep(0.3)
    assert "no process connected" not in capsys.readouterr().err

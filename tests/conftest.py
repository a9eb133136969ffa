"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``shared`` folder beside the checkout (real CIFAR-10 images, CIFAR-N label files).

    ``HARNESS_SHARED`` overrides the location; tests that need it skip when it is absent.
    """
    env = os.environ.get("HARNESS_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"../shared not found (set HARNESS_SHARED); looked in {path}")
    return path


FAKE_CONTROL = """\
#!{python}
import os, sys
from pathlib import Path

pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
log = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"))
with open(os.environ["FAKE_MPS_CALLS"], "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "|" + str(pipe) + "\\n")
if sys.argv[1:] == ["-d"]:
    if os.environ.get("FAKE_MPS_BROKEN"):
        (log / "control.log").write_text("[ERROR] Failed to start: no GPU visible\\n")
        sys.exit(1)
    (pipe / "control").write_text("up")
    sys.exit(0)
if not (pipe / "control").exists():
    print("Cannot find MPS control daemon process", file=sys.stderr)
    sys.exit(1)
for command in sys.stdin.read().split("\\n"):
    if command == "get_server_list":
        print(os.environ.get("FAKE_MPS_SERVERS", ""))
    elif command == "quit":
        (pipe / "control").unlink()
"""


@pytest.fixture
def fake_mps_control(tmp_path, monkeypatch):
    """`nvidia-cuda-mps-control` played by a script (this machine has no NVIDIA driver): `-d` starts
    the daemon (a `control` file in $CUDA_MPS_PIPE_DIRECTORY); without arguments it reads commands
    on stdin and fails when no daemon answers. Every call is logged to the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(FAKE_CONTROL.format(python=sys.executable))
    control.chmod(control.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_CALLS", str(calls))
    return calls


@pytest.fixture
def interrupted_and_resumed():
    """`run(cfg, out_dir, stop)`: run_trial interrupted after epoch `stop` (its checkpoint on disk), then
    resumed from that checkpoint; returns (the resumed run's final metrics, the epochs it trained)."""

    def run(cfg, out_dir: Path, stop: int):
        from harness.trial import run_trial

        class Interrupted(Exception):
            pass

        def interrupt(epoch, metrics, checkpoint):
            if epoch == stop:
                raise Interrupted

        with pytest.raises(Interrupted):
            run_trial(cfg, out_dir=out_dir, on_epoch=interrupt, log=lambda _: None)
        epochs = []
        final = run_trial(
            cfg,
            out_dir=out_dir,
            resume_from=out_dir / "checkpoint",
            on_epoch=lambda epoch, metrics, checkpoint: epochs.append(epoch),
            log=lambda _: None,
        )
        return final, epochs

    return run


@pytest.fixture
def chromium_dom(tmp_path):
    """`dom(url)`: the page at `url` as headless Chromium renders it, after its scripts have run and
    fetched their data (virtual time: Chromium waits for the requests), in a fresh profile each call.
    Skips where Debian's chromium is not installed (CI installs it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    calls = []

    def dom(url: str, *, wait_ms: int = 15000) -> str:
        calls.append(url)
        profile = tmp_path / f"chromium-profile-{len(calls)}"
        command = [
            chromium,
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            f"--virtual-time-budget={wait_ms}",
            "--dump-dom",
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.stdout.strip(), f"chromium rendered nothing at {url}: {done.stderr[-2000:]}"
        return done.stdout

    return dom

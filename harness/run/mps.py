"""A private CUDA MPS daemon, so that several trials on one GPU run their kernels at once.

Without MPS, processes sharing a GPU are time-sliced: each one's kernels run alone, so once a
trial's step is a CUDA graph (the GPU busy with small ResNet kernels back to back) four trials
together are no faster than one (0.96x measured on an H200). Under MPS their kernels share
the streaming multiprocessors.

The daemon is this user's own: its pipe and log folders are fresh temporary folders, and only
processes given `env()` connect to it, so other CUDA programs on the machine are untouched and
no GPU setting changes. A client that cannot reach the daemon silently runs without MPS (that
is CUDA's behaviour), so callers check `servers()` once their clients are up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"


class MPSUnavailable(RuntimeError):
    """The MPS control daemon is not installed or would not start."""


class MPSDaemon:
    """Start with `with MPSDaemon() as mps:`; give `mps.env()` to the processes that should share."""

    def __init__(self, control: str = CONTROL, timeout_s: float = 20.0) -> None:
        self.control = control
        self.timeout_s = timeout_s
        self.root: Path | None = None

    def env(self) -> dict[str, str]:
        """The variables that point a CUDA process at this daemon."""
        if self.root is None:
            raise RuntimeError("the MPS daemon is not running")
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.root / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.root / "log"),
        }

    def start(self) -> MPSDaemon:
        binary = shutil.which(self.control)
        if binary is None:
            raise MPSUnavailable(
                f"{self.control} not found on PATH: CUDA MPS comes with the NVIDIA driver's compute "
                "utilities (nvidia-utils / nvidia-compute-utils)"
            )
        self.control = binary
        # short path: the daemon's Unix sockets live in the pipe folder (108-byte limit)
        self.root = Path(tempfile.mkdtemp(prefix="harness-mps-"))
        for sub in ("pipe", "log"):
            (self.root / sub).mkdir()
        started = self._call("-d")
        if started.returncode != 0:
            self._fail(f"{self.control} -d exited {started.returncode}: {started.stderr.strip()}")
        deadline = time.monotonic() + self.timeout_s
        while self._ask("get_server_list").returncode != 0:
            if time.monotonic() > deadline:
                self._fail(f"the MPS control daemon did not answer within {self.timeout_s:.0f} s")
            time.sleep(0.1)
        return self

    def servers(self) -> list[int]:
        """Process ids of the MPS servers: one appears once a client has initialised CUDA."""
        answer = self._ask("get_server_list")
        if answer.returncode != 0:
            return []
        return [int(word) for word in answer.stdout.split() if word.isdigit()]

    def stop(self) -> None:
        """Quit the daemon (and its server) and remove its folders; safe to call twice."""
        if self.root is None:
            return
        try:
            self._ask("quit")
            deadline = time.monotonic() + self.timeout_s
            while self._ask("get_server_list").returncode == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> MPSDaemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env()}
        return subprocess.run(
            [self.control, *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
        )

    def _ask(self, command: str) -> subprocess.CompletedProcess:
        """One command through the control program's front end (it reads commands on stdin)."""
        try:
            return self._call(stdin=command + "\n")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([self.control], 124, "", "no answer")

    def _fail(self, message: str) -> None:
        log = self.root / "log" / "control.log" if self.root else None
        tail = log.read_text().strip().splitlines()[-5:] if log and log.is_file() else []
        self.stop()
        raise MPSUnavailable(message + ("\n  control.log: " + "\n  ".join(tail) if tail else ""))


@contextlib.contextmanager
def shared_by_children(poll_s: float = 2.0) -> Iterator[MPSDaemon]:
    """A daemon for every process this one starts from now on (a local Ray and its trials).

    Its variables are set in this process's environment for the duration (children inherit
    them; this process must not use CUDA itself). A watcher looks for the MPS server that
    appears once a child initialises CUDA, and a warning at the end says if none ever did.
    """
    with MPSDaemon() as daemon:
        saved = {key: os.environ.get(key) for key in daemon.env()}
        os.environ.update(daemon.env())
        seen = threading.Event()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set() and not seen.is_set():
                if daemon.servers():
                    seen.set()
                done.wait(poll_s)

        watcher = threading.Thread(target=watch, name="mps-watch", daemon=True)
        watcher.start()
        try:
            yield daemon
        finally:
            done.set()
            watcher.join()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if not seen.is_set():
                print(
                    "warning: no process connected to the CUDA MPS daemon (did the trials use CUDA?)",
                    file=sys.stderr,
                )

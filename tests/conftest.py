"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest


def pytest_configure(config) -> None:
    """The tests' processes on a small machine. Under pytest-xdist (`make test` runs two workers), one
    thread per worker and per process it starts: two workers on two cores, each with torch's default
    of a thread per core, would oversubscribe the machine and run slower than one."""
    # Tests press Ctrl-C on the commands they start. A command started from a script in the background
    # (`bash .ci/run &`) inherits an ignored SIGINT (POSIX shells ignore it in asynchronous commands),
    # and Python then keeps ignoring Ctrl-C, as a program should there; a user's terminal does not.
    # Python's own handler here is reset to the default in every process a test starts.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        with contextlib.suppress(ValueError):  # not the main thread: leave it
            signal.signal(signal.SIGINT, signal.default_int_handler)
    # the Rays the tests start spawn their workers when a task needs one, not four idle ones at start
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # nor an actor per Ray Train run that watches for the node's preemption (a cloud's spot
    # instances); a process start costs seconds on two loaded cores
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items) -> None:
    """The order that keeps two xdist workers busy to the end. pytest-xdist's worksteal scheduler
    hands each worker a contiguous share of this list and later moves tests from the tail of one
    worker's queue to an idle one. The Ray sweeps head the first share, one after another: one Ray
    serves them and stops after the last (`pytest_runtest_teardown`), and their many waits (processes
    starting, trials reporting) leave the core to the other worker's arithmetic. The other slow tests
    are dealt out longest first, each to the share with the least slow work so far; the many short
    tests fill the shares behind them. A slow test may say how long it takes on two loaded cores:
    `@pytest.mark.slow(seconds=45)` (5 where it does not say)."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    slow = sorted((i for i in items if i.get_closest_marker("slow")), key=_slow_seconds, reverse=True)
    fast = [i for i in items if not i.get_closest_marker("slow")]
    sizes = []  # the shares' sizes as worksteal cuts them: each the remaining tests // the workers left
    left = len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    # the shared Ray's tests, then those that start a Ray of their own (they stop the shared one)
    on_ray = [i for i in slow if "ray_cluster" in i.fixturenames]
    on_ray += [i for i in slow if "no_ray_in_this_process" in i.fixturenames]
    heads: list[list] = [on_ray] + [[] for _ in range(workers - 1)]
    loads = [sum(map(_slow_seconds, on_ray))] + [0.0] * (workers - 1)
    for item in (i for i in slow if i not in on_ray):
        k = min((k for k in range(workers) if len(heads[k]) < sizes[k]), key=loads.__getitem__)
        heads[k].append(item)
        loads[k] += _slow_seconds(item)
    ordered = []
    for k in range(workers):
        take = sizes[k] - len(heads[k])
        ordered += heads[k] + fast[:take]
        fast = fast[take:]
    items[:] = ordered + fast


def pytest_runtest_teardown(item, nextitem) -> None:
    """The shared Ray stops once this worker's next test does not use it (its processes would take a
    share of the two cores to the end of the session; a later test that wants it starts it again)."""
    if "ray_cluster" in item.fixturenames and (
        nextitem is None or "ray_cluster" not in nextitem.fixturenames
    ):
        item.config.stash[_SHARED_RAY].stop()  # set by _shared_ray, which ray_cluster uses


def _slow_seconds(item) -> float:
    return float(item.get_closest_marker("slow").kwargs.get("seconds", 5))


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


CIFAR10_TRAIN_PER_CLASS = 100  # 1,000 training and 200 test images


@pytest.fixture(scope="session")
def cifar10_root(shared_dir, tmp_path_factory) -> Path:
    """Real CIFAR-10 in the python-version layout, the first CIFAR10_TRAIN_PER_CLASS training images
    of each class (and a fifth as many test images), unpacked from ../shared/data once per test
    process: the unpack reads the whole archive (seconds), whatever the size kept.
    ``HARNESS_DATA_CACHE`` keeps it in a folder of one's choosing across sessions."""
    script = shared_dir / "data" / "make_cifar10.py"
    if not script.is_file():
        pytest.skip(f"real CIFAR-10 images not available: {script} missing (set HARNESS_SHARED)")
    cache = os.environ.get("HARNESS_DATA_CACHE")
    base = Path(cache) if cache else tmp_path_factory.mktemp("data")
    out = base / f"cifar10-tpc{CIFAR10_TRAIN_PER_CLASS}"
    subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--train-per-class", str(CIFAR10_TRAIN_PER_CLASS)],
        check=True,
        capture_output=True,
    )
    return out


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
def one_thread():
    """torch on one thread for the test, then as it was: results compared exactly are computed with the
    same thread count (it changes CPU results in the last bits), and tests share two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def quiet(_message: str) -> None:
    """A trial's log that prints nothing."""


@pytest.fixture
def alone():
    """`train(cfg, folder, on_epoch=None, resume=False)`: one trial trained alone (a pack of one,
    harness.run.lifecycle.train_trials); its final metrics, or the exception it failed with, raised."""
    from harness.run.lifecycle import TrialRun, train_trials

    def train(cfg, folder: Path, on_epoch=None, *, resume: bool = False, log=quiet) -> dict:
        (result,) = train_trials([TrialRun(cfg, folder, on_epoch, resume=resume, log=log)])
        if result.error is not None:
            raise result.error
        return result.metrics

    return train


def _gloo_worker(rank: int, tree: dict, folder: str, world_size: int, port: int) -> None:
    import json

    import torch
    import torch.distributed as dist

    from harness import config as C
    from harness.run.lifecycle import TrialRun, train_trials

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        (result,) = train_trials([TrialRun(C.build_config(tree), Path(folder), log=quiet)])
        if result.error is not None:
            raise result.error
        if rank == 0:
            (Path(folder) / "final_metrics.json").write_text(json.dumps(result.metrics))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def gloo_trial():
    """`train(tree, folder, world_size)`: the trial of config `tree` as `world_size` gloo processes on this
    machine (harness.train.ddp's data-parallel path alone: Ray Train starts the processes of a real
    trial, this starts them with torch.multiprocessing); rank 0 writes `folder`. Rank 0's final metrics."""
    import json
    import socket

    import torch

    def train(tree: dict, folder: Path, world_size: int) -> dict:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = (tree, str(folder), world_size, port)
        torch.multiprocessing.start_processes(_gloo_worker, args=args, nprocs=world_size, start_method="fork")
        return json.loads((Path(folder) / "final_metrics.json").read_text())

    return train


@pytest.fixture
def interrupted_and_resumed(alone):
    """`run(cfg, folder, stop)`: a trial interrupted after epoch `stop` (its checkpoint on disk), then
    resumed from that checkpoint; returns (the resumed run's final metrics, the epochs it trained)."""

    def run(cfg, folder: Path, stop: int):
        class Interrupted(Exception):
            pass

        def interrupt(epoch, metrics, checkpoint):
            if epoch == stop:
                raise Interrupted

        with pytest.raises(Interrupted):
            alone(cfg, folder, interrupt)
        epochs = []
        final = alone(cfg, folder, lambda epoch, metrics, checkpoint: epochs.append(epoch), resume=True)
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


class SharedRay:
    """A local Ray in the test process, started once and shared by the tests that run sweeps.

    `harness.cluster.tune.run_sweep` uses the Ray of its process when there is one, so an in-process
    sweep runs on it; a `harness sweep --address ADDRESS` in a subprocess joins it (the cluster's
    token is the default one, ~/.ray/auth_token, and ray.init sets RAY_AUTH_MODE=token for the
    children). Each start of a Ray costs seconds on two cores; each test that shares this one
    saves them. Loopback only, in a temp folder of its own (Ray's socket paths must stay short).
    """

    CPUS = 2  # the cores: a sweep of four 1-cpu trials runs two at a time, each Tune actor reused (its start costs seconds)

    def __init__(self) -> None:
        self.temp: Path | None = None

    def start(self) -> str:
        """The cluster's address, started now if it is not running."""
        import tempfile

        import ray

        if not ray.is_initialized():
            self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
            # Ray Train's controller takes one report per poll, every 2 s by default: the epochs of
            # these tests take a fraction of a second. The cluster's processes read it at their start.
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
            ray.init(
                num_cpus=self.CPUS,
                num_gpus=0,
                include_dashboard=False,
                logging_level="WARNING",
                _node_ip_address="127.0.0.1",
                _temp_dir=str(self.temp),
            )
        return ray.get_runtime_context().gcs_address

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None


_SHARED_RAY = pytest.StashKey["SharedRay"]()


@pytest.fixture(scope="session")
def _shared_ray(pytestconfig):
    shared = pytestconfig.stash.setdefault(_SHARED_RAY, SharedRay())
    yield shared
    shared.stop()


@pytest.fixture
def ray_cluster(_shared_ray) -> SharedRay:
    """The shared local Ray, running (`.start()` gives its address; `.temp` its folder)."""
    _shared_ray.start()
    return _shared_ray


@pytest.fixture
def no_ray_in_this_process(_shared_ray) -> None:
    """For a test whose sweep must start its own local Ray (`--mps`): the shared one is stopped
    (the next test that wants it starts it again)."""
    _shared_ray.stop()


@pytest.fixture
def harness_here(monkeypatch, capsys):
    """`harness ARGS` in this process (the same main, without a second start of Python and torch,
    ~2-3 s each on two cores), run from `cwd`: (returncode, stdout, stderr). The torch settings a
    command may change for itself (threads, the global seed) are put back afterwards."""
    import torch

    threads, rng = torch.get_num_threads(), torch.get_rng_state()

    def run(*args, cwd):
        from harness import cli

        monkeypatch.chdir(cwd)
        try:
            code = cli.main(list(args))
        finally:
            torch.set_num_threads(threads)
            torch.set_rng_state(rng)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow store with its schema and nothing else, made once: a new SQLite store runs some
    twenty schema migrations, 1-5 s on two cores. Made in its own folder (MLflow's Default
    experiment keeps the folder it was made in as its artifact location)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    here = Path.cwd()
    os.chdir(folder)
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments(max_results=1)
    finally:
        os.chdir(here)
    return folder / "mlflow.db"


@pytest.fixture(scope="session")
def new_mlflow_store(_empty_mlflow_store):
    """`make(folder)`: an empty MLflow store at folder/mlflow.db, copied from the session's template
    rather than migrated anew; returns its sqlite:/// URI. (Tests of creating a store don't use it.)"""

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_mlflow_store, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make

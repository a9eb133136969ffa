"""`harness bench`'s step timing: the training step of one topology, or of a pack of trials of it
trained as one step, on synthetic data (`bench_one`).

The timed step is the engine's own: a batch from the GPU-resident loader (random crop and flip on
the device), forward of every head, the collaborative loss, backward and the SGD update, captured
in a CUDA graph where the engine would capture it. A pack of N trials (independent graphs, data
orders and optimizers) is one step of all of them (harness.train.step's pack steps: one CUDA graph,
a stream per member), the way `pack: N` in a sweep file trains them: img/s counts all N trials'
images. Needs torch only.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import torch

from harness.collab import build_training_graph
from harness.config import TrialConfig, build_config
from harness.data.loaders import TensorLoader
from harness.models import count_parameters
from harness.train.cost import measure_step_cost, peak_tflops
from harness.train.step import make_pack_step
from harness.train.training import setup_training

# (channels, image size) of the synthetic batch by arch family
INPUT_SHAPES = {"cnn_small": (1, 8), "resnet50": (3, 224)}


def bench_options(*, amp: bool, cuda_graph: bool) -> TrialConfig:
    """The trial defaults (the paper's recipe) at a constant lr 0.05: the scheduler is never stepped here."""
    return build_config(None, {"optim.lr": 0.05, "run.amp": amp, "run.cuda_graph": cuda_graph})


def bench_one(
    topology: str,
    *,
    arch: str,
    heads: int,
    batch_size: int,
    device: torch.device,
    steps: int,
    warmup: int,
    num_classes: int = 10,
    amp: bool = True,
    cuda_graph: bool = True,
    barrier: Path | None = None,
    members: int = 1,
    branch_streams: bool = False,
) -> dict:
    """Time `steps` training steps of one topology, or of a pack of `members` trials of it trained
    as one step (each its own graph, seed, data order and optimizer); a record of the JSON schema in
    docs/performance.md. A step is one step of every member: img/s counts the images of all of them."""
    heads = 1 if topology == "individual" else heads
    baseline_mb = _start_peak(device)  # this topology alone: what earlier measurements left is not its cost
    shape = INPUT_SHAPES.get(arch, (3, 32))
    graphs = _graphs(arch, topology, heads, num_classes, shape[0], device, members, branch_streams)
    loaders = _loaders(batch_size, num_classes, shape, device, members)
    cfg = bench_options(amp=amp, cuda_graph=cuda_graph)
    own_graph = members == 1  # one trial: its own CUDAGraphStep; a pack: one graph for all
    trainings = [
        setup_training(g, cfg, device=device, steps_per_epoch=4, batch_size=batch_size, own_graph=own_graph)
        for g in graphs
    ]
    step = make_pack_step(
        [t.step for t in trainings],
        graph=members > 1 and device.type == "cuda" and cuda_graph,
        batch_size=batch_size,
    )
    streams = [_endless(loader) for loader in loaders]

    def next_step():
        return step([(b.x, b.y) for b in (next(s) for s in streams)])

    static_mb = _allocated_mb(device) - baseline_mb  # weights and data, before any step
    cost = measure_step_cost(
        graphs[0],
        trainings[0].objectives[0],
        torch.empty(batch_size, *loaders[0].sample_shape, device="meta"),
        torch.empty(batch_size, dtype=torch.long, device="meta"),
        amp=amp,
        device=device,
    )
    elapsed, outputs = _timed(next_step, steps=steps, warmup=warmup, device=device, barrier=barrier)
    if not all(torch.isfinite(out.loss).item() for out in outputs):
        raise RuntimeError(f"{topology}: the loss is not finite; the benchmark step is broken")
    cuda = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    tflops = members * cost.step_flops * steps / elapsed / 1e12
    peak = peak_tflops(device_name) if cuda else None
    return {
        "topology": topology,
        "heads": heads,
        "arch": arch,
        "batch_size": batch_size,
        "device": str(device),
        "device_name": device_name,
        "ms_per_step": 1000 * elapsed / steps,
        # counted FLOPs of a step (harness.train.cost) times steps per second; a pack: all its members'
        "step_gflops": cost.step_flops / 1e9,
        "tflops": tflops,
        "peak_tflops": peak,  # the card's dense bf16 peak, where known
        "peak_fraction": tflops / peak if peak else None,
        "img_per_s": members * batch_size * steps / elapsed,
        "img_per_s_per_trial": batch_size * steps / elapsed,
        # everything this run allocated at its peak: weights, gradients, SGD buffers, data, activations
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 - baseline_mb if cuda else None,
        "static_mem_mb": static_mb if cuda else None,
        "params": count_parameters(graphs[0]),
        "amp": amp and cuda,
        "cuda_graph": cuda_graph and cuda,
        "pack": members,
        "branch_streams": branch_streams,
        "concurrent": 1,
        "t_start": time.time() - elapsed,
        "t_end": time.time(),
    }


def _start_peak(device: torch.device) -> float:
    """Free what earlier measurements left and start the peak-memory count anew (CUDA); the memory
    still allocated (MB), the baseline of this measurement."""
    if device.type != "cuda":
        return 0.0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return _allocated_mb(device)


def _allocated_mb(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def _graphs(arch, topology, heads, num_classes, channels, device, members, branch_streams) -> list:
    """One training graph per member, each from its own seed, on the device (channels-last on CUDA)."""
    memory = torch.channels_last if device.type == "cuda" else torch.preserve_format
    graphs = []
    for member in range(members):
        torch.manual_seed(member)
        graph = build_training_graph(arch, num_classes, topology, heads, in_channels=channels)
        graph.use_branch_streams(branch_streams)
        graphs.append(graph.to(device, memory_format=memory))
    return graphs


def _loaders(batch_size: int, num_classes: int, shape: tuple[int, int], device, members: int) -> list:
    """A loader per member over enough synthetic images for a few batches, on the device once and shared
    by the members' loaders; augmented on the device as a trial's are, each member its own order."""
    channels, size = shape
    n = batch_size * 4
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8).to(device)
    labels = torch.randint(0, num_classes, (n,))
    return [
        TensorLoader(
            images,
            labels,
            labels,
            batch_size=batch_size,
            mean=(0.5,) * channels,
            std=(0.25,) * channels,
            augment=True,
            pad=4 if size >= 32 else 1,
            flip=True,
            shuffle=True,
            drop_last=True,
            device=device,
            seed=member,
            channels_last=device.type == "cuda",
        )
        for member in range(members)
    ]


def _endless(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _timed(next_step, *, steps: int, warmup: int, device: torch.device, barrier: Path | None):
    """(seconds of `steps` steps after `warmup` untimed ones, the last step's outputs). A --concurrent
    worker (`barrier`) says it is ready and starts its timed steps when every worker is."""
    for _ in range(warmup):
        next_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if barrier is not None:
        (barrier / f"ready-{os.getpid()}").touch()
        while not (barrier / "go").exists():
            if not barrier.exists():  # the parent is gone
                raise SystemExit(1)
            time.sleep(0.005)
    t0 = time.perf_counter()
    for _ in range(steps):
        outputs = next_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, outputs


def init_cuda(device: torch.device) -> None:
    """Create cuBLAS/cuDNN handles and workspaces once, so the first measurement is not charged for them."""
    conv = torch.nn.Conv2d(3, 8, 3).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        conv(torch.randn(2, 3, 8, 8, device=device)).float().sum().backward()
    torch.cuda.synchronize(device)


# --- --loader ------------------------------------------------------------------------------------

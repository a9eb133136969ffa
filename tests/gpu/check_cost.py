"""The GPU evidence for harness.train.cost: the count on fake CUDA tensors against the real step, one device call.

Not collected by pytest (the device machine has torch but no pytest):
    PYTHONPATH=. python tests/gpu/check_cost.py [--device cpu]   # cpu: a dry run of the script itself
For ResNet-32 at batch 128 (channels-last on CUDA), the four topologies (4 heads), fp32 and bf16
autocast: `measure_step_cost` (fake tensors, no kernel runs) beside the real step on a copy of the
graph, counted by the same observers (FlopCounterMode, SavedTensors) on real tensors, and the memory
the real forward left allocated (saved tensors, the logits and the loss; the allocator rounds every
block up to 512 bytes). EXACT: FLOPs and saved bytes equal. Then the step's memory beside
torch.cuda.max_memory_allocated of a real step with its SGD update (above the graph and the batch,
which stay resident): the gap is the allocator's rounding, cuDNN's workspace and what autograd frees
late; over 20 % it is flagged. Then the GPU's peak from `peak_tflops`.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.collab import build_training_graph, collaborative_loss
from harness.train.cost import MB, SavedTensors, measure_step_cost, peak_tflops
from harness.train.optim import SGD
from harness.train.step import EagerStep, autocast


def real_step(graph, loss_fn, x, y, amp: bool) -> tuple[int, int, int]:
    """(FLOPs, saved bytes, bytes the forward left allocated) of one real step on a copy of `graph`."""
    graph = copy.deepcopy(graph).train()
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(x.device) if cuda else 0
    with FlopCounterMode(display=False) as flops:
        with SavedTensors(exclude=[*graph.parameters(), *graph.buffers()]) as saved, autocast(x.device, amp):
            loss, _ = loss_fn(graph(x), y)
        held = torch.cuda.memory_allocated(x.device) - before if cuda else 0
        loss.backward()
    return flops.get_total_flops(), saved.nbytes, held


def real_peak(graph, loss_fn, x, y, amp: bool) -> int | None:
    """Bytes one real step with its SGD update allocated at its peak above what was resident (a copy
    of the graph, the batch); None off CUDA."""
    if x.device.type != "cuda":
        return None
    graph = copy.deepcopy(graph).train()
    optimizer = SGD(graph.parameters(), lr=0.0, momentum=0.9)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated(x.device) - sum(
        p.numel() * p.element_size() for p in graph.parameters()
    )
    torch.cuda.reset_peak_memory_stats(x.device)
    EagerStep(graph, optimizer, loss_fn, device=x.device, amp=amp)(x, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(x.device) - resident


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda", help="cpu for a dry run of the script itself")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; cudnn {torch.backends.cudnn.version()}")
    soft = torch.tensor(0.5, device=device)

    def loss_fn(logits, target):  # collaborative learning's objective, a ramped soft weight: (loss, no mask)
        return collaborative_loss(logits, target, T=2.0, beta=0.5, soft_weight=soft), None

    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)
    exact = True
    for amp in (False, True):
        for topology, heads in (("individual", 1), ("instances", 4), ("simple", 4), ("hierarchical", 4)):
            torch.manual_seed(0)
            graph = build_training_graph("resnet32", 10, topology, heads).to(device, memory_format=fmt)
            measure_step_cost(graph, loss_fn, x, y, amp=amp)  # warm: imports, fake-tensor caches
            t0 = time.perf_counter()
            cost = measure_step_cost(graph, loss_fn, x, y, amp=amp)
            seconds = time.perf_counter() - t0
            flops, saved, held = real_step(graph, loss_fn, x, y, amp)
            peak = real_peak(graph, loss_fn, x, y, amp)
            same = (cost.step_flops, cost.saved_bytes) == (flops, saved)
            exact &= same
            memory = "peak n/a (no CUDA)"
            if peak is not None:
                gap = peak / cost.step_mem_bytes - 1
                memory = f"real peak {peak / MB:.1f} MB ({gap:+.0%} of the step's{'; OVER 20 %' if abs(gap) > 0.2 else ''})"
            print(
                f"{'bf16' if amp else 'fp32'} {topology}-{heads}: counted {cost.step_flops / 1e9:.2f} GFLOP, "
                f"saved {cost.saved_bytes / MB:.2f} MB, step {cost.step_mem_bytes / MB:.1f} MB in {seconds:.2f} s"
                f" | real {flops / 1e9:.2f} GFLOP, saved {saved / MB:.2f} MB, forward held {held / MB:.2f} MB"
                f" | {memory} | {'EXACT' if same else f'DIFFER by {cost.saved_bytes - saved} bytes saved'}",
                flush=True,
            )
    print("ALL EXACT" if exact else "SOME DIFFER")
    print(f"peak_tflops({name!r}) = {peak_tflops(name)}")


if __name__ == "__main__":
    main()

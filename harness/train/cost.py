"""What one training step costs, counted (not estimated) on a copy of the graph that holds no data.

`measure_step_cost` runs the trial's step (forward, loss, backward) once on a shadow of its graph:
the same modules with every parameter and buffer replaced by a fake tensor of the same shape, dtype,
stride and device (``torch._subclasses.FakeTensorMode``: meta storage that keeps its device label).
Every op dispatches as on the trial's device, autocast included, but runs its meta kernel: shapes
and dtypes only, no arithmetic, no memory on the device. Two observers watch that step:

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of convolutions, matrix
  products and their backward; elementwise ops, BatchNorm and pooling count 0, the usual convention).
  The FLOPs of an op depend on its shapes alone, so the count is the same in fp32 and bf16.
- saved tensors: ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor the forward saves for
  backward. Each storage is counted once and whole (a tensor saved twice, or two views of one
  storage, count once). Storages of the graph's parameters and buffers are left out (parameters are
  counted as such; BatchNorm running statistics, a few KB, are model state, not step memory). The
  bf16 copies autocast makes of the weights *are* counted: the step holds them until backward
  (harness.train.step turns autocast's weight cache off, so every use makes a copy of its own).

Why fake tensors on the trial's device rather than meta tensors: autocast is keyed by device
(there is no autocast for meta), composite ops pick device-specific kernels (cuDNN's BatchNorm
saves what it saves), and a loss may close over a real device tensor (a ramped soft-target weight),
which fake mode converts and meta would refuse. So the count sees the dtypes and saved tensors of
the step the trial really runs, on any device, without running it. The autograd engine wants a
real device for a CUDA backward (it starts a device thread), so a count for CUDA needs CUDA
present, as the trial itself does.

Units: GFLOP = 1e9 FLOP; MB = 2**20 bytes, as ``gpu/peak_mem_mb`` (MiB, strictly).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.utils.flop_counter import FlopCounterMode

from harness.contract import COST_INFER_GFLOPS, COST_STEP_GFLOPS, COST_STEP_MEM_MB
from harness.train.step import Objective, autocast

__all__ = [
    "GFLOP",
    "MB",
    "PEAK_BF16_TFLOPS",
    "SavedTensors",
    "StepCost",
    "empty_like",
    "fake_shadow",
    "measure_step_cost",
    "peak_tflops",
]

GFLOP = 1e9
MB = 2**20  # MiB, the unit of gpu/peak_mem_mb


@dataclass(frozen=True)
class StepCost:
    """One training step's FLOPs (forward, loss and backward at the batch's size; no optimizer
    update), the inference head's forward FLOPs per image, and the step's memory in bytes."""

    step_flops: int
    infer_flops_per_image: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    saved_bytes: int

    @property
    def step_mem_bytes(self) -> int:
        """Parameters + gradients + optimizer state + tensors saved for backward."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.saved_bytes

    def metrics(self) -> dict[str, float]:
        """The contract's cost metrics: GFLOP = 1e9 FLOP, MB = 2**20 bytes."""
        return {
            COST_STEP_GFLOPS: self.step_flops / GFLOP,
            COST_STEP_MEM_MB: self.step_mem_bytes / MB,
            COST_INFER_GFLOPS: self.infer_flops_per_image / GFLOP,
        }


def measure_step_cost(
    model: nn.Module,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kept_head: int = 0,
    optimizer_buffers: int = 1,
    amp: bool = False,
    device: torch.device | None = None,
) -> StepCost:
    """Count one training step of ``model`` (a graph whose forward returns a list of logits) on the
    batch ``x`` (N, C, H, W), ``y`` (N,), in train mode under the step's autocast
    (`harness.train.step.autocast` on ``x``'s device with ``amp``). ``objective(logits, y) -> (loss,
    kept)`` is the step's objective (harness.train.objective: its method's sample selection included).

    ``optimizer_buffers``: state tensors the optimizer keeps per parameter, each of the parameter's
    size (SGD with momentum: 1; Adam: 2; plain SGD: 0). Gradients and optimizer state are counted for
    the trainable parameters, in their dtype (autocast leaves parameters and their gradients fp32).
    ``kept_head``: the head whose inference network (``model.export_head``; the model itself when it
    has none) is counted on one image.

    ``device``: the device whose step is counted (its kernels' dtypes and saved tensors); ``x``'s
    by default. The batch may be meta tensors then: only its shape, stride and dtype are read.

    Only fake and meta tensors are made: the model, its buffers and gradients, the batch and torch's
    random state (CUDA's too) are left as they were. Raises ValueError where the step cannot run on
    fake tensors (a shape that depends on tensor values). Pass the graph itself, not a DDP wrapper.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    param_bytes = sum(_nbytes(p) for p in model.parameters())
    grad_bytes = sum(_nbytes(p) for p in trainable)
    device = torch.device(device) if device is not None else x.device
    _start_autograd_engine(device)
    cuda_rng = [device] if device.type == "cuda" and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_rng):
        with fake_shadow(model, device) as shadow, FlopCounterMode(display=False) as step_counter:
            fx, fy = empty_like(x, device), empty_like(y, device)
            model_state = [*shadow.parameters(), *shadow.buffers()]
            with SavedTensors(exclude=model_state) as saved, autocast(device, amp):
                loss, _ = objective(shadow(fx), fy)
            params = [p for p in shadow.parameters() if p.requires_grad]
            # grad, not backward: the same backward ops without accumulating into .grad
            torch.autograd.grad(loss, params, allow_unused=True)
        # FLOPs depend on shapes alone: the inference network is counted on meta tensors, which
        # (unlike fake ones) export_head may deep-copy
        meta = _shadow(model, torch.device("meta"))
        infer = meta.export_head(kept_head) if hasattr(meta, "export_head") else meta
        with FlopCounterMode(display=False) as infer_counter, torch.no_grad():
            infer.eval()(torch.empty((1, *x.shape[1:]), dtype=x.dtype, device="meta"))
    return StepCost(
        step_flops=step_counter.get_total_flops(),
        infer_flops_per_image=infer_counter.get_total_flops(),
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_buffers * grad_bytes,
        saved_bytes=saved.nbytes,
    )


class SavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """Within the context, the bytes of the storages the forward saves for backward, each once.

    ``exclude``: tensors whose storages are not counted (the parameters and buffers). ``nbytes``:
    the total; ``tensors``: every saved tensor in the order saved. The hooks keep a reference to each
    saved tensor until the context object is dropped, so no storage is freed and its address reused.
    Works on real tensors as on fake ones (tests/gpu/check_cost.py counts a real step with it).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.tensors: list[torch.Tensor] = []
        self._excluded = {_storage_key(t) for t in exclude}
        self._seen: set[int] = set()
        self.nbytes = 0

        def pack(t: torch.Tensor) -> int:
            key = _storage_key(t)
            if key not in self._excluded and key not in self._seen:
                self._seen.add(key)
                self.nbytes += t.untyped_storage().nbytes()
            self.tensors.append(t)
            return len(self.tensors) - 1

        super().__init__(pack, self.tensors.__getitem__)

    def __enter__(self) -> SavedTensors:
        super().__enter__()
        return self


def _start_autograd_engine(device: torch.device) -> None:
    """One backward of one element on ``device`` when it is real: the autograd engine starts its device
    threads once per process, on its first backward, and a first backward on fake tensors would start
    threads that a CPU process never has, after which a process forked from it cannot use autograd
    (torch refuses: "Unable to handle autograd's threading in combination with fork-based
    multiprocessing"). Started by a real backward, the engine has the threads that the training steps
    would give it anyway (none on the CPU)."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return  # a count for CUDA without CUDA (tests): no real device to start the engine on
    one = torch.ones((), device=device, requires_grad=True)
    torch.autograd.grad(one * 1.0, one)


def _storage_key(t: torch.Tensor) -> int:
    # Fake and meta storages have no data pointer (data_ptr() is 0 for all of them), so a storage is
    # told apart by the address of its StorageImpl, the key torch's own StorageWeakRef uses.
    return t.untyped_storage()._cdata


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def empty_like(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of ``t``'s shape, stride (channels-last stays so), dtype and
    requires_grad on ``device``."""
    return torch.empty_strided(
        t.shape, t.stride(), dtype=t.dtype, device=device, requires_grad=t.requires_grad
    )


def _shadow(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` in train mode whose parameters and buffers are `empty_like` the originals.

    The copies sit in the modules' parameter slots as plain leaf tensors that require grad, not as
    ``nn.Parameter`` (wrapping a fake tensor costs a dispatch per parameter; nothing here asks)."""
    memo = {id(t): empty_like(t, device) for t in [*model.parameters(), *model.buffers()]}
    # deepcopy takes the memo's tensors for the parameters and buffers: no weight is copied, and a
    # parameter's .grad stays behind with the real parameter
    return copy.deepcopy(model, memo).train()


@contextmanager
def fake_shadow(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """A `_shadow` of ``model`` of fake tensors on ``device``, inside fake mode: every tensor made
    within is fake too, also those a composite op makes without tensor arguments (BatchNorm's empty
    reserve buffer), which would otherwise be real."""
    # non-fake inputs: real tensors a loss closes over (a soft-target weight) become fake
    with FakeTensorMode(allow_non_fake_inputs=True):
        try:
            yield _shadow(model, device)
        except (DataDependentOutputException, DynamicOutputShapeException) as exc:
            raise ValueError(
                "cannot count this step on fake tensors: a shape or a branch in the model or the loss "
                f"depends on tensor values ({exc})"
            ) from exc


# --- peak throughput ---------------------------------------------------------------------------

# Dense (no 2:4 structured sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets and
# architecture whitepapers. Datasheets print the sparse figure with a footnote ("* with sparsity"),
# which is twice the dense one; the values here are halved where the sheet gives only that.
# Each row: the tokens a device name (torch.cuda.get_device_name) must contain, lower case, split at
# anything but letters and digits; the first row whose tokens all occur wins, so specific rows come
# first. "a10" is a whole token: it matches "NVIDIA A10", not A100 or A10G.
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    # H100 datasheet: BF16 Tensor Core 1,979 (SXM) | 1,671 (NVL) | 1,513 (PCIe) TFLOPS, with sparsity
    (("h100", "pcie"), 756.5, "H100 PCIe datasheet 1,513 sparse"),
    (("h100", "nvl"), 835.5, "H100 NVL datasheet 1,671 sparse"),
    (("gh200",), 989.5, "GH200 datasheet (H100 SXM GPU) 1,979 sparse"),
    (("h100",), 989.5, "H100 SXM datasheet 1,979 sparse"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    # H200 datasheet: BF16 Tensor Core 1,979 (SXM) | 1,671 (NVL) TFLOPS, with sparsity
    (("h200", "nvl"), 835.5, "H200 NVL datasheet 1,671 sparse"),
    (("h200",), 989.5, "H200 SXM datasheet 1,979 sparse"),
    # HGX B200 datasheet: FP16/BF16 Tensor Core 4.5 PFLOPS per GPU, with sparsity
    (("b200",), 2250.0, "HGX B200 datasheet 4.5 PFLOPS sparse"),
    # A100 datasheet (SXM and PCIe, 40 and 80 GB): BF16 Tensor Core 312 | 624* TFLOPS
    (("a100",), 312.0, "A100 datasheet 312 dense"),
    (("a30",), 165.0, "A30 datasheet 165 dense, 330 sparse"),
    (("a10",), 125.0, "A10 datasheet 125 dense, 250 sparse"),
    (("l40s",), 362.05, "L40S datasheet 362.05 dense, 733 sparse"),
    (("l40",), 181.05, "L40 datasheet 181.05 dense, 362.1 sparse"),
    (("l4",), 121.0, "L4 datasheet 242 sparse"),
    # Ampere GA102 / Ada AD102 whitepapers: peak BF16 tensor TFLOPS with FP32 accumulate (what
    # PyTorch's bf16 matmuls use), dense | sparse. GeForce parts run FP32 accumulate at half rate.
    (("a6000",), 154.8, "GA102 whitepaper, RTX A6000: 154.8 | 309.7"),
    (("rtx", "3090"), 71.0, "GA102 whitepaper, RTX 3090: 71 | 142"),
    (("rtx", "4090"), 165.2, "AD102 whitepaper, RTX 4090: 165.2 | 330.4"),
    # No bf16 on Volta and Turing: the fp16 tensor peak (mixed precision, dense) of their datasheets
    (("v100s",), 130.0, "V100S datasheet, fp16 tensor"),
    (("v100", "pcie"), 112.0, "V100 PCIe datasheet, fp16 tensor"),
    (("v100",), 125.0, "V100 SXM2 datasheet, fp16 tensor"),
    (("t4",), 65.0, "T4 datasheet, fp16 tensor (mixed precision)"),
)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 tensor peak (TFLOP/s) of the GPU named ``device_name`` (as
    ``torch.cuda.get_device_name`` gives it; fp16 for GPUs without bf16); None when unknown, and for
    a MIG slice (it holds an unknown share of the GPU)."""
    tokens = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    if "mig" in tokens:
        return None
    for needed, tflops, _source in PEAK_BF16_TFLOPS:
        if tokens.issuperset(needed):
            return tflops
    return None

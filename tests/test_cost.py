"""What a training step costs (harness.train.cost): FLOPs against an analytic count, memory, deduplication of
saved tensors, the caller's state left alone, bf16 under CUDA autocast, the peak-throughput table."""

from __future__ import annotations

import contextlib
import copy
import functools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.collab import build_training_graph, collaborative_loss
from harness.collab.methods import CollaborativeLearning
from harness.contract import COST_INFER_GFLOPS, COST_STEP_GFLOPS, COST_STEP_MEM_MB
from harness.models import count_parameters
from harness.train.cost import (
    GFLOP,
    MB,
    SavedTensors,
    empty_like,
    fake_shadow,
    measure_step_cost,
    peak_tflops,
)
from harness.train.objective import Objective


def cl(heads: int, **knobs) -> Objective:
    """Collaborative learning's objective at the paper's T = 2, beta = 0.5."""
    return Objective(CollaborativeLearning(heads=heads, **knobs))


def LOSS(logits, target):  # noqa: N802 - a constant of the tests: the same objective for any number of heads
    """Collaborative learning's objective (T = 2, beta = 0.5) over however many heads: (loss, no mask)."""
    return collaborative_loss(logits, target, T=2.0, beta=0.5), None


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@functools.cache
def _graph(topology: str, heads: int) -> nn.Module:
    torch.manual_seed(0)
    return build_training_graph("resnet32", 10, topology, heads)


@functools.cache
def _cost(topology: str, heads: int, batch: int = 32):
    return measure_step_cost(_graph(topology, heads), LOSS, *_batch(batch))


def _resnet32_macs() -> tuple[int, int]:
    """(multiply-adds of one 32x32 image through ResNet-32, those of its stem conv), from the layer
    shapes: 3x3 convs, 5 basic blocks per stage at widths 16/32/64, stride 2 entering stages 2 and 3,
    parameter-free (option A) shortcuts, a 64 -> 10 linear after global pooling."""
    stem = 32 * 32 * 16 * 3 * 9
    macs, c_in, side = stem, 16, 32
    for stage, width in enumerate((16, 32, 64)):
        for block in range(5):
            if stage > 0 and block == 0:
                side //= 2
            macs += side * side * width * c_in * 9 + side * side * width * width * 9
            c_in = width
    return macs + 64 * 10, stem


def test_resnet32_step_flops_match_the_analytic_count():
    macs, stem = _resnet32_macs()
    cost = _cost("individual", 1)
    # forward 2 FLOPs per multiply-add, backward twice that (gradients of input and weight) ...
    assert cost.step_flops == pytest.approx(32 * 3 * 2 * macs, rel=0.02)
    # ... less the stem's input gradient, which the image does not need: exact
    assert cost.step_flops == 32 * (6 * macs - 2 * stem)
    assert cost.infer_flops_per_image == 2 * macs


@pytest.mark.slow(seconds=3)
@pytest.mark.parametrize("heads", [4, 2])
def test_topologies_order_by_flops_and_memory(heads):
    costs = {t: _cost(t, heads) for t in ("instances", "simple", "hierarchical")}
    costs["individual"] = _cost("individual", 1)
    for key in ("step_flops", "step_mem_bytes", "saved_bytes"):
        v = {t: getattr(c, key) for t, c in costs.items()}
        if heads == 2:  # a two-head tree forks once, after stage 1: the simple graph's default split
            assert v["instances"] > v["simple"] == v["hierarchical"] > v["individual"], key
        else:
            assert v["instances"] > v["simple"] > v["hierarchical"] > v["individual"], key
    # every graph infers with one plain ResNet-32
    assert len({c.infer_flops_per_image for c in costs.values()}) == 1


def test_parameter_gradient_and_optimizer_bytes():
    small = build_training_graph("cnn_small", 10, "simple", 2)
    n = count_parameters(small)
    for buffers in (0, 2):
        cost = measure_step_cost(small, LOSS, *_batch(2), optimizer_buffers=buffers)
        assert (cost.param_bytes, cost.grad_bytes, cost.optimizer_bytes) == (4 * n, 4 * n, 4 * n * buffers)
    n = count_parameters(_graph("hierarchical", 4))
    cost = _cost("hierarchical", 4)  # SGD with momentum: one buffer per parameter
    assert cost.param_bytes == cost.grad_bytes == cost.optimizer_bytes == 4 * n
    assert cost.step_mem_bytes == 3 * 4 * n + cost.saved_bytes


def test_metrics_are_the_contract_names_in_gflop_and_mib():
    cost = _cost("individual", 1)
    assert cost.metrics() == {
        COST_STEP_GFLOPS: cost.step_flops / 1e9,
        COST_STEP_MEM_MB: cost.step_mem_bytes / 2**20,
        COST_INFER_GFLOPS: cost.infer_flops_per_image / 1e9,
    }


class _Toy(nn.Module):
    """conv -> dropout -> BN -> a linear head; forward returns a list of logits, like a graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return [self.fc(self.bn(self.drop(self.conv(x))).mean((2, 3)))]


def test_measuring_leaves_the_model_its_buffers_grads_and_the_rng_untouched():
    for model in (_Toy(), build_training_graph("cnn_small", 10, "hierarchical", 2)):
        x, y = _batch(4)
        LOSS(model(x), y)[0].backward()  # grads to keep; BN stats moved once
        model.eval()  # measuring counts a train-mode step on its copy, and leaves this flag alone
        state = copy.deepcopy(model.state_dict())
        grads = [p.grad.clone() for p in model.parameters()]
        rng = torch.get_rng_state()
        batch = (x.clone(), y.clone())

        measure_step_cost(model, LOSS, x, y)

        assert not model.training
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
        assert torch.equal(torch.get_rng_state(), rng)
        assert torch.equal(x, batch[0]) and torch.equal(y, batch[1])


class _SavesTwice(torch.autograd.Function):
    """y = 2x; saves y twice and a view of y."""

    @staticmethod
    def forward(ctx, x):
        y = x * 2
        ctx.save_for_backward(y, y, y[:, :1])
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_saved_tensors_are_counted_once_per_storage_and_without_parameters():
    x = torch.randn(8, 16, requires_grad=True)
    with SavedTensors() as saved:
        _SavesTwice.apply(x)
    assert len(saved.tensors) == 3 and saved.nbytes == 8 * 16 * 4

    w = nn.Parameter(torch.randn(16))
    with SavedTensors(exclude=[w]) as saved:
        (x * w).sum()  # mul saves both factors: x is counted, the parameter w is not
    assert len(saved.tensors) == 2 and saved.nbytes == 8 * 16 * 4


def test_the_count_on_fake_tensors_equals_a_real_cpu_step():
    """The real step on real tensors, counted the same way, gives the same FLOPs and saved bytes; and
    counting every save (repeats and parameters included) gives the 112.7 MB measured by hand."""
    graph, (x, y) = copy.deepcopy(_graph("individual", 1)).train(), _batch(32)
    with FlopCounterMode(display=False) as flops:
        with SavedTensors(exclude=[*graph.parameters(), *graph.buffers()]) as saved:
            loss, _ = LOSS(graph(x), y)
        loss.backward()
    cost = _cost("individual", 1)
    assert (cost.step_flops, cost.saved_bytes) == (flops.get_total_flops(), saved.nbytes)
    every_save = sum(t.untyped_storage().nbytes() for t in saved.tensors)
    assert round(every_save / MB, 1) == 112.7


# ResNet-32, batch 32, fp32, measured by hand before this module: GFLOP per step, MB saved, MB params.
# The saved column counted every saved tensor each time it was saved, parameters included (see the
# test above); this module counts each storage once and leaves parameters out.
HAND = {
    ("individual", 1): (13.19, 112.7, 1.77),
    ("instances", 4): (52.77, 450.7, 7.08),
    ("simple", 4): (39.01, 257.3, 6.81),
    ("hierarchical", 4): (30.41, 194.6, 6.14),
}


def test_hand_measured_flops_and_parameters_are_reproduced(capsys):
    rows = []
    for (topology, heads), (gflops, saved_mb, params_mb) in HAND.items():
        cost = _cost(topology, heads)
        assert round(cost.step_flops / GFLOP, 2) == gflops
        assert round(cost.param_bytes / MB, 2) == params_mb
        rows.append(
            f"{topology}-{heads}: {cost.step_flops / GFLOP:.2f} GFLOP, saved {cost.saved_bytes / MB:.1f} MB "
            f"(by hand {saved_mb}), params {cost.param_bytes / MB:.2f} MB, step {cost.step_mem_bytes / MB:.1f} MB"
        )
    with capsys.disabled():
        print("\n" + "\n".join(rows))


@contextlib.contextmanager
def _cuda_bf16_autocast():
    """harness.train.step.autocast for amp on CUDA, where no CUDA is: torch.autocast("cuda") turns itself off
    without a GPU, the switches underneath do not (and fake CUDA tensors carry the autocast key)."""
    before = (
        torch.is_autocast_enabled("cuda"),
        torch.get_autocast_dtype("cuda"),
        torch.is_autocast_cache_enabled(),
    )
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    torch.set_autocast_cache_enabled(False)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        torch.autocast_decrement_nesting()
        torch.set_autocast_enabled("cuda", before[0])
        torch.set_autocast_dtype("cuda", before[1])
        torch.set_autocast_cache_enabled(before[2])


def _saved_on(device: str, amp: bool) -> SavedTensors:
    graph, (x, y) = _graph("individual", 1), _batch(8)  # 8: no layer has 8 channels
    device = torch.device(device)
    with fake_shadow(graph, device) as shadow:
        fx, fy = empty_like(x, device), empty_like(y, device)
        state = [*shadow.parameters(), *shadow.buffers()]
        with SavedTensors(exclude=state) as saved, _cuda_bf16_autocast() if amp else contextlib.nullcontext():
            LOSS(shadow(fx), fy)
    return saved


def test_bf16_autocast_on_cuda_saves_bf16_activations_and_weight_copies():
    """The forward half of a count for a bf16 CUDA step, on fake CUDA tensors (the backward half needs a
    real GPU: tests/gpu/check_cost.py compares the whole count there with a real step)."""
    fp32, bf16 = _saved_on("cpu", amp=False), _saved_on("cuda", amp=True)
    assert all(t.device.type == "cuda" for t in bf16.tensors)
    activations = [t for t in bf16.tensors if t.dim() == 4 and t.shape[0] == 8]
    assert activations and all(t.dtype == torch.bfloat16 for t in activations)
    # autocast's bf16 copy of every conv and linear weight is saved (and counted) once
    weights = [p for p in _graph("individual", 1).parameters() if p.dim() > 1]
    copies = [t for t in bf16.tensors if t.dtype == torch.bfloat16 and t.shape[0] != 8]
    assert sorted(t.shape for t in copies) == sorted(
        p.t().shape if p.dim() == 2 else p.shape for p in weights
    )
    # half the bytes: activations in bf16, plus the weight copies (the loss's few fp32 tensors aside)
    copy_bytes = sum(2 * p.numel() for p in weights)
    assert bf16.nbytes - copy_bytes == pytest.approx(fp32.nbytes / 2, rel=0.01)


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA A10", 125.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("Tesla V100-PCIE-32GB", 112.0),
        ("Tesla V100S-PCIE-32GB", 130.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA A10G", None),  # AWS's part: no NVIDIA datasheet
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),  # a slice of unknown share
        ("cpu", None),
    ],
)
def test_peak_tflops_by_device_name(name, tflops):
    assert peak_tflops(name) == tflops


def test_a_loss_may_close_over_a_real_tensor_but_not_branch_on_values():
    graph, (x, y) = build_training_graph("cnn_small", 10, "simple", 2), _batch(4)
    ramped = cl(2, soft_weight=torch.tensor(0.3))  # the engine's ramp: a tensor
    assert (
        measure_step_cost(graph, ramped, x, y).step_flops == measure_step_cost(graph, cl(2), x, y).step_flops
    )

    def selective(logits, target):  # keeps the samples of classes above 4: how many depends on values
        keep = target > 4
        return cl(2)([z[keep] for z in logits], target[keep])

    with pytest.raises(ValueError, match="depends on tensor values"):
        measure_step_cost(graph, selective, x, y)

"""One training step of a collaborative graph: eager, or captured in a CUDA graph; and the step
of a pack of members (several trials trained together, harness.run.lifecycle).

ResNet-32-sized networks are launch-bound on a modern GPU: the step is hundreds of small
kernels, and Python launches them slower than the GPU runs them. Capturing forward,
backward and the SGD update once and replaying the graph removes that overhead. The
captured step reads its batch from static tensors, so every replay copies the batch in
first; a batch of another size (the last, partial one) runs eagerly on the same weights.

A pack step takes one batch per member and returns each member's `StepOutput`. Each member
keeps its own modules and optimizer, so a member's step is exactly its step alone:
`EagerPack` takes the members' own steps one after another (the CPU, alternating updates, or
`run.cuda_graph: false`); `GraphedPack` captures every member's step into one CUDA graph, each
member on a stream of its own, so the graph's branches (one per member) can run at once and a
pack of small nets fills more of the GPU than one does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

# objective(logits of every head, target) -> (the loss to backpropagate, the (H, B) bool mask of the
# samples each head trained on, or None for a method that trains on every sample): harness.train.objective
Objective = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class StepOutput(NamedTuple):
    """What one step of one member gives back, still on the device: its loss, the logits of every
    head, and the samples each head trained on ((H, B) bool; None when it trained on all)."""

    loss: torch.Tensor
    logits: list[torch.Tensor]
    kept: torch.Tensor | None


def _detached(loss: torch.Tensor, logits: list[torch.Tensor], kept: torch.Tensor | None) -> StepOutput:
    return StepOutput(loss.detach(), [z.detach() for z in logits], None if kept is None else kept.detach())


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); nothing on the CPU."""
    if amp and device.type == "cuda":
        # no weight-cast cache: a cache inside a captured graph would be stale on replay
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


class EagerStep:
    """forward, loss, backward, SGD update; returns (loss, logits), both still on the device."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        *,
        device,
        amp: bool,
    ):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.device, self.amp = torch.device(device), amp

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        return self.eager_step(x, y, set_to_none=True)

    def eager_step(self, x: torch.Tensor, y: torch.Tensor, *, set_to_none: bool) -> StepOutput:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        with autocast(self.device, self.amp):
            logits = self.model(x)
            loss, kept = self.objective(logits, y)
        loss.backward()
        self.optimizer.step()
        return _detached(loss, logits, kept)


class CUDAGraphStep(EagerStep):
    """The same step captured once per batch shape and replayed (CUDA only).

    Capture follows PyTorch's whole-network recipe: warm up on a side stream (so lazy
    allocations and cuDNN autotuning happen outside the graph), then capture with gradients
    set to None so backward allocates them from the graph's private pool. The learning rate
    lives in a device tensor (harness.optim.SGD) that is refreshed before each replay.
    """

    WARMUP_STEPS = 3

    def __init__(self, *args, batch_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        if self.device.type != "cuda":
            raise ValueError("CUDA graph capture needs a CUDA device")
        self.batch_size = batch_size
        self.graph: torch.cuda.CUDAGraph | None = None

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x = x.clone()
        self.static_y = y.clone()
        with _unchanged([self]):
            _warm_up([self], [(self.static_x, self.static_y)], self.WARMUP_STEPS)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                with autocast(self.device, self.amp):
                    logits = self.model(self.static_x)
                    loss, kept = self.objective(logits, self.static_y)
                loss.backward()
                self.optimizer.step()
        self.static_output = _detached(loss, logits, kept)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        if x.shape[0] != self.batch_size:
            # the partial last batch: eager on the same weights; zero the graph's grad buffers
            # in place rather than freeing them, since the graph writes into them
            return self.eager_step(x, y, set_to_none=False)
        if self.graph is None:
            self._capture(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.optimizer.sync_lr()
        self.graph.replay()
        return self.static_output


@contextlib.contextmanager
def _unchanged(steps: Sequence[EagerStep]):
    """Leave the steps' models and optimizers as they were: warm-up steps are real SGD steps on the
    first batch (it would train WARMUP_STEPS + 1 times), and capture is undone too (it runs no
    kernels, but be exact)."""
    saved = [
        ({k: v.clone() for k, v in s.model.state_dict().items()}, _clone_optimizer_state(s.optimizer))
        for s in steps
    ]
    yield
    with torch.no_grad():
        for s, (model, optimizer) in zip(steps, saved):
            for k, v in s.model.state_dict().items():
                v.copy_(model[k])
            _restore_optimizer_state(s.optimizer, optimizer)


def _warm_up(
    steps: Sequence[EagerStep], batches: Sequence[tuple[torch.Tensor, torch.Tensor]], n: int
) -> None:
    """PyTorch's whole-network capture recipe, first half: a few eager steps on a side stream (lazy
    allocations and cuDNN autotuning happen outside the graph), then gradients set to None so the
    captured backward allocates them from the graph's private pool."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(n):
            for step, (x, y) in zip(steps, batches):
                step.eager_step(x, y, set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    for step in steps:
        step.optimizer.sync_lr()
        step.optimizer.zero_grad(set_to_none=True)


def _clone_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    return {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}


def _restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    for p, state in optimizer.state.items():
        for k, v in state.items():
            if p in saved and k in saved[p]:
                v.copy_(saved[p][k])
            else:
                v.zero_()  # a buffer born in warm-up: zero is torch SGD's "no buffer yet"


def make_train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    *,
    device: torch.device,
    amp: bool,
    cuda_graph: bool,
    batch_size: int,
) -> EagerStep:
    """The fastest step the device allows: a CUDA graph on CUDA when asked for, else eager."""
    if cuda_graph and torch.device(device).type == "cuda":
        return CUDAGraphStep(model, optimizer, objective, device=device, amp=amp, batch_size=batch_size)
    return EagerStep(model, optimizer, objective, device=device, amp=amp)


# --- packs: the steps of several members at once -------------------------------------------------

Outputs = list[StepOutput]  # per member


class EagerPack:
    """The members' own steps one after another: each member computes exactly what it computes alone."""

    def __init__(self, steps: Sequence[Callable]):
        self.steps = list(steps)

    def __call__(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Outputs:
        return [step(x, y) for step, (x, y) in zip(self.steps, batches)]


class GraphedPack:
    """Every member's step (forward, loss, backward, SGD) captured into one CUDA graph (CUDA only).

    Member i runs on stream i, forked from the capturing stream and joined back at the end, so
    the graph holds one independent branch per member and the GPU may run them at once. The
    math of each member is its eager step's; `CUDAGraphStep` does the same for one member. A
    batch of another size (the last, partial one) runs eagerly, member after member.
    """

    WARMUP_STEPS = CUDAGraphStep.WARMUP_STEPS

    def __init__(self, steps: Sequence[EagerStep], *, batch_size: int):
        self.steps = list(steps)
        if any(s.device.type != "cuda" for s in self.steps):
            raise ValueError("CUDA graph capture needs a CUDA device")
        self.batch_size = batch_size
        self.graph: torch.cuda.CUDAGraph | None = None

    def _capture(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.static = [(x.clone(), y.clone()) for x, y in batches]
        self.streams = [torch.cuda.Stream() for _ in self.steps]
        outputs: Outputs = []
        with _unchanged(self.steps):
            _warm_up(self.steps, self.static, self.WARMUP_STEPS)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                capturing = torch.cuda.current_stream()
                for step, stream, (x, y) in zip(self.steps, self.streams, self.static):
                    stream.wait_stream(capturing)
                    with torch.cuda.stream(stream):
                        with autocast(step.device, step.amp):
                            logits = step.model(x)
                            loss, kept = step.objective(logits, y)
                        loss.backward()  # autograd runs each backward op on its forward op's stream
                        step.optimizer.step()
                    outputs.append(_detached(loss, logits, kept))
                for stream in self.streams:
                    capturing.wait_stream(stream)
        self.outputs = outputs

    def __call__(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Outputs:
        if batches[0][0].shape[0] != self.batch_size:
            return [s.eager_step(x, y, set_to_none=False) for s, (x, y) in zip(self.steps, batches)]
        if self.graph is None:
            self._capture(batches)
        for (static_x, static_y), (x, y) in zip(self.static, batches):
            static_x.copy_(x)
            static_y.copy_(y)
        for step in self.steps:
            step.optimizer.sync_lr()
        self.graph.replay()
        return self.outputs


def make_pack_step(steps: Sequence[Callable], *, graph: bool, batch_size: int) -> Callable[..., Outputs]:
    """The step of a pack whose members take `steps` alone: one CUDA graph for all of them when
    `graph` (every step a plain `EagerStep` on CUDA; also a pack down to one member), else their own
    steps one after another (a lone trial's own step, a CUDA graph of its own or not)."""
    return GraphedPack(steps, batch_size=batch_size) if graph else EagerPack(steps)

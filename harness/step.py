"""One training step of a collaborative graph: eager, or captured in a CUDA graph.

ResNet-32-sized networks are launch-bound on a modern GPU: the step is hundreds of small
kernels, and Python launches them slower than the GPU runs them. Capturing forward,
backward and the SGD update once and replaying the graph removes that overhead. The
captured step reads its batch from static tensors, so every replay copies the batch in
first; a batch of another size (the last, partial one) runs eagerly on the same weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from harness.collab import collaborative_loss

LossFn = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


def make_loss_fn(
    *,
    T: float,
    beta: float,
    loss_scale: float = 1.0,
    head: int | None = None,
    soft_weight: float | torch.Tensor = 1.0,
    label_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> LossFn:
    """The summed collaborative loss (or one head's share of it, for alternating updates).

    ``label_loss``: each head's label term (``harness.losses.make_label_loss``); None: cross-entropy.

    A ramped ``soft_weight`` is a device tensor that the engine refills between steps: a captured
    step reads the tensor, so every replay sees the current weight.
    """

    def loss_fn(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return (
            collaborative_loss(
                logits, target, T=T, beta=beta, soft_weight=soft_weight, head=head, label_loss=label_loss
            )
            * loss_scale
        )

    return loss_fn


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); nothing on the CPU."""
    if amp and device.type == "cuda":
        # no weight-cast cache: a cache inside a captured graph would be stale on replay
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


class EagerStep:
    """forward, loss, backward, SGD update; returns (loss, logits), both still on the device."""

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *, device, amp: bool
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.amp = torch.device(device), amp

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.eager_step(x, y, set_to_none=True)

    def eager_step(
        self, x: torch.Tensor, y: torch.Tensor, *, set_to_none: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        with autocast(self.device, self.amp):
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), [z.detach() for z in logits]


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
        # Warm-up steps are real SGD steps on this batch: the caller's first batch trains
        # WARMUP_STEPS + 1 times. Save and restore the state so capture changes nothing.
        saved_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        saved_opt = _clone_optimizer_state(self.optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                self.eager_step(self.static_x, self.static_y, set_to_none=True)
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.sync_lr()
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            with autocast(self.device, self.amp):
                logits = self.model(self.static_x)
                loss = self.loss_fn(logits, self.static_y)
            loss.backward()
            self.optimizer.step()
        self.static_loss = loss.detach()
        self.static_logits = [z.detach() for z in logits]
        # undo the warm-up and the capture itself (capture does not run kernels, but be exact)
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(saved_model[k])
            _restore_optimizer_state(self.optimizer, saved_opt)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
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
        return self.static_loss, self.static_logits


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
    loss_fn: LossFn,
    *,
    device: torch.device,
    amp: bool,
    cuda_graph: bool,
    batch_size: int,
) -> EagerStep:
    """The fastest step the device allows: a CUDA graph on CUDA when asked for, else eager."""
    if cuda_graph and torch.device(device).type == "cuda":
        return CUDAGraphStep(model, optimizer, loss_fn, device=device, amp=amp, batch_size=batch_size)
    return EagerStep(model, optimizer, loss_fn, device=device, amp=amp)

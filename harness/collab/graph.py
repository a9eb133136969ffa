"""The collaborative training graph and objective of Song & Chai, "Collaborative Learning for Deep
Neural Networks" (NeurIPS 2018).

A training graph holds H classifier heads of one backbone architecture. Heads may share their low
layers (intermediate-level representation, ILR, sharing); the graph is a tree of segments, each a run
of consecutive backbone parts (``stem``, ``stage1`` .. ``stageS``, ``classifier``, see
:mod:`harness.models`). Topologies:

- ``individual``: one plain network (H = 1).
- ``instances``: H independent full copies; nothing is shared.
- ``simple``: one shared trunk (stem + the first ``split`` stages), H branches with the rest.
- ``hierarchical``: a binary tree, H = 2^L heads and ``split`` = L increasing stage boundaries; at
  each boundary every path forks in two. H=4 on a three-stage net with split [1, 2]: stem + stage 1
  shared by all four heads, stage 2 by pairs (heads 0-1, 2-3), stage 3 + classifier per head.

A split boundary s means "stem and the first s stages lie above the fork"; s ranges over 0..S for an
S-stage backbone (s = 0 forks right after the stem, s = S leaves only the classifier per branch).

Backpropagation rescaling: where a tensor feeds B branches, :class:`GradScale` (identity forward,
gradient times 1/B backward) keeps the gradient reaching the shared layers at the scale of a single
network, whatever the number of heads (section 3.2 of the paper).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from harness.collab.rescale import BackpropRescale, rescale_mode
from harness.models import ARCHS, Backbone, build_backbone, num_stages

TOPOLOGIES = ("individual", "instances", "simple", "hierarchical")

# --- backpropagation rescaling -----------------------------------------------------------------


# --- the training graph ------------------------------------------------------------------------


class Segment(nn.Module):
    """One node of the head tree: ``body`` (consecutive backbone parts, keyed by part name) and
    ``branches`` (child segments; empty for a leaf, which ends with the classifier).

    ``forward(x)`` returns the list of logits of every head below this node, in head order.
    """

    def __init__(self, body: nn.Sequential, branches: list[Segment], rescale_grad: bool) -> None:
        super().__init__()
        self.body = body
        self.branches = nn.ModuleList(branches)
        fanout = len(branches)
        # An empty body (the root of "instances") has no layers above the fork to rescale.
        needed = rescale_grad and fanout > 1 and len(body) > 0
        self.fanout = BackpropRescale(1.0 / fanout) if needed else nn.Identity()
        self.branch_streams = False  # TrainingGraph.use_branch_streams

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.body(x)
        if not self.branches:
            return [y]
        y = self.fanout(y)
        if self.branch_streams and y.is_cuda and torch.cuda.is_current_stream_capturing():
            return self._forward_on_streams(y)
        out: list[torch.Tensor] = []
        for branch in self.branches:
            out.extend(branch(y))
        return out

    def _forward_on_streams(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The branches on streams of their own, forked from and joined back to the capturing stream,
        so the captured graph holds them as independent branches the GPU may run at once. Their
        backward ops run on the same streams (autograd runs each on its forward op's stream). Only
        while a CUDA graph is captured: every tensor then lives in the graph's pool until it ends."""
        streams = [torch.cuda.Stream(y.device) for _ in self.branches]  # once per capture
        capturing = torch.cuda.current_stream(y.device)
        out: list[torch.Tensor] = []
        for branch, stream in zip(self.branches, streams):
            stream.wait_stream(capturing)
            with torch.cuda.stream(stream):
                out.extend(branch(y))
        for stream in streams:
            capturing.wait_stream(stream)
        return out


class TrainingGraph(nn.Module):
    """H classifier heads of one architecture, sharing low layers as the topology says.

    ``forward(x)`` takes (N, C, H, W) images and returns a list of H logit tensors of shape
    (N, num_classes). ``root`` is the tree of :class:`Segment` s; state_dict keys read like
    ``root.body.stem.conv.weight`` and ``root.branches.1.body.stage3.0.conv1.weight``.

    Attributes: ``arch``, ``num_classes``, ``in_channels``, ``topology``, ``heads``, ``rescale``
    (one of `RESCALE_MODES`) and ``split`` (resolved boundaries: None, an int or a tuple).
    """

    def __init__(
        self,
        root: Segment,
        *,
        arch: str,
        num_classes: int,
        in_channels: int,
        topology: str,
        heads: int,
        rescale: str,
        split: int | tuple[int, ...] | None,
        num_stages: int,
    ) -> None:
        super().__init__()
        self.root = root
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.topology = topology
        self.heads = heads
        self.rescale = rescale
        self.split = split
        self.num_stages = num_stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.root(x)

    def use_branch_streams(self, on: bool = True) -> TrainingGraph:
        """Run sibling branches below every fork on streams of their own inside a captured CUDA graph
        (`run.branch_streams`); the same kernels on the same data, in another order."""
        for module in self.modules():
            if isinstance(module, Segment):
                module.branch_streams = on
        return self

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, topology={self.topology!r}, heads={self.heads}, "
            f"split={self.split}, rescale={self.rescale!r}"
        )

    def _check_head(self, h: int) -> None:
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < self.heads:
            raise ValueError(f"head must be an integer in [0, {self.heads - 1}], got {h!r}")

    def head_path(self, h: int) -> list[Segment]:
        """The segments head h's input passes through, root first."""
        self._check_head(h)
        path, node, first, count = [], self.root, 0, self.heads
        while True:
            path.append(node)
            if not node.branches:
                return path
            count //= len(node.branches)
            index = (h - first) // count
            first += index * count
            node = node.branches[index]

    def head_parameters(self, h: int) -> list[nn.Parameter]:
        """Parameters on head h's path (shared segments included), root first."""
        return [p for segment in self.head_path(h) for p in segment.body.parameters()]

    def export_head(self, h: int) -> Backbone:
        """A plain :class:`Backbone` of the original architecture computing head h's output.

        It holds deep copies of head h's shared segments and its own branch (parameters and BN
        buffers), so later training of the graph leaves it unchanged. Its parameter count equals
        ``count_parameters(build_backbone(arch, num_classes, in_channels=...))``.
        """
        parts: dict[str, nn.Module] = {}
        for segment in self.head_path(h):
            parts.update(segment.body.named_children())
        stages = [copy.deepcopy(parts[f"stage{i + 1}"]) for i in range(self.num_stages)]
        return Backbone(
            copy.deepcopy(parts["stem"]),
            stages,
            copy.deepcopy(parts["classifier"]),
            arch=self.arch,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
        )


def default_split(arch: str, topology: str, heads: int) -> int | tuple[int, ...] | None:
    """The split used when none is given, from the arch's number of stages S (see the module docstring).

    The paper shares the low layers and lets the heads own the high ones. ``simple``: the trunk is
    the stem and the first S - 2 stages, each head owns the last two. ``hierarchical`` with
    H = 2^L heads: the first fork at boundary S - 2 and one more at each later boundary; a deeper
    tree forks earlier instead, so every head still owns its last stage. On the three-stage CIFAR
    nets 4 heads fork after stages 1 and 2, 8 heads after 0, 1, 2; on ResNet-50 (four stages) 4 heads
    fork after layer2 and layer3. None for individual/instances (nothing is shared).
    """
    if topology in ("individual", "instances"):
        return None
    stages = num_stages(arch)
    if topology == "simple":
        return max(0, stages - 2)
    levels = heads.bit_length() - 1
    first = max(0, min(stages - 2, stages - levels))
    if levels < 1 or first + levels > stages:
        raise ValueError(
            f"no default split for arch {arch!r} ({stages} stages), topology {topology!r}, heads {heads}; "
            "give split explicitly"
        )
    return tuple(range(first, first + levels))


def graph_problems(
    arch: str,
    topology: str,
    heads: int,
    *,
    rescale: object = "backprop",
    split: int | Sequence[int] | None = None,
    kept_head: int = 0,
) -> list[tuple[str, str]]:
    """What keeps these settings from making a training graph, as (setting, message); [] when nothing.

    The one source of these rules: `build_training_graph` raises on the first, config validation
    reports them all under ``collab.<setting>``.
    """
    if arch not in ARCHS:
        try:
            build_backbone(arch, 1)
        except ValueError as exc:  # the registry's "Unknown arch ..." with its list
            return [("arch", str(exc))]
    if topology not in TOPOLOGIES:
        return [("topology", f"Unknown topology {topology!r}; choose from {', '.join(TOPOLOGIES)}")]
    if isinstance(heads, bool) or not isinstance(heads, int):
        return [("heads", f"heads must be an integer, got {heads!r}")]
    problems = []
    if topology == "individual" and heads != 1:
        problems.append(("heads", f"topology individual trains one head, got heads={heads}"))
    elif topology != "individual" and heads < 2:
        problems.append(("heads", f"topology {topology} needs at least 2 heads, got {heads}"))
    elif topology == "hierarchical" and heads & (heads - 1):
        problems.append(("heads", f"hierarchical sharing needs a power of two heads, got {heads}"))
    try:
        rescale_mode(rescale)
    except ValueError as exc:
        problems.append(("rescale", str(exc)))
    if not 0 <= kept_head < max(heads, 1):
        problems.append(("kept_head", f"must be < heads ({heads}), got {kept_head}"))
    if not problems:
        try:
            _resolve_split(arch, topology, heads, split, num_stages(arch))
        except ValueError as exc:
            problems.append(("split", str(exc)))
    return problems


def _resolve_split(
    arch: str, topology: str, heads: int, split: int | Sequence[int] | None, num_stages: int
) -> int | tuple[int, ...] | None:
    if split is None:
        return default_split(arch, topology, heads)
    if topology in ("individual", "instances"):
        raise ValueError(
            f"split is not used by topology {topology!r} (nothing is shared); got split={split!r}"
        )
    values = [split] if isinstance(split, int) else list(split) if isinstance(split, Sequence) else None
    if values is None or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"split must be an integer or a list of integers, got {split!r}")
    want = 1 if topology == "simple" else int(math.log2(heads))
    if len(values) != want:
        detail = (
            "one boundary" if topology == "simple" else f"log2(heads) = {want} boundaries for heads={heads}"
        )
        raise ValueError(f"split for topology {topology!r} needs {detail}, got {split!r}")
    for v in values:
        if not 0 <= v <= num_stages:
            raise ValueError(
                f"split boundary {v} is out of range for arch {arch!r}: allowed 0..{num_stages} "
                f"(stages above the fork), got split={split!r}"
            )
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"split boundaries must be strictly increasing, got {split!r}")
    return values[0] if topology == "simple" else tuple(values)


def build_training_graph(
    arch: str,
    num_classes: int,
    topology: str,
    heads: int,
    *,
    rescale: str | bool = "backprop",
    split: int | Sequence[int] | None = None,
    in_channels: int = 3,
    zero_init_residual: bool = True,
) -> TrainingGraph:
    """Build the collaborative training graph (see the module docstring for topologies and splits).

    ``rescale``: "backprop" applies backpropagation rescaling (the paper's method); "none" and
    "loss" put nothing in the graph ("loss": the engine scales the summed loss by 1/H, the paper's
    rejected alternative, see `loss_scale`). True and False are the old spelling of backprop and none.
    Each head's own segments come from an independently initialised backbone (built with
    ``zero_init_residual``, see :func:`harness.models.build_backbone`); a shared segment is taken
    from the backbone of the first head below it. Raises ValueError for settings `graph_problems`
    reports.
    """
    problems = graph_problems(arch, topology, heads, rescale=rescale, split=split)
    if problems:
        raise ValueError(problems[0][1])
    rescale = rescale_mode(rescale)
    init = dict(in_channels=in_channels, zero_init_residual=zero_init_residual)
    first = build_backbone(arch, num_classes, **init)
    stages = len(first.stages)
    # Resolve the split before building the other H - 1 backbones, so bad input fails fast.
    resolved = _resolve_split(arch, topology, heads, split, stages)
    others = [build_backbone(arch, num_classes, **init) for _ in range(heads - 1)]
    parts = [b.parts() for b in [first, *others]]

    # Forks as (position in the parts list, branching factor); position p means parts[:p] lie above.
    if topology == "individual":
        forks: list[tuple[int, int]] = []
    elif topology == "instances":
        forks = [(0, heads)]
    elif topology == "simple":
        forks = [(resolved + 1, heads)]
    else:
        forks = [(s + 1, 2) for s in resolved]

    def segment(depth: int, first_head: int, span: int) -> Segment:
        start = forks[depth - 1][0] if depth > 0 else 0
        end = forks[depth][0] if depth < len(forks) else len(parts[0])
        body = nn.Sequential(OrderedDict(parts[first_head][start:end]))
        children: list[Segment] = []
        if depth < len(forks):
            fanout = forks[depth][1]
            child_span = span // fanout
            children = [segment(depth + 1, first_head + i * child_span, child_span) for i in range(fanout)]
        return Segment(body, children, rescale_grad=rescale == "backprop")

    return TrainingGraph(
        segment(0, 0, heads),
        arch=arch,
        num_classes=num_classes,
        in_channels=in_channels,
        topology=topology,
        heads=heads,
        rescale=rescale,
        split=resolved,
        num_stages=stages,
    )


# --- the collaborative objective ---------------------------------------------------------------

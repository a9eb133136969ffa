"""Backbones split into stages, so the collaborative training graph can cut them between stages.

Every backbone is a :class:`Backbone`: ``stem`` (the layers before the first stage), ``stages`` (an
ordered ``nn.ModuleList``) and ``classifier`` (everything after the last stage: global pooling,
flatten, linear; plus the final BN-ReLU of pre-activation nets). ``forward(x)`` maps images of shape
(N, C, H, W) to logits of shape (N, num_classes).

Registered architectures (``list_archs()``):

- ``resnet20/32/56/110``: the CIFAR ResNets of He et al. (2016), 3x3 conv-16 stem, three stages of
  n = (depth - 2) / 6 basic blocks with widths 16/32/64, stride 2 at stages 2 and 3. Shortcuts are
  **option A** (parameter-free: stride-2 subsampling and zero-padded channels), as in the paper's CIFAR
  experiments; this gives the published 0.27M/0.46M/0.85M/1.7M parameters.
- ``wrn28_10``: Wide ResNet 28-10 (Zagoruyko & Komodakis 2016), pre-activation blocks, widths
  160/320/640, 4 blocks per stage, dropout 0, 1x1-conv shortcuts where the shape changes (~36.5M).
- ``densenet40``: DenseNet (L=40, k=12) of Huang et al. (2017), no bottleneck or compression; stage i
  is dense block i (12 BN-ReLU-conv3x3 layers) followed by its transition (BN-ReLU-conv1x1-avgpool2),
  the last stage has no transition (~1.06M).
- ``resnet50``: ``torchvision.models.resnet50(weights=None)`` regrouped: stem = conv1, bn1, relu,
  maxpool; stages = layer1..layer4; classifier = avgpool, flatten, fc. Parameter names inside the
  groups are torchvision's (``stem.conv1.weight``, ``stages.0.0.conv1.weight``, ``classifier.fc.bias``).
  No weights are downloaded.
- ``cnn_small``: a ~25k-parameter CNN for the 8x8 grayscale digits quickstart (three conv stages).

Convolutions get Kaiming-normal init (fan_out, ReLU gain); BN weight 1, bias 0; linear biases 0.

Zero-init residual (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), on by default: the last
scale of every residual branch (the second BN of a basic block, the third of a bottleneck, the last
conv of a pre-activation block) starts at zero, so every block starts as the identity. Without it,
each of a CIFAR ResNet's blocks adds unit variance to the residual stream: ResNet-32's pooled
features start with a squared norm of ~225 per image instead of ~3.5, so the classifier's first SGD
steps at lr 0.1 move the logits by tens and the network can end in dead, constant-output features
(which a collaborative soft target then holds in place). Non-residual nets (densenet40, cnn_small)
are unchanged by it.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# name -> factory(num_classes, in_channels) -> Backbone; filled by @register_model below.
ARCHS: dict[str, Callable[..., Backbone]] = {}


class Backbone(nn.Module):
    """A classifier split into ``stem``, ordered ``stages`` and ``classifier``.

    ``forward(x)`` = ``classifier(stages[-1](...stages[0](stem(x))))``; x has shape (N, C, H, W),
    the result (N, num_classes). ``arch``, ``num_classes`` and ``in_channels`` record how it was built.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module] | nn.ModuleList,
        classifier: nn.Module,
        *,
        arch: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages if isinstance(stages, nn.ModuleList) else nn.ModuleList(stages)
        self.classifier = classifier
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x)

    def parts(self) -> list[tuple[str, nn.Module]]:
        """The pieces in forward order, named ``stem``, ``stage1`` .. ``stageS``, ``classifier``."""
        named = [("stem", self.stem)]
        named += [(f"stage{i + 1}", stage) for i, stage in enumerate(self.stages)]
        named.append(("classifier", self.classifier))
        return named

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, in_channels={self.in_channels}"


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def register_model(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register a backbone factory ``fn(num_classes, in_channels) -> Backbone`` under its name."""
    if fn.__name__ in ARCHS:
        raise ValueError(f"arch {fn.__name__!r} is already registered")
    ARCHS[fn.__name__] = fn
    return fn


def list_archs() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(ARCHS)


def build_backbone(
    arch: str, num_classes: int, *, in_channels: int = 3, zero_init_residual: bool = True
) -> Backbone:
    """Build a freshly (Kaiming-)initialised backbone of a registered architecture.

    ``zero_init_residual``: start every residual block as the identity (see the module docstring).
    Raises ValueError for an unknown ``arch`` (listing the valid ones) or a non-positive
    ``num_classes`` / ``in_channels``.
    """
    if arch not in ARCHS:
        msg = f"Unknown arch {arch!r}; choose from {', '.join(list_archs())}"
        close = difflib.get_close_matches(str(arch), list_archs(), n=1)
        if close:
            msg += f"; did you mean {close[0]!r}?"
        raise ValueError(msg)
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    net = ARCHS[arch](num_classes=num_classes, in_channels=in_channels)
    if zero_init_residual:
        zero_init_residual_(net)
    return net


@functools.cache
def num_stages(arch: str) -> int:
    """How many stages a registered arch has (built once on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return len(build_backbone(arch, 2).stages)


def zero_init_residual_(net: nn.Module) -> int:
    """Zero the last scale of every residual branch in ``net``, in place; returns how many.

    Each block then computes its shortcut alone at first; the zeroed weight still gets a gradient
    (its input is not zero), so the branch grows in from the first step.
    """
    zeroed = 0
    for m in net.modules():
        last = _last_residual_weight(m)
        if last is not None:
            nn.init.zeros_(last)
            zeroed += 1
    return zeroed


def _last_residual_weight(block: nn.Module) -> nn.Parameter | None:
    if isinstance(block, _BasicBlock):
        return block.bn2.weight
    if isinstance(block, _PreActBlock):
        return block.conv2.weight
    # torchvision is imported for ResNet-50 only (a second per process start): its blocks exist once it is
    tv = sys.modules.get("torchvision.models.resnet")
    if tv is not None and isinstance(block, tv.BasicBlock):
        return block.bn2.weight
    if tv is not None and isinstance(block, tv.Bottleneck):
        return block.bn3.weight
    return None


def _kaiming_init(module: nn.Module) -> None:
    if next(module.parameters()).is_meta:
        # built on the meta device (num_stages): no values to set, and torch's meta `normal_` imports
        # torch._dynamo, a second of every process that validates a config
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _pool_fc(channels: int, num_classes: int, *, preact: bool = False) -> nn.Sequential:
    """Classifier: [BN-ReLU for pre-activation nets,] global average pool, flatten, linear."""
    layers: list[tuple[str, nn.Module]] = []
    if preact:
        layers += [("bn", nn.BatchNorm2d(channels)), ("relu", nn.ReLU(inplace=True))]
    layers += [
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(channels, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(inplace=True),
        )
    )


# --- CIFAR ResNet (He et al. 2016, section 4.2) -------------------------------------------------


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the padding over both sides of the channel axis, as in the reference implementations.
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _PadShortcut(c_in, c_out, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _cifar_resnet(depth: int, num_classes: int, in_channels: int, arch: str) -> Backbone:
    n = (depth - 2) // 6
    widths = (16, 32, 64)
    stem = _conv_bn_relu(in_channels, widths[0])
    stages, c_in = [], widths[0]
    for i, width in enumerate(widths):
        blocks = [
            _BasicBlock(c_in if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1) for j in range(n)
        ]
        stages.append(nn.Sequential(*blocks))
        c_in = width
    net = Backbone(
        stem, stages, _pool_fc(c_in, num_classes), arch=arch, num_classes=num_classes, in_channels=in_channels
    )
    _kaiming_init(net)
    return net


@register_model
def resnet20(num_classes: int, in_channels: int = 3) -> Backbone:
    return _cifar_resnet(20, num_classes, in_channels, "resnet20")


@register_model
def resnet32(num_classes: int, in_channels: int = 3) -> Backbone:
    return _cifar_resnet(32, num_classes, in_channels, "resnet32")


@register_model
def resnet56(num_classes: int, in_channels: int = 3) -> Backbone:
    return _cifar_resnet(56, num_classes, in_channels, "resnet56")


@register_model
def resnet110(num_classes: int, in_channels: int = 3) -> Backbone:
    return _cifar_resnet(110, num_classes, in_channels, "resnet110")


# --- Wide ResNet (Zagoruyko & Komodakis 2016) -----------------------------------------------------


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus a 1x1-conv shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # The projection shortcut reads the pre-activated input, as in the reference WRN code.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(F.relu(self.bn2(o))))
        return o + skip


@register_model
def wrn28_10(num_classes: int, in_channels: int = 3) -> Backbone:
    depth, k = 28, 10
    n = (depth - 4) // 6
    widths = (16 * k, 32 * k, 64 * k)
    stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)))
    stages, c_in = [], 16
    for i, width in enumerate(widths):
        blocks = [
            _PreActBlock(c_in if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1) for j in range(n)
        ]
        stages.append(nn.Sequential(*blocks))
        c_in = width
    classifier = _pool_fc(c_in, num_classes, preact=True)
    net = Backbone(
        stem, stages, classifier, arch="wrn28_10", num_classes=num_classes, in_channels=in_channels
    )
    _kaiming_init(net)
    return net


# --- DenseNet (Huang et al. 2017), L=40, k=12 --------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


def _transition(channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            bn=nn.BatchNorm2d(channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(channels, channels, 1, bias=False),
            pool=nn.AvgPool2d(2),
        )
    )


@register_model
def densenet40(num_classes: int, in_channels: int = 3) -> Backbone:
    depth, growth = 40, 12
    layers_per_block = (depth - 4) // 3
    channels = 16
    stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)))
    stages = []
    for i in range(3):
        block = []
        for _ in range(layers_per_block):
            block.append(_DenseLayer(channels, growth))
            channels += growth
        parts: list[tuple[str, nn.Module]] = [("block", nn.Sequential(*block))]
        if i < 2:
            parts.append(("transition", _transition(channels)))
        stages.append(nn.Sequential(OrderedDict(parts)))
    classifier = _pool_fc(channels, num_classes, preact=True)
    net = Backbone(
        stem, stages, classifier, arch="densenet40", num_classes=num_classes, in_channels=in_channels
    )
    _kaiming_init(net)
    return net


# --- torchvision ResNet-50, regrouped ----------------------------------------------------------


@register_model
def resnet50(num_classes: int, in_channels: int = 3) -> Backbone:
    import torchvision

    tv = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        tv.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(tv.conv1.weight, mode="fan_out", nonlinearity="relu")
    # torchvision already initialises convs Kaiming-normal (fan_out); keep its init otherwise.
    stem = nn.Sequential(OrderedDict(conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, maxpool=tv.maxpool))
    stages = [tv.layer1, tv.layer2, tv.layer3, tv.layer4]
    classifier = nn.Sequential(OrderedDict(avgpool=tv.avgpool, flatten=nn.Flatten(), fc=tv.fc))
    return Backbone(
        stem, stages, classifier, arch="resnet50", num_classes=num_classes, in_channels=in_channels
    )


# --- small CNN for the 8x8 digits quickstart ---------------------------------------------------


@register_model
def cnn_small(num_classes: int, in_channels: int = 3) -> Backbone:
    """Stem conv-16 at full resolution, stages 24 (8x8), 32 (4x4), 48 (2x2): ~25k parameters."""
    stem = _conv_bn_relu(in_channels, 16)
    stages = [_conv_bn_relu(16, 24), _conv_bn_relu(24, 32, stride=2), _conv_bn_relu(32, 48, stride=2)]
    net = Backbone(
        stem,
        stages,
        _pool_fc(48, num_classes),
        arch="cnn_small",
        num_classes=num_classes,
        in_channels=in_channels,
    )
    _kaiming_init(net)
    return net

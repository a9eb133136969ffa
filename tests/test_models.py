"""Backbones: every registered arch trains one step on a tiny input; sizes match the papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.models import ARCHS, Backbone, build_backbone, count_parameters, list_archs, register_model

torch.set_num_threads(1)

# (batch, channels, side) per arch: small, but large enough that every BN sees > 1 value per channel.
TINY_INPUT = {
    "cnn_small": (2, 1, 8),
    "resnet20": (2, 3, 8),
    "resnet32": (2, 3, 8),
    "resnet56": (2, 3, 8),
    "resnet110": (2, 3, 8),
    "densenet40": (2, 3, 8),
    "wrn28_10": (1, 3, 8),
    "resnet50": (2, 3, 64),
}


def test_every_registered_arch_has_a_tiny_input():
    assert sorted(TINY_INPUT) == list_archs()


@pytest.mark.parametrize("arch", list_archs())
def test_forward_backward_every_parameter_gets_a_finite_gradient(arch):
    torch.manual_seed(0)
    batch, channels, side = TINY_INPUT[arch]
    net = build_backbone(arch, 7, in_channels=channels)
    assert isinstance(net, Backbone)
    assert net.arch == arch and net.num_classes == 7 and net.in_channels == channels
    x = torch.randn(batch, channels, side, side)
    out = net(x)
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(batch) % 7).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{arch}: {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{arch}: {name} has a non-finite gradient"
    # Some gradient must be non-zero, or the test would pass on a dead network.
    assert sum(p.grad.abs().sum().item() for p in net.parameters()) > 0


@pytest.mark.parametrize("arch", list_archs())
def test_forward_is_classifier_of_stages_of_stem(arch):
    torch.manual_seed(0)
    batch, channels, side = TINY_INPUT[arch]
    net = build_backbone(arch, 5, in_channels=channels).eval()
    x = torch.randn(batch, channels, side, side)
    h = net.stem(x)
    for stage in net.stages:
        h = stage(h)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.classifier(h))
    assert [name for name, _ in net.parts()] == ["stem"] + [
        f"stage{i + 1}" for i in range(len(net.stages))
    ] + ["classifier"]
    assert len(net.stages) == (4 if arch == "resnet50" else 3)


@pytest.mark.parametrize(
    ("arch", "published_millions"),
    [("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85), ("resnet110", 1.7), ("wrn28_10", 36.5)],
)
def test_parameter_counts_match_the_papers(arch, published_millions):
    count = count_parameters(build_backbone(arch, 10))
    assert abs(count / 1e6 - published_millions) / published_millions < 0.025, count


def test_densenet40_and_cnn_small_sizes():
    assert 0.95e6 < count_parameters(build_backbone("densenet40", 10)) < 1.1e6  # published 1.0M
    assert 20_000 <= count_parameters(build_backbone("cnn_small", 10, in_channels=1)) <= 50_000


def test_cifar_resnet_uses_parameter_free_option_a_shortcuts():
    net = build_backbone("resnet20", 10)
    # Option A: the only convs are the 3x3 ones (stem + 2 per block); no 1x1 projections.
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 9
    assert all(m.kernel_size == (3, 3) for m in convs)
    x = torch.randn(2, 3, 16, 16)
    assert net.stages[2](net.stages[1](net.stages[0](net.stem(x)))).shape == (2, 64, 4, 4)


def test_resnet50_is_torchvisions_network_regrouped():
    import torchvision  # here, not at the top: its import takes a second of every test process

    torch.manual_seed(0)
    net = build_backbone("resnet50", 10).eval()
    reference = torchvision.models.resnet50(weights=None, num_classes=10).eval()
    renamed = {}
    for key, value in net.state_dict().items():
        group, rest = key.split(".", 1)
        if group == "stem" or group == "classifier":
            renamed[rest] = value
        else:  # stages.i.* -> layer{i+1}.*
            index, rest = rest.split(".", 1)
            renamed[f"layer{int(index) + 1}.{rest}"] = value
    reference.load_state_dict(renamed, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))
    assert count_parameters(net) == count_parameters(reference)


def test_in_channels_changes_the_first_conv():
    for arch in ("resnet20", "resnet50", "densenet40", "cnn_small"):
        net = build_backbone(arch, 3, in_channels=1)
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.in_channels == 1, arch


def test_unknown_arch_lists_choices_and_suggests_a_close_name():
    with pytest.raises(
        ValueError, match=r"Unknown arch 'resnet33'; choose from cnn_small, densenet40, "
    ) as err:
        build_backbone("resnet33", 10)
    assert "did you mean" in str(err.value)
    with pytest.raises(ValueError, match="Unknown arch 'vgg16'"):
        build_backbone("vgg16", 10)


@pytest.mark.parametrize(
    ("field", "kwargs"), [("num_classes", {"num_classes": 0}), ("in_channels", {"in_channels": 0})]
)
def test_bad_sizes_are_rejected(field, kwargs):
    args = {"num_classes": 10, "in_channels": 3} | kwargs
    with pytest.raises(ValueError, match=field):
        build_backbone("resnet20", args["num_classes"], in_channels=args["in_channels"])


def test_register_model_rejects_a_duplicate_name():
    assert "resnet20" in ARCHS
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def resnet20(num_classes, in_channels=3):
            raise AssertionError("never built")


def test_cnn_small_learns_digits_in_a_few_cpu_seconds():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    torch.manual_seed(0)
    digits = sklearn_datasets.load_digits()  # bundled with scikit-learn, no download
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    train, test = order[:1400], order[1400:]
    net = build_backbone("cnn_small", 10, in_channels=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(3):
        net.train()
        shuffled = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(shuffled), 64):
            batch = shuffled[i : i + 64]
            loss = F.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.9

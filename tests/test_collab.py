"""The collaborative training graph (topologies, export, rescaling) and the collaborative loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.collab import (
    TOPOLOGIES,
    BackpropRescale,
    GradScale,
    TrainingGraph,
    build_training_graph,
    collaborative_loss,
    default_split,
    grad_scale,
    loss_scale,
)
from harness.models import ARCHS, Backbone, build_backbone, count_parameters, list_archs, num_stages

torch.set_num_threads(1)

# (channels, side) of a tiny input per arch used here.
INPUT = {"resnet20": (3, 8), "cnn_small": (1, 8), "densenet40": (3, 8)}
HEADS = {"individual": 1, "instances": 2, "simple": 3, "hierarchical": 4}


def tiny_graph(arch, topology, heads, **kwargs) -> TrainingGraph:
    channels, _ = INPUT[arch]
    return build_training_graph(arch, 5, topology, heads, in_channels=channels, **kwargs)


def tiny_input(arch, batch=2):
    channels, side = INPUT[arch]
    return torch.randn(batch, channels, side, side)


# --- topologies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("arch", sorted(INPUT))
def test_forward_gives_h_logits_and_backward_reaches_every_parameter(arch, topology):
    torch.manual_seed(0)
    heads = HEADS[topology]
    graph = tiny_graph(arch, topology, heads)
    assert graph.heads == heads and graph.topology == topology and graph.rescale == "backprop"
    out = graph(tiny_input(arch))
    assert isinstance(out, list) and len(out) == heads
    assert all(z.shape == (2, 5) and torch.isfinite(z).all() for z in out)
    sum(F.cross_entropy(z, torch.tensor([0, 3])) for z in out).backward()
    for name, p in graph.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_parameter_sharing_per_topology():
    single = count_parameters(build_backbone("resnet20", 5))
    stem_stage1 = count_parameters(build_backbone("resnet20", 5).stem) + count_parameters(
        build_backbone("resnet20", 5).stages[0]
    )
    stage2 = count_parameters(build_backbone("resnet20", 5).stages[1])
    assert count_parameters(build_training_graph("resnet20", 5, "individual", 1)) == single
    assert count_parameters(build_training_graph("resnet20", 5, "instances", 3)) == 3 * single
    # simple, default split 1: stem + stage 1 once, the rest per head.
    assert count_parameters(build_training_graph("resnet20", 5, "simple", 3)) == 3 * single - 2 * stem_stage1
    # hierarchical H=4, default [1, 2]: stem + stage 1 once, stage 2 per pair, stage 3 + fc per head.
    expected = 4 * single - 3 * stem_stage1 - 2 * stage2
    assert count_parameters(build_training_graph("resnet20", 5, "hierarchical", 4)) == expected


def test_hierarchical_tree_pairs_heads_at_the_second_level():
    graph = build_training_graph("resnet20", 5, "hierarchical", 4, split=[1, 2])
    path = [graph.head_path(h) for h in range(4)]
    assert all(p[0] is graph.root for p in path)
    assert path[0][1] is path[1][1] and path[2][1] is path[3][1] and path[0][1] is not path[2][1]
    assert len({id(p[2]) for p in path}) == 4
    names = [[name for name, _ in segment.body.named_children()] for segment in path[0]]
    assert names == [["stem", "stage1"], ["stage2"], ["stage3", "classifier"]]


def test_heads_start_from_independent_initialisations():
    torch.manual_seed(0)
    graph = build_training_graph("resnet20", 5, "simple", 2)
    a, b = graph.root.branches
    assert not torch.equal(a.body.stage2[0].conv1.weight, b.body.stage2[0].conv1.weight)


def test_state_dict_round_trips_into_a_fresh_graph():
    graph = build_training_graph("cnn_small", 5, "hierarchical", 4, in_channels=1)
    keys = list(graph.state_dict())
    assert keys[0] == "root.body.stem.conv.weight"
    assert all(k.startswith("root.") for k in keys)
    fresh = build_training_graph("cnn_small", 5, "hierarchical", 4, in_channels=1)
    fresh.load_state_dict(graph.state_dict(), strict=True)
    graph.eval(), fresh.eval()
    x = tiny_input("cnn_small")
    for a, b in zip(graph(x), fresh(x)):
        torch.testing.assert_close(a, b)


def test_head_parameters_follow_the_path():
    graph = build_training_graph("resnet20", 5, "hierarchical", 4)
    single = count_parameters(build_backbone("resnet20", 5))
    for h in range(4):
        params = graph.head_parameters(h)
        assert sum(p.numel() for p in params) == single
    shared = {id(p) for p in graph.root.body.parameters()}
    assert shared <= {id(p) for p in graph.head_parameters(3)}
    own3 = {id(p) for p in graph.head_parameters(3)} - shared
    assert not {id(p) for p in graph.head_parameters(0)} & own3


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "topology", "heads", "split"),
    [
        ("resnet20", "individual", 1, None),
        ("resnet20", "instances", 3, None),
        ("resnet20", "simple", 3, None),
        ("resnet20", "hierarchical", 4, None),
        ("cnn_small", "simple", 2, 0),
        ("cnn_small", "simple", 2, 3),
        ("cnn_small", "hierarchical", 2, None),
        ("cnn_small", "hierarchical", 4, [0, 3]),
        ("cnn_small", "hierarchical", 8, None),
        ("densenet40", "hierarchical", 4, None),
    ],
)
def test_export_head_equals_the_head_and_has_the_backbones_size(arch, topology, heads, split):
    torch.manual_seed(0)
    graph = tiny_graph(arch, topology, heads, split=split)
    # A training-mode pass moves the BN running statistics away from their init, so the export
    # must carry buffers, not just parameters.
    graph(tiny_input(arch, batch=4))
    graph.eval()
    x = tiny_input(arch, batch=3)
    with torch.no_grad():
        outs = graph(x)
    channels, _ = INPUT[arch]
    reference = build_backbone(arch, 5, in_channels=channels)
    for h in range(heads):
        net = graph.export_head(h).eval()
        assert type(net) is type(reference) is Backbone
        assert count_parameters(net) == count_parameters(reference)
        with torch.no_grad():
            out = net(x)
        torch.testing.assert_close(out, outs[h], rtol=1e-5, atol=1e-6)
        if heads > 1:  # heads differ, so matching head h is not an accident
            assert not torch.allclose(out, outs[(h + 1) % heads])


def test_export_head_is_a_deep_copy():
    torch.manual_seed(0)
    graph = build_training_graph("resnet20", 5, "simple", 2)
    exported = graph.export_head(1).eval()
    x = tiny_input("resnet20")
    with torch.no_grad():
        before = exported(x)
        for p in graph.parameters():
            p.add_(0.1)
        graph(x)  # train-mode pass: updates the graph's BN buffers
        torch.testing.assert_close(exported(x), before)
    assert not any(p is q for p in exported.parameters() for q in graph.parameters())


def test_export_head_rejects_a_bad_head():
    graph = build_training_graph("resnet20", 5, "simple", 2)
    for bad in (-1, 2, 1.0):
        with pytest.raises(ValueError, match="head must be an integer in"):
            graph.export_head(bad)


# --- backpropagation rescaling ----------------------------------------------------------------


def test_grad_scale_is_identity_forward_and_scales_backward():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = grad_scale(x, 0.25)
    torch.testing.assert_close(y, x)
    (y * torch.arange(12.0, dtype=torch.float64).reshape(3, 4)).sum().backward()
    torch.testing.assert_close(x.grad, 0.25 * torch.arange(12.0, dtype=torch.float64).reshape(3, 4))
    module = BackpropRescale(0.5)
    z = torch.ones(2, requires_grad=True)
    GradScale.apply(module(z), 2.0).sum().backward()
    torch.testing.assert_close(z.grad, torch.ones(2))


def make_heads_identical(graph: TrainingGraph) -> None:
    """Copy the first segment of every tree level into its siblings' places."""
    level = [graph.root]
    while level:
        for segment in level[1:]:
            segment.body.load_state_dict(level[0].body.state_dict())
        level = [child for segment in level for child in segment.branches]


def shared_grads_vs_single(topology, heads, rescale, split=None):
    """Gradients of the summed CE at the root and (hierarchical) the first mid-level segment, and
    those of the same layers in one plain network with the same weights."""
    torch.manual_seed(0)
    graph = build_training_graph("resnet20", 5, topology, heads, rescale=rescale, split=split).double()
    make_heads_identical(graph)
    single = graph.export_head(0)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    outs = graph(x)
    for z in outs[1:]:
        torch.testing.assert_close(z, outs[0])  # the heads really are identical
    sum(F.cross_entropy(z, y) for z in outs).backward()
    F.cross_entropy(single(x), y).backward()
    single_parts = dict(single.parts())
    levels = [graph.root] + ([graph.root.branches[0]] if topology == "hierarchical" else [])
    result = []
    for segment in levels:
        for name, module in segment.body.named_children():
            for (pname, p), q in zip(module.named_parameters(), single_parts[name].parameters()):
                result.append((segment, f"{name}.{pname}", p.grad, q.grad))
    return graph, result


@pytest.mark.parametrize(
    ("topology", "heads", "split"), [("simple", 2, None), ("simple", 3, 2), ("hierarchical", 4, None)]
)
def test_rescaling_gives_shared_layers_the_single_network_gradient(topology, heads, split):
    _, grads = shared_grads_vs_single(topology, heads, True, split)
    assert grads
    for _, name, g, g_single in grads:
        torch.testing.assert_close(g, g_single, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize("rescale", ["none", "loss", False])
@pytest.mark.parametrize(
    ("topology", "heads", "split"), [("simple", 2, None), ("simple", 3, 2), ("hierarchical", 4, None)]
)
def test_without_rescaling_shared_gradients_are_multiplied_by_the_fanout(topology, heads, split, rescale):
    graph, grads = shared_grads_vs_single(topology, heads, rescale, split)
    assert graph.rescale == ("none" if rescale is False else rescale)
    assert loss_scale(graph.rescale, heads) == (1.0 / heads if rescale == "loss" else 1.0)
    for segment, name, g, g_single in grads:
        # Root: fed to all H heads; a hierarchical mid-level segment: fed to its 2 children.
        times = heads if segment is graph.root else 2
        torch.testing.assert_close(g, times * g_single, rtol=1e-7, atol=1e-10, msg=name)


def test_rescaling_modules_sit_only_at_forks():
    rescaled = build_training_graph("resnet20", 5, "hierarchical", 4)
    scales = [m.scale for m in rescaled.modules() if isinstance(m, BackpropRescale)]
    assert scales == [0.5, 0.5, 0.5]  # root fork, then one per pair
    simple = build_training_graph("resnet20", 5, "simple", 3)
    assert [m.scale for m in simple.modules() if isinstance(m, BackpropRescale)] == [pytest.approx(1 / 3)]
    instances = build_training_graph("resnet20", 5, "instances", 2)
    assert not any(isinstance(m, BackpropRescale) for m in instances.modules())  # nothing shared
    for rescale in ("none", "loss"):
        graph = build_training_graph("resnet20", 5, "simple", 3, rescale=rescale)
        assert not any(isinstance(m, BackpropRescale) for m in graph.modules())


# --- the collaborative loss ---------------------------------------------------------------------


def np_log_softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def test_collaborative_loss_matches_a_hand_computation():
    z = np.array(
        [
            [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]],
            [[0.0, 1.0, 0.0], [1.0, 1.0, -2.0]],
            [[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]],
        ]
    )  # (H=3, N=2, K=3)
    y = np.array([0, 1])
    T, beta = 2.0, 0.3
    expected = []
    for h in range(3):
        others = np.mean([z[j] for j in range(3) if j != h], axis=0)
        q = np.exp(np_log_softmax(others / T))
        soft = -(q * np_log_softmax(z[h] / T)).sum(axis=1).mean()
        hard = -np_log_softmax(z[h])[np.arange(2), y].mean()
        expected.append(beta * hard + (1 - beta) * T**2 * soft)
    logits = [torch.tensor(zh, dtype=torch.float32) for zh in z]
    per = collaborative_loss(logits, torch.tensor(y), T=T, beta=beta, per_head=True)
    assert per.shape == (3,)
    np.testing.assert_allclose(per.numpy(), expected, rtol=1e-5)
    total = collaborative_loss(logits, torch.tensor(y), T=T, beta=beta)
    assert total.shape == ()
    np.testing.assert_allclose(total.item(), sum(expected), rtol=1e-5)
    # Spot-check one number by hand: head 0, sample 0, beta = 1 is plain CE = log(1 + e^-1 + e^-2).
    only_hard = collaborative_loss(logits, torch.tensor(y), T=T, beta=1.0, per_head=True)
    ce_00 = math.log(1 + math.exp(-1) + math.exp(-2))
    ce_01 = -np_log_softmax(z[0])[1, 1]
    np.testing.assert_allclose(only_hard[0].item(), (ce_00 + ce_01) / 2, rtol=1e-6)


def test_soft_target_carries_no_gradient():
    torch.manual_seed(0)
    raw = [torch.randn(4, 5) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3])
    T, beta = 3.0, 0.4

    def reference(logits, detach):
        total = 0.0
        for h, zh in enumerate(logits):
            others = torch.stack([logits[j] for j in range(3) if j != h]).mean(0)
            q = F.softmax((others.detach() if detach else others) / T, dim=1)
            soft = -(q * F.log_softmax(zh / T, dim=1)).sum(1).mean()
            total = total + beta * F.cross_entropy(zh, y) + (1 - beta) * T**2 * soft
        return total

    def grads(fn):
        leaves = [r.clone().requires_grad_(True) for r in raw]
        fn(leaves).backward()
        return [leaf.grad for leaf in leaves]

    ours = grads(lambda zs: collaborative_loss(zs, y, T=T, beta=beta))
    detached = grads(lambda zs: reference(zs, detach=True))
    through = grads(lambda zs: reference(zs, detach=False))
    for a, b in zip(ours, detached):
        torch.testing.assert_close(a, b)
    assert not all(torch.allclose(a, b) for a, b in zip(ours, through))


def test_single_head_is_plain_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(collaborative_loss([z], y, T=2.0, beta=beta), F.cross_entropy(z, y))
    assert collaborative_loss([z], y, T=2.0, beta=0.5, per_head=True).shape == (1,)


def test_bf16_logits_are_computed_in_float32():
    torch.manual_seed(0)
    logits = [torch.randn(8, 10).bfloat16() for _ in range(2)]
    y = torch.randint(0, 10, (8,))
    loss = collaborative_loss(logits, y, T=2.0, beta=0.5)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, collaborative_loss([z.float() for z in logits], y, T=2.0, beta=0.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"T": 0.0, "beta": 0.5}, "T"),
        ({"T": -1.0, "beta": 0.5}, "T"),
        ({"T": 2.0, "beta": 1.5}, "beta"),
        ({"T": 2.0, "beta": -0.1}, "beta"),
    ],
)
def test_loss_validates_T_and_beta(kwargs, message):
    with pytest.raises(ValueError, match=message):
        collaborative_loss([torch.zeros(2, 3)] * 2, torch.tensor([0, 1]), **kwargs)


def test_loss_rejects_empty_or_mismatched_logits():
    with pytest.raises(ValueError, match="at least one"):
        collaborative_loss([], torch.tensor([0]), T=2.0, beta=0.5)
    with pytest.raises(ValueError, match="same shape"):
        collaborative_loss([torch.zeros(2, 3), torch.zeros(2, 4)], torch.tensor([0, 1]), T=2.0, beta=0.5)


# --- defaults and errors ------------------------------------------------------------------------


def test_default_splits_follow_each_archs_number_of_stages():
    for arch in list_archs():
        stages = num_stages(arch)
        assert stages == (4 if arch == "resnet50" else 3)
        assert default_split(arch, "simple", 2) == stages - 2
        for heads in (2, 4, 8):
            split = default_split(arch, "hierarchical", heads)
            assert len(split) == int(math.log2(heads)) and list(split) == sorted(set(split))
            assert split[0] >= 0 and split[-1] <= stages - 1  # every head owns its last stage
    assert default_split("resnet20", "hierarchical", 4) == (1, 2)
    assert default_split("resnet32", "hierarchical", 8) == (0, 1, 2)
    assert default_split("resnet50", "hierarchical", 4) == (2, 3)
    assert default_split("resnet50", "hierarchical", 8) == (1, 2, 3)
    assert default_split("resnet20", "instances", 3) is None
    with pytest.raises(ValueError, match="no default split for arch 'resnet20' \\(3 stages\\)"):
        default_split("resnet20", "hierarchical", 16)


def test_a_newly_registered_arch_gets_its_default_split_from_its_stages(monkeypatch):
    def two_stage(num_classes, in_channels=3):
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        return Backbone(
            conv(in_channels, 4),
            [conv(4, 8), conv(8, 8)],
            head,
            arch="two_stage",
            num_classes=num_classes,
            in_channels=in_channels,
        )

    monkeypatch.setitem(ARCHS, "two_stage", two_stage)
    assert default_split("two_stage", "simple", 3) == 0
    graph = build_training_graph("two_stage", 5, "hierarchical", 4)
    assert graph.split == (0, 1)
    assert len(graph(torch.randn(2, 3, 8, 8))) == 4
    num_stages.cache_clear()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("resnet33", 10, "simple", 2), {}, "Unknown arch 'resnet33'"),
        (("resnet20", 10, "tree", 2), {}, "Unknown topology 'tree'; choose from individual, instances"),
        (("resnet20", 10, "individual", 2), {}, "topology individual trains one head, got heads=2"),
        (("resnet20", 10, "simple", 1), {}, "topology simple needs at least 2 heads, got 1"),
        (("resnet20", 10, "instances", 1), {}, "needs at least 2 heads"),
        (("resnet20", 10, "hierarchical", 6), {}, "power of two"),
        (("resnet20", 10, "hierarchical", 1), {}, "needs at least 2 heads"),
        (("resnet20", 10, "simple", 2.0), {}, "heads must be an integer"),
        (("resnet20", 10, "simple", 2), {"rescale": "grad"}, "rescale must be one of backprop, loss, none"),
        (("resnet20", 10, "simple", 2), {"split": 4}, "out of range.*0..3"),
        (("resnet20", 10, "simple", 2), {"split": -1}, "out of range"),
        (("resnet20", 10, "simple", 2), {"split": [1, 2]}, "one boundary"),
        (("resnet20", 10, "simple", 2), {"split": "1"}, "integer or a list"),
        (("resnet20", 10, "hierarchical", 4), {"split": [2, 1]}, "strictly increasing"),
        (("resnet20", 10, "hierarchical", 4), {"split": [1, 1]}, "strictly increasing"),
        (("resnet20", 10, "hierarchical", 4), {"split": [1]}, "log2\\(heads\\) = 2 boundaries"),
        (("resnet20", 10, "hierarchical", 16), {}, "no default split"),
        (("cnn_small", 10, "hierarchical", 4), {"split": [2, 5]}, "out of range.*0..3"),
        (("resnet20", 10, "instances", 2), {"split": 1}, "split is not used"),
    ],
)
def test_bad_graph_arguments_fail_with_a_clear_message(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_training_graph(*args, **kwargs)


def test_soft_weight_moves_from_plain_cross_entropy_to_the_papers_objective():
    torch.manual_seed(0)
    logits = [torch.randn(8, 5, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 5, (8,))
    plain = sum(F.cross_entropy(z, y) for z in logits)
    paper = collaborative_loss(logits, y, T=2.0, beta=0.3)
    torch.testing.assert_close(collaborative_loss(logits, y, T=2.0, beta=0.3, soft_weight=0.0), plain)
    torch.testing.assert_close(collaborative_loss(logits, y, T=2.0, beta=0.3, soft_weight=1.0), paper)
    # linear in the weight, also when the weight is a device tensor (as a captured step reads it)
    half = collaborative_loss(logits, y, T=2.0, beta=0.3, soft_weight=torch.tensor(0.5))
    torch.testing.assert_close(half, (plain + paper) / 2)
    half.backward()
    assert all(z.grad is not None and torch.isfinite(z.grad).all() for z in logits)


def test_an_alternating_step_changes_only_the_parameters_on_that_heads_path():
    from harness.collab.methods import CollaborativeLearning
    from harness.train.objective import Objective
    from harness.train.optim import SGD
    from harness.train.step import EagerStep

    torch.manual_seed(0)
    graph = build_training_graph("cnn_small", 4, "hierarchical", 4, in_channels=1)
    opt = SGD(graph.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    for head in (2, 0):
        before = {name: p.detach().clone() for name, p in graph.named_parameters()}
        on_path = {id(p) for p in graph.head_parameters(head)}
        objective = Objective(CollaborativeLearning(heads=4, head=head))
        EagerStep(graph, opt, objective, device="cpu", amp=False)(x, y)
        for name, p in graph.named_parameters():
            moved = not torch.equal(p.detach(), before[name])
            assert moved == (id(p) in on_path), f"head {head}: {name} moved={moved}"


def test_one_heads_loss_equals_its_share_of_the_per_head_losses():
    torch.manual_seed(0)
    logits = [torch.randn(6, 4) for _ in range(4)]
    y = torch.randint(0, 4, (6,))
    per = collaborative_loss(logits, y, T=2.0, beta=0.5, per_head=True)
    for h in range(4):
        torch.testing.assert_close(collaborative_loss(logits, y, T=2.0, beta=0.5, head=h), per[h])

"""Label losses (CE with smoothing, GCE, SCE) against hand-computed values, and their place in the
collaborative objective and the training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness import config as C
from harness.collab import build_training_graph, collaborative_loss
from harness.collab.losses import generalized_cross_entropy, make_label_loss, symmetric_cross_entropy
from harness.train.training import setup_training

torch.set_num_threads(1)

# Two samples whose softmax is known exactly: p = (0.5, 0.25, 0.25); labels 0 (p_y = 0.5) and 1 (0.25).
LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
TARGET = torch.tensor([0, 1])


def test_gce_by_hand():
    # (1 - p^0.7) / 0.7 for p = 0.5 and 0.25: 0.5^0.7 = 0.615572..., 0.25^0.7 = 0.378929...
    by_hand = ((1 - 0.5**0.7) / 0.7 + (1 - 0.25**0.7) / 0.7) / 2
    assert by_hand == pytest.approx((0.549183 + 0.887244) / 2, abs=1e-6)
    assert generalized_cross_entropy(LOGITS, TARGET, q=0.7).item() == pytest.approx(by_hand, rel=1e-6)
    # q = 1 is mean absolute error of the label's probability: 1 - p
    assert generalized_cross_entropy(LOGITS, TARGET, q=1.0).item() == pytest.approx(
        (0.5 + 0.75) / 2, rel=1e-6
    )


def test_sce_by_hand():
    # alpha * (-ln p) + beta * 4 * (1 - p): 0.1 * ln 2 + 4 * 0.5 and 0.1 * ln 4 + 4 * 0.75
    by_hand = ((0.1 * math.log(2) + 2.0) + (0.1 * math.log(4) + 3.0)) / 2
    assert symmetric_cross_entropy(LOGITS, TARGET, alpha=0.1, beta=1.0).item() == pytest.approx(
        by_hand, rel=1e-6
    )
    assert symmetric_cross_entropy(LOGITS, TARGET, alpha=1.0, beta=0.0).item() == pytest.approx(
        F.cross_entropy(LOGITS, TARGET).item(), rel=1e-6
    )


def test_smoothed_cross_entropy_by_hand():
    eps, k = 0.1, 3
    p = torch.tensor([0.5, 0.25, 0.25])
    per = [-((1 - eps) * math.log(p[y]) + eps / k * sum(math.log(v) for v in p)) for y in (0, 1)]
    loss = make_label_loss("ce", label_smoothing=eps)
    assert loss(LOGITS, TARGET).item() == pytest.approx(sum(per) / 2, rel=1e-6)
    assert make_label_loss("ce")(LOGITS, TARGET).item() == pytest.approx(
        (math.log(2) + math.log(4)) / 2, rel=1e-6
    )


def test_gce_gradient_stays_finite_where_the_label_probability_underflows():
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)  # p(label 1) = exp(-400): 0 in float32
    generalized_cross_entropy(logits, torch.tensor([1])).backward()
    assert torch.isfinite(logits.grad).all()


def test_make_label_loss_refuses_unknown_names_and_smoothing_of_robust_losses():
    with pytest.raises(ValueError, match="unknown label loss 'mae'; choose from ce, gce, sce"):
        make_label_loss("mae")
    with pytest.raises(ValueError, match="applies to cross-entropy"):
        make_label_loss("gce", label_smoothing=0.1)


@pytest.mark.parametrize("name", ["gce", "sce"])
def test_the_label_loss_replaces_every_heads_label_term_and_leaves_the_soft_term(name):
    torch.manual_seed(0)
    logits = [torch.randn(6, 4) for _ in range(3)]
    y = torch.randint(0, 4, (6,))
    robust = make_label_loss(name)
    beta, share = 0.3, 0.7  # the soft term's share is 1 - beta
    ce_heads = collaborative_loss(logits, y, T=2.0, beta=beta, per_head=True)
    robust_heads = collaborative_loss(logits, y, T=2.0, beta=beta, per_head=True, label_loss=robust)
    for h in range(3):
        diff = (1 - share) * (robust(logits[h], y) - F.cross_entropy(logits[h], y))
        torch.testing.assert_close(robust_heads[h] - ce_heads[h], diff)
    # one head: the plain label loss
    torch.testing.assert_close(
        collaborative_loss(logits[:1], y, T=2.0, beta=beta, label_loss=robust), robust(logits[0], y)
    )


@pytest.mark.parametrize(
    ("overrides", "loss"),
    [
        ({"optim.label_loss": "gce"}, lambda z, y: generalized_cross_entropy(z, y, q=0.7)),
        (
            {"optim.label_loss": "gce", "optim.gce_q": 0.5},
            lambda z, y: generalized_cross_entropy(z, y, q=0.5),
        ),
        ({"optim.label_loss": "sce"}, lambda z, y: symmetric_cross_entropy(z, y, alpha=0.1, beta=1.0)),
        ({"optim.label_smoothing": 0.2}, lambda z, y: F.cross_entropy(z, y, label_smoothing=0.2)),
    ],
)
def test_the_config_reaches_the_training_step(overrides, loss):
    cfg = C.build_config({}, {"run.device": "cpu", **overrides})
    torch.manual_seed(0)
    graph = build_training_graph("cnn_small", 10, "individual", 1, in_channels=1)
    training = setup_training(graph, cfg, device="cpu", steps_per_epoch=1, batch_size=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    expected = loss(graph(x)[0], y)  # train mode both times: the same batch statistics
    got = training.step(x, y).loss
    torch.testing.assert_close(got, expected.detach())

"""The label-noise methods (harness.collab.methods) against references written straight from each rule in the
official codes' style (argsort, index gathers, Python ints): losses, gradients w.r.t. each head's
logits, the masks of kept samples; the forget-rate schedule; fixed shapes without host syncs (every
method runs on the meta device, where any .item(), boolean indexing or nonzero fails); error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.collab.methods import METHODS, build_method, forget_rate, keep_count
from harness.collab.methods.coteaching_plus import CoTeachingPlus

torch.set_num_threads(1)

B, K, D = 32, 10, 16
RATES = [0.0, 0.2, 0.35, 0.37, 0.5, 0.8, 0.95]  # (1 - R) * 32 = 32, 25.6, 20.8, 20.16, 16, 6.4, 1.6


def linear_heads(heads: int, seed: int, scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of ``heads`` small linear heads on one random batch (B, D), and random labels (B,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    logits = [scale * x @ torch.randn(D, K, generator=g) for _ in range(heads)]
    return logits, torch.randint(0, K, (B,), generator=g)


def tied_heads(heads: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A batch of 16 samples twice over (sample i and i + 16 identical): every loss appears twice, so
    an odd kept count splits a tie."""
    logits, target = linear_heads(heads, seed=7)
    return [torch.cat([z[:16], z[:16]]) for z in logits], torch.cat([target[:16], target[:16]])


def run(method, logits, target):
    """The method's loss, mask and the gradient w.r.t. each head's logits."""
    leaves = [z.detach().clone().requires_grad_(True) for z in logits]
    loss, mask = method(leaves, target)
    loss.backward()
    return loss.detach(), mask, [z.grad for z in leaves]


def reference(fn, logits, target, *args):
    """``fn(leaves, target, *args) -> (loss, masks)`` with the gradient w.r.t. each head's logits."""
    leaves = [z.detach().clone().requires_grad_(True) for z in logits]
    loss, masks = fn(leaves, target, *args)
    loss.backward()
    return loss.detach(), masks, [torch.zeros_like(z) if z.grad is None else z.grad for z in leaves]


def indices_mask(indices) -> torch.Tensor:
    mask = torch.zeros(B, dtype=torch.bool)
    mask[torch.as_tensor(indices, dtype=torch.long)] = True
    return mask


def assert_same(ours, ref):
    (loss, mask, grads), (ref_loss, ref_mask, ref_grads) = ours, ref
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    if ref_mask is not None:
        assert torch.equal(mask, ref_mask)
    for g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref_g, rtol=1e-5, atol=1e-7)


# --- references, official-code style ----------------------------------------------------------------


def ref_coteaching(z, t, R):
    """bhanML/Co-teaching loss.py with the paper's mean over the kept samples; stable argsort (the
    official np.argsort is not stable) so ties go by batch position; 0 kept samples: a zero loss."""
    z1, z2 = z
    loss_1 = F.cross_entropy(z1, t, reduction="none")
    loss_2 = F.cross_entropy(z2, t, reduction="none")
    ind_1_sorted = np.argsort(loss_1.detach().numpy(), kind="stable")
    ind_2_sorted = np.argsort(loss_2.detach().numpy(), kind="stable")
    num_remember = int((1 - R) * len(loss_1))
    ind_1_update, ind_2_update = ind_1_sorted[:num_remember], ind_2_sorted[:num_remember]
    if num_remember == 0:
        return (z1.sum() + z2.sum()) * 0.0, (ind_2_update, ind_1_update)
    loss_1_update = F.cross_entropy(z1[ind_2_update], t[ind_2_update])  # head 1 on head 2's selection
    loss_2_update = F.cross_entropy(z2[ind_1_update], t[ind_1_update])
    return loss_1_update + loss_2_update, (ind_2_update, ind_1_update)


def ref_coteaching_masks(z, t, R):
    loss, (i1, i2) = ref_coteaching(z, t, R)
    return loss, torch.stack([indices_mask(i1), indices_mask(i2)])


def ref_coteaching_plus(z, t, R, started):
    """xingruiyu/coteaching_plus loss.py's rule on logits (not softmax outputs), the paper's mean,
    and a zero loss when no sample disagrees or none is kept."""
    if not started:
        return ref_coteaching_masks(z, t, R)
    pred1, pred2 = z[0].argmax(1).numpy(), z[1].argmax(1).numpy()
    disagree_id = [i for i in range(len(pred1)) if pred1[i] != pred2[i]]
    if not disagree_id:
        return (z[0].sum() + z[1].sum()) * 0.0, torch.zeros(2, B, dtype=torch.bool)
    d = torch.tensor(disagree_id)
    loss, (i1, i2) = ref_coteaching([z[0][d], z[1][d]], t[d], R)
    return loss, torch.stack([indices_mask(d[i1]), indices_mask(d[i2])])


def ref_jocor(z, t, R, lam):
    """hongxin001/JoCoR algorithm/loss.py: kl_loss_compute and loss_jocor, on the CPU."""

    def kl_loss_compute(pred, soft_targets):
        return F.kl_div(F.log_softmax(pred, dim=1), F.softmax(soft_targets, dim=1), reduction="none").sum(1)

    y_1, y_2 = z
    loss_pick = (
        F.cross_entropy(y_1, t, reduction="none") * (1 - lam)
        + F.cross_entropy(y_2, t, reduction="none") * (1 - lam)
        + lam * kl_loss_compute(y_1, y_2)
        + lam * kl_loss_compute(y_2, y_1)
    )
    ind_sorted = np.argsort(loss_pick.detach().numpy(), kind="stable")
    num_remember = int((1 - R) * len(loss_pick))
    ind_update = ind_sorted[:num_remember]
    kept = indices_mask(ind_update)
    return torch.mean(loss_pick[ind_update]), torch.stack([kept, kept])


def ref_dml(z, t, average=True):
    """YingZhangDUT/Deep-Mutual-Learning train_models.py: net i's loss is its cross-entropy plus
    KL(p_j || p_i) of every peer j (peer held constant); the paper averages over the H - 1 peers."""
    H = len(z)
    total = 0.0
    for i in range(H):
        kl = sum(
            F.kl_div(F.log_softmax(z[i], 1), F.softmax(z[j], 1).detach(), reduction="batchmean")
            for j in range(H)
            if j != i
        )
        total = total + F.cross_entropy(z[i], t) + (kl / (H - 1) if average else kl)
    return total, None


def at_epoch(method, epoch):
    method.set_epoch(epoch)
    return method


def epoch_of_rate(R: float, T_k: int = 10) -> tuple[int, float]:
    """A forget_rate knob tau and an epoch whose scheduled rate is R (the full rate: epoch T_k + 1)."""
    return T_k + 1, R


# --- the forget-rate schedule and the kept count ----------------------------------------------------


@pytest.mark.parametrize(
    ("exponent", "expected"),
    [
        (1.0, {0: 0.0, 1: 0.1, 5: 0.5, 10: 1.0, 20: 1.0}),  # tau * min(T / 10, 1)
        (2.0, {0: 0.0, 1: 0.1, 5: 1.0, 10: 1.0, 20: 1.0}),  # tau * min(T^2 / 10, 1)
        (0.5, {0: 0.0, 1: 0.1, 5: 5**0.5 / 10, 10: 10**0.5 / 10, 20: 20**0.5 / 10}),
    ],
)
def test_schedule_is_the_published_R(exponent, expected):
    tau = 0.45
    for T, share in expected.items():  # T epochs completed before 1-based epoch T + 1
        assert forget_rate(T + 1, tau, 10, exponent) == pytest.approx(tau * share, abs=1e-15)


def test_keep_count_is_pythons_int_exactly():
    n = torch.arange(0, 257)
    for r in range(100):
        R = r / 100
        counts = keep_count(torch.tensor(1 - R, dtype=torch.float64), n)
        assert counts.tolist() == [int((1 - R) * m) for m in range(257)], R
    # where float32 would be one off: (1 - 0.16) * 75 and (1 - 0.3) * 90 = 62.99999999999999
    assert int(keep_count(torch.tensor(1 - 0.16, dtype=torch.float64), 75)) == 63
    assert int(keep_count(torch.tensor(1 - 0.3, dtype=torch.float64), 90)) == 62


def test_set_epoch_follows_the_schedule_and_writes_only_device_tensors():
    m = build_method("coteaching_plus", heads=2, forget_rate=0.4, T_k=5, init_epoch=3)
    before = dict(vars(m))
    storage = {k: v.data_ptr() for k, v in before.items() if isinstance(v, torch.Tensor)}
    assert set(storage) == {"_keep", "_disagree"}
    logits, target = linear_heads(2, seed=1)
    for epoch in [1, 2, 3, 4, 7, 30]:
        m.set_epoch(epoch)
        after = vars(m)
        assert after.keys() == before.keys()
        for key, value in before.items():
            if isinstance(value, torch.Tensor):  # the same tensor, written in place
                assert after[key] is value and value.data_ptr() == storage[key]
            else:
                assert after[key] == value
        assert m._keep.item() == 1 - forget_rate(epoch, 0.4, 5)
        assert bool(m._disagree) == (epoch >= 3)
        if epoch < 3:  # Co-teaching on the whole batch: each head keeps int((1 - R) * B)
            _, mask = m(logits, target)
            assert mask.sum(1).tolist() == [int((1 - forget_rate(epoch, 0.4, 5)) * B)] * 2


# --- each method against its reference --------------------------------------------------------------


@pytest.mark.parametrize("batch", ["random", "ties"])
@pytest.mark.parametrize("R", RATES)
def test_coteaching(R, batch):
    logits, target = linear_heads(2, seed=0) if batch == "random" else tied_heads(2)
    epoch, tau = epoch_of_rate(R)
    m = at_epoch(build_method("coteaching", heads=2, forget_rate=tau), epoch)
    ours = run(m, logits, target)
    assert_same(ours, reference(ref_coteaching_masks, logits, target, R))
    assert ours[1].sum(1).tolist() == [int((1 - R) * B)] * 2


def test_coteaching_trains_each_head_on_its_peers_selection():
    logits, target = linear_heads(2, seed=3)
    m = at_epoch(build_method("coteaching", heads=2, forget_rate=0.5), 11)
    _, mask, grads = run(m, logits, target)
    own = [F.cross_entropy(z, target, reduction="none") for z in logits]
    smallest = [indices_mask(loss.argsort(stable=True)[:16]) for loss in own]
    assert torch.equal(mask[0], smallest[1]) and torch.equal(mask[1], smallest[0])
    assert not torch.equal(smallest[0], smallest[1])  # the exchange is visible on this batch
    for h in (0, 1):  # a head's gradient reaches exactly the samples its peer kept
        assert torch.equal(grads[h].abs().sum(1) > 0, mask[h])


def test_coteaching_keeps_nothing_when_the_count_rounds_to_zero():
    logits, target = linear_heads(2, seed=0)
    m = at_epoch(build_method("coteaching", heads=2, forget_rate=0.99), 11)  # int(0.01 * 32) = 0
    loss, mask, grads = run(m, logits, target)
    assert loss.item() == 0.0 and not mask.any()
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_a_dropped_infinite_loss_does_not_reach_the_loss():
    logits, target = linear_heads(2, seed=0)
    for z in logits:  # sample 5's label impossible for both heads: an infinite loss, ranked last, dropped
        z[5, target[5]] = -float("inf")
    loss, mask, grads = run(
        at_epoch(build_method("coteaching", heads=2, forget_rate=0.2), 11), logits, target
    )
    assert not mask[:, 5].any()
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_coteaching_with_another_label_loss():
    def mae(z, y):  # 1 - p_y per sample
        return 1.0 - F.softmax(z.float(), 1).gather(1, y[:, None]).squeeze(1)

    logits, target = linear_heads(2, seed=4)
    m = at_epoch(build_method("coteaching", heads=2, forget_rate=0.3, label_loss=mae), 11)
    loss, mask, _ = run(m, logits, target)
    losses = [mae(z, target) for z in logits]
    k = int((1 - 0.3) * B)
    picks = [indices_mask(np.argsort(loss_h.numpy(), kind="stable")[:k]) for loss_h in losses]
    expected = losses[0][picks[1]].mean() + losses[1][picks[0]].mean()
    assert torch.equal(mask, torch.stack([picks[1], picks[0]]))
    torch.testing.assert_close(loss, expected)


def disagreeing_on(n: int, seed: int = 5) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Two heads whose predictions differ on exactly the first ``n`` samples (n = 0: agree everywhere)."""
    logits, target = linear_heads(2, seed=seed)
    z1 = logits[0]
    z2 = 2.0 * z1 + 0.1  # same argmax as head 1 everywhere
    rolled = z1.roll(1, dims=1)  # argmax moved by one class: a disagreement
    z2 = torch.cat([rolled[:n], z2[n:]])
    assert int((z1.argmax(1) != z2.argmax(1)).sum()) == n
    return [z1, z2], target


@pytest.mark.parametrize("batch", ["random", "ties"])
@pytest.mark.parametrize("R", RATES)
def test_coteaching_plus_after_init_epoch(R, batch):
    logits, target = linear_heads(2, seed=2) if batch == "random" else tied_heads(2)
    m = at_epoch(build_method("coteaching_plus", heads=2, forget_rate=R, init_epoch=11), 11)
    ours = run(m, logits, target)
    assert_same(ours, reference(ref_coteaching_plus, logits, target, R, True))
    disagree = int((logits[0].argmax(1) != logits[1].argmax(1)).sum())
    assert 0 < disagree < B
    assert ours[1].sum(1).tolist() == [int((1 - R) * disagree)] * 2


@pytest.mark.parametrize("R", [0.0, 0.37, 0.8])
def test_coteaching_plus_before_init_epoch_is_coteaching(R):
    logits, target = linear_heads(2, seed=2)
    epoch, tau = epoch_of_rate(R)
    plus = at_epoch(build_method("coteaching_plus", heads=2, forget_rate=tau, init_epoch=epoch + 1), epoch)
    co = at_epoch(build_method("coteaching", heads=2, forget_rate=tau), epoch)
    assert_same(run(plus, logits, target), run(co, logits, target))
    assert_same(run(plus, logits, target), reference(ref_coteaching_plus, logits, target, R, False))


@pytest.mark.parametrize(
    ("n", "R", "kept"), [(0, 0.2, 0), (1, 0.2, 0), (3, 0.2, 2), (5, 0.5, 2), (9, 0.0, 9)]
)
def test_coteaching_plus_small_disagreement_sets(n, R, kept):
    logits, target = disagreeing_on(n)
    m = at_epoch(build_method("coteaching_plus", heads=2, forget_rate=R, init_epoch=1), 11)
    ours = run(m, logits, target)
    assert_same(ours, reference(ref_coteaching_plus, logits, target, R, True))
    assert ours[1].sum(1).tolist() == [kept, kept]
    assert not ours[1][:, n:].any()  # only disagreements are ever kept
    if kept == 0:  # nothing to learn from: a zero loss and zero gradients
        assert ours[0].item() == 0.0 and all(not g.any() for g in ours[2])


def test_coteaching_plus_agreeing_heads_before_and_after_init_epoch():
    logits, target = disagreeing_on(0)
    m = build_method("coteaching_plus", heads=2, forget_rate=0.25, init_epoch=4)
    before = run(at_epoch(m, 3), logits, target)
    assert_same(before, reference(ref_coteaching_masks, logits, target, forget_rate(3, 0.25)))
    assert before[0].item() > 0
    after = run(at_epoch(m, 4), logits, target)
    assert after[0].item() == 0.0 and not after[1].any()


@pytest.mark.parametrize("lam", [0.1, 0.65, 0.9])
@pytest.mark.parametrize("R", RATES)
def test_jocor(R, lam):
    logits, target = linear_heads(2, seed=6)
    epoch, tau = epoch_of_rate(R)
    m = at_epoch(build_method("jocor", heads=2, forget_rate=tau, lambda_=lam), epoch)
    ours = run(m, logits, target)
    assert_same(ours, reference(ref_jocor, logits, target, R, lam))
    assert torch.equal(ours[1][0], ours[1][1]) and ours[1][0].sum().item() == int((1 - R) * B)


def test_jocor_with_ties():
    logits, target = tied_heads(2)
    m = at_epoch(build_method("jocor", heads=2, forget_rate=0.35, lambda_=0.9), 11)  # 20.8 -> 20 kept
    assert_same(run(m, logits, target), reference(ref_jocor, logits, target, 0.35, 0.9))


@pytest.mark.parametrize("heads", [2, 3])
def test_dml(heads):
    logits, target = linear_heads(heads, seed=8)
    m = build_method("dml", heads=heads)
    ours = run(m, logits, target)
    assert ours[1] is None
    assert_same(ours, reference(ref_dml, logits, target))


def test_dml_averages_over_peers():
    logits, target = linear_heads(3, seed=8)
    loss, _, _ = run(build_method("dml", heads=3), logits, target)
    summed, _ = ref_dml(logits, target, average=False)  # the official code's sum over peers
    assert not torch.allclose(loss, summed, rtol=1e-3)
    average = (
        sum(F.cross_entropy(z, target) for z in logits)
        + (summed - sum(F.cross_entropy(z, target) for z in logits)) / 2
    )
    torch.testing.assert_close(loss, average)


# --- every method: finite at extreme logits, any float dtype, fixed shapes, no host sync --------------


def build(name: str, heads: int = 2, **kw):
    knobs = {"forget_rate": 0.3} if METHODS[name].selects else {}
    return build_method(name, heads=heads, **knobs, **kw)


@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_extreme_logits_stay_finite(name, scale):
    logits, target = linear_heads(2, seed=9, scale=scale)
    loss, _, grads = run(at_epoch(build(name), 20), logits, target)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_low_precision_logits_are_computed_in_float32(name):
    logits, target = linear_heads(2, seed=10)
    half = [z.to(torch.bfloat16) for z in logits]
    m = at_epoch(build(name), 20)
    loss, mask, grads = run(m, half, target)
    ref_loss, ref_mask, _ = run(m, [z.float() for z in half], target)
    assert loss.dtype == torch.float32 and torch.equal(loss, ref_loss)
    assert grads[0].dtype == torch.bfloat16 and (mask is None or torch.equal(mask, ref_mask))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fixed_shapes_without_host_syncs(name):
    """On the meta device a tensor has no data: .item(), bool(), boolean indexing, nonzero and
    masked_select all fail there, so a call that completes (forward and backward) reads no value on
    the host and has no data-dependent shape."""
    m = at_epoch(build(name, device="meta"), 15)
    logits = [torch.empty(B, K, device="meta", requires_grad=True) for _ in range(2)]
    loss, mask = m(logits, torch.empty(B, dtype=torch.long, device="meta"))
    loss.backward()
    assert loss.shape == () and all(z.grad.shape == (B, K) for z in logits)
    assert (mask is None) == (not METHODS[name].selects) and (mask is None or mask.shape == (2, B))
    cpu = at_epoch(build(name), 15)  # and on data: the same shapes whatever the batch
    for logits, target in [linear_heads(2, seed=11), disagreeing_on(0)]:
        loss, mask = cpu(logits, target)
        assert loss.shape == () and (mask is None or (mask.shape, mask.dtype) == ((2, B), torch.bool))


# --- errors -----------------------------------------------------------------------------------------


def test_unknown_method():
    with pytest.raises(
        ValueError, match=r"Unknown method 'x'; choose from cl, dml, coteaching, coteaching_plus, jocor"
    ):
        build_method("x", heads=2)


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("name", ["coteaching", "coteaching_plus", "jocor"])
def test_pairing_methods_take_two_heads(name, heads):
    with pytest.raises(ValueError, match=rf"{name} trains exactly two heads .*got {heads}"):
        build_method(name, heads=heads, forget_rate=0.2)


def test_dml_takes_two_heads_or_more():
    with pytest.raises(ValueError, match="dml needs at least two heads.*got 1"):
        build_method("dml", heads=1)


@pytest.mark.parametrize("tau", [1.0, -0.1, 1.5, True, "0.2"])
@pytest.mark.parametrize("name", ["coteaching", "coteaching_plus", "jocor"])
def test_forget_rate_must_lie_in_0_1(name, tau):
    with pytest.raises(ValueError, match=rf"{name}: forget_rate must be a number in \[0, 1\), got {tau!r}"):
        build_method(name, heads=2, forget_rate=tau)


def test_other_bad_settings():
    with pytest.raises(
        ValueError, match="dml: unknown setting 'forget_rate'; it takes heads, label_loss, device"
    ):
        build_method("dml", heads=2, forget_rate=0.2)
    with pytest.raises(ValueError, match="coteaching: unknown setting 'lambda_'"):
        build_method("coteaching", heads=2, forget_rate=0.2, lambda_=0.9)
    with pytest.raises(ValueError, match=r"jocor: lambda_ must be a number in \[0, 1\], got 1.5"):
        build_method("jocor", heads=2, forget_rate=0.2, lambda_=1.5)
    with pytest.raises(ValueError, match="T_k must be an int >= 1"):
        build_method("coteaching", heads=2, forget_rate=0.2, T_k=0)
    with pytest.raises(ValueError, match="init_epoch must be an int >= 0, got -1"):
        CoTeachingPlus(heads=2, forget_rate=0.2, init_epoch=-1)
    with pytest.raises(ValueError, match="epoch must be a 1-based int, got 0"):
        build_method("coteaching", heads=2, forget_rate=0.2).set_epoch(0)
    with pytest.raises(ValueError, match="dml was built for 3 heads, got 2 logits tensors"):
        build_method("dml", heads=3)(*linear_heads(2, seed=0))

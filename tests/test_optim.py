import math

import pytest
import torch

from harness.train.optim import SGD, build_scheduler, lr_factor


@pytest.mark.parametrize("nesterov,wd", [(True, 5e-4), (False, 0.0), (True, 0.0)])
def test_sgd_matches_torch_sgd_under_a_changing_learning_rate(nesterov, wd):
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    ref_model.load_state_dict(ours_model.state_dict())
    ours = SGD(ours_model.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    sched_ours = build_scheduler(ours, steps_per_epoch=4, epochs=3, schedule="cosine", warmup_epochs=1)
    sched_ref = build_scheduler(ref, steps_per_epoch=4, epochs=3, schedule="cosine", warmup_epochs=1)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(12):
        for model, opt, sched in ((ours_model, ours, sched_ours), (ref_model, ref, sched_ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sgd_skips_parameters_without_gradient():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = SGD([a, b], lr=0.5, momentum=0.9, weight_decay=0.1)
    (a * 2).sum().backward()
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    torch.testing.assert_close(a.detach(), torch.ones(3) - 0.5 * (2 + 0.1) * (1 + 0.9))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    kw = dict(steps_per_epoch=10, epochs=5, schedule="cosine", warmup_epochs=1)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(30, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(50, **kw) == pytest.approx(0.0, abs=1e-12)
    factors = [lr_factor(s, **kw) for s in range(10, 50)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    kw = dict(steps_per_epoch=10, epochs=30, schedule="step", milestones=[10, 20], gamma=0.1)
    assert lr_factor(99, **kw) == 1.0
    assert lr_factor(100, **kw) == pytest.approx(0.1)
    assert lr_factor(200, **kw) == pytest.approx(0.01)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor(0, steps_per_epoch=1, epochs=1, schedule="linear")

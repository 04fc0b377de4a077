import math

import pytest
import torch

from karmma.losses import cross_entropy, distillation_loss, kd_kl, multitask_distillation


def test_ce_hand_computed():
    logits = torch.tensor([[2.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_kl_hand_computed_with_temperature():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert kd_kl(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-5)


def test_kl_zero_when_equal_and_teacher_gets_no_grad():
    s = torch.randn(4, 5, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    loss = kd_kl(s, t, 3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    (kd_kl(s, t + 1.0 * torch.randn(4, 5), 3.0)).backward()
    assert t.grad is None and s.grad is not None


def test_alpha_mix():
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    a = 0.3
    expected = a * cross_entropy(s, y) + (1 - a) * kd_kl(s, t, 2.0)
    assert distillation_loss(s, t, y, a, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert distillation_loss(s, t, y, 1.0, 2.0).item() == pytest.approx(cross_entropy(s, y).item(), rel=1e-6)


def test_multitask_is_mean_over_heads():
    s = {"verb": torch.randn(2, 3), "noun": torch.randn(2, 4)}
    t = {"verb": torch.randn(2, 3), "noun": torch.randn(2, 4)}
    y = {"verb": torch.tensor([0, 1]), "noun": torch.tensor([2, 3])}
    per = [distillation_loss(s[k], t[k], y[k], 0.5, 4.0) for k in s]
    assert multitask_distillation(s, t, y, 0.5, 4.0).item() == pytest.approx(sum(p.item() for p in per) / 2, rel=1e-6)

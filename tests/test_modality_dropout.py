import torch

from karmma.config import ModalityDropoutConfig
from karmma.modality_dropout import apply_modality_dropout, independent_dropout, sensor_dropout_masks, subset_dropout


def _present(b=500, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(b, m, generator=g) < 0.8
    p[~p.any(1), 0] = True
    return p


def test_independent_keeps_one_and_never_adds():
    p = _present()
    for rate in (0.0, 0.5, 0.9, 1.0):
        out = independent_dropout(p, rate, torch.Generator().manual_seed(1))
        assert out.any(1).all()
        assert not (out & ~p).any()
    assert torch.equal(independent_dropout(p, 0.0, torch.Generator().manual_seed(1)), p)


def test_independent_rate_roughly_right():
    p = torch.ones(20000, 3, dtype=torch.bool)
    out = independent_dropout(p, 0.3, torch.Generator().manual_seed(0))
    assert abs((~out).float().mean().item() - 0.3) < 0.02


def test_subset_dropout_uniform_over_nonempty_subsets():
    p = torch.ones(7000, 3, dtype=torch.bool)
    out = subset_dropout(p, torch.Generator().manual_seed(0))
    codes = (out.long() * torch.tensor([1, 2, 4])).sum(1)
    counts = torch.bincount(codes, minlength=8)
    assert counts[0] == 0
    assert (counts[1:] - 1000).abs().max() < 150


def test_seeded_and_reproducible():
    p = _present()
    a = sensor_dropout_masks(p, 0.4, seed=7)
    b = sensor_dropout_masks(p, 0.4, seed=7)
    c = sensor_dropout_masks(p, 0.4, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_none_kind_is_identity():
    p = _present()
    out = apply_modality_dropout(p, ModalityDropoutConfig(kind="none"), torch.Generator())
    assert torch.equal(out, p)

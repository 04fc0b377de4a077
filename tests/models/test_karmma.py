import pytest
import torch

from karmma.errors import DataError
from karmma.models import KARMMA
from tests.conftest import random_batch, tiny_model_cfg

MISSING = ["token", "zero", "attn_mask", "reconstruct"]


@pytest.mark.parametrize("missing", MISSING)
def test_output_shapes(specs, tasks, missing):
    model = KARMMA(specs, tasks, tiny_model_cfg(missing=missing)).eval()
    tokens, present = random_batch(specs, 5)
    out = model(tokens, present)
    assert set(out) == set(tasks)
    for t, n in tasks.items():
        assert out[t].shape == (5, n)
    feats = model.forward_features(tokens, present)
    assert feats.shape == (5, 1 + len(specs), 16)


def test_dict_input_matches_list_input_and_validates(specs, tasks):
    model = KARMMA(specs, tasks, tiny_model_cfg()).eval()
    tokens, present = random_batch(specs, 2)
    d = {s.name: t for s, t in zip(specs, tokens)}
    assert torch.equal(model(d, present)["verb"], model(tokens, present)["verb"])
    with pytest.raises(DataError, match="unknown modality"):
        model({**d, "depth": tokens[0]}, present)
    del d["flow"]
    with pytest.raises(DataError, match="no tensor"):
        model(d, present)


@pytest.mark.parametrize("missing", MISSING)
def test_every_parameter_gets_a_gradient(specs, tasks, missing):
    model = KARMMA(specs, tasks, tiny_model_cfg(missing=missing, dropout=0.1)).train()
    tokens, _ = random_batch(specs, 6)
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    out = model(tokens, present)
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("missing", MISSING)
def test_dropped_modality_values_cannot_change_the_output(specs, tasks, missing):
    model = KARMMA(specs, tasks, tiny_model_cfg(missing=missing)).eval()
    tokens, _ = random_batch(specs, 4)
    present = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    ref = model(tokens, present)
    for garbage in (
        lambda t: torch.randn_like(t) * 100,
        lambda t: torch.full_like(t, float("nan")),
        lambda t: torch.full_like(t, float("inf")),
    ):
        changed = [torch.where(present[:, m, None, None], t, garbage(t)) for m, t in enumerate(tokens)]
        out = model(changed, present)
        for k in ref:
            assert torch.allclose(out[k], ref[k], atol=1e-6), (missing, k)


def test_present_modality_values_do_change_the_output(specs, tasks):
    model = KARMMA(specs, tasks, tiny_model_cfg()).eval()
    tokens, present = random_batch(specs, 2)
    other = [t.clone() for t in tokens]
    other[0] = other[0] + 1.0
    assert not torch.allclose(model(tokens, present)["verb"], model(other, present)["verb"])


def test_missing_token_differs_from_zero_filling(specs, tasks):
    torch.manual_seed(0)
    token = KARMMA(specs, tasks, tiny_model_cfg(missing="token")).eval()
    zero = KARMMA(specs, tasks, tiny_model_cfg(missing="zero")).eval()
    with torch.no_grad():
        for proj in token.embed.proj:
            proj.bias.normal_()  # as after training: proj(0) = bias != 0
    zero.load_state_dict(token.state_dict())
    tokens, _ = random_batch(specs, 2)
    present = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    a, b = token(tokens, present)["verb"], zero(tokens, present)["verb"]
    assert not torch.allclose(a[0], b[0])  # a missing modality: learned tokens vs projected zeros
    assert torch.allclose(a[1], b[1], atol=1e-6)  # all present: identical


def test_deterministic_under_a_seed(specs, tasks):
    def build():
        torch.manual_seed(123)
        return KARMMA(specs, tasks, tiny_model_cfg())

    a, b = build(), build()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("missing", MISSING)
def test_empty_and_half_empty_batches(specs, tasks, missing):
    model = KARMMA(specs, tasks, tiny_model_cfg(missing=missing)).eval()
    tokens, present = random_batch(specs, 0)
    out = model(tokens, present)
    assert out["verb"].shape == (0, 3)
    tokens, _ = random_batch(specs, 4)
    present = torch.zeros(4, 3, dtype=torch.bool)
    present[:2] = True  # half the batch complete, half with only one modality
    present[2:, 1] = True
    out = model(tokens, present)
    assert torch.isfinite(out["noun"]).all()


def test_batch_rows_are_independent(specs, tasks):
    model = KARMMA(specs, tasks, tiny_model_cfg()).eval()
    tokens, _ = random_batch(specs, 3)
    present = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    full = model(tokens, present)["action"]
    single = model([t[1:2] for t in tokens], present[1:2])["action"]
    assert torch.allclose(full[1:2], single, atol=1e-5)


# UTD-MHAD's student keeps the teacher's fusion width and is compact in its extractors instead:
# tests/test_deploy.py checks its full-pipeline GFLOPs.
@pytest.mark.parametrize("pair", ["demo", "epic100"])
def test_shipped_student_preset_is_smaller_than_its_teacher(pair):
    from karmma.config import load_config
    from karmma.presets import preset_path
    from tests.conftest import preset_specs

    t_specs, s_specs, tasks = preset_specs(pair)
    t = KARMMA(t_specs, tasks, load_config(preset_path(f"{pair}_teacher")).model)
    s = KARMMA(s_specs, tasks, load_config(preset_path(f"{pair}_student")).model)
    assert sum(p.numel() for p in s.parameters()) < 0.5 * sum(p.numel() for p in t.parameters())


def test_token_augment_is_train_only_seeded_and_spares_absent_modalities(specs, tasks):
    from karmma.config import AugmentConfig
    from karmma.engine.augment import Augmentation, TokenAugment

    x = torch.randn(4, 6, 3)
    aug = TokenAugment(time_warp=0.3, noise=0.1)
    assert torch.equal(aug.eval()(x), x) and torch.equal(TokenAugment().train()(x), x)
    aug.train()
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    assert torch.equal(a, aug(x)) and not torch.equal(a, x) and a.shape == x.shape
    # The model augments only the forwards the engine hands the pipeline to (training steps).
    augment = Augmentation(specs, AugmentConfig(time_warp=0.3, input_noise=0.5))
    model = KARMMA(specs, tasks, tiny_model_cfg()).train()
    tokens, present = random_batch(specs, 3)
    present[:, 1] = False
    torch.manual_seed(1)
    enc = model.encode(tokens, present, augment)
    assert torch.equal(enc[1], torch.zeros_like(enc[1]))  # an absent modality stays empty
    assert not torch.equal(enc[0], model.encode(tokens, present)[0])  # a present one is augmented
    model.eval()
    assert torch.equal(model.encode(tokens, present)[0], model.encode(tokens, present)[0])


def test_a_time_warp_moves_a_partial_modality_with_its_flags():
    """Burst training: a modality present for part of the clip is warped too, its per-token flags
    moved by the same warp, so no zero of the failed stretch is mixed into a token held as data."""
    from karmma.engine.augment import TokenAugment

    aug = TokenAugment(time_warp=0.3).train()
    x = torch.randn(32, 16, 5)
    mask = torch.ones(32, 16, dtype=torch.bool)
    torch.manual_seed(3)
    whole = aug(x)
    torch.manual_seed(3)
    same, moved = aug(x, mask)
    assert torch.equal(same, whole) and moved.all()  # nothing failed: exactly the warp of before
    mask[:, 4:9] = False
    torch.manual_seed(3)
    warped, moved = aug(torch.where(mask[..., None], x, 0.0), mask)
    assert 0.4 < moved.float().mean() < 0.8 and not torch.equal(moved, mask)
    assert torch.equal(warped[moved], whole[moved])  # held tokens: the warp of the full data
    assert not warped[~moved].any()  # the failed stretch stays zeros, where it moved to

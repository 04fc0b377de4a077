"""The modality swap (``augment.swap``, chosen on UTD-MHAD's validation folds): in training, a
sample's encoded tokens of a modality are sometimes another sample's, so the fusion block learns to
cross-check a weak modality against the others."""

import pytest
import torch

from karmma.config import AugmentConfig, load_config
from karmma.engine.augment import Augmentation, ModalitySwap, build_augmentation
from karmma.errors import ConfigError
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA
from karmma.presets import preset_path
from tests.conftest import random_batch, tiny_model_cfg


def test_swap_takes_another_samples_tokens_exactly_where_allowed():
    b = 6
    encoded = [torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 2, 3) + 100 * m for m in range(3)]
    present = torch.ones(b, 3, dtype=torch.bool)
    present[0, 1:] = False  # sample 0 has only modality 0: never swapped
    present[1, 0] = False  # sample 1 lacks modality 0: neither swapped in nor out
    swap = ModalitySwap([1.0, 0.0, 0.5]).train()
    torch.manual_seed(3)
    out = swap(encoded, present)
    torch.manual_seed(3)  # the draws ModalitySwap makes for this seed: per swapped modality a pairing, then coins
    pairs, _ = torch.randperm(b), torch.rand(b)  # rate 1.0: every coin says yes
    pairs2, coins2 = torch.randperm(b), torch.rand(b)
    others = present.sum(1) >= 2
    for i in range(b):
        take = bool(others[i] and present[i, 0] and present[pairs[i], 0])
        want = encoded[0][pairs[i]] if take else encoded[0][i]
        assert torch.equal(out[0][i], want), i
        take2 = bool(coins2[i] < 0.5 and others[i] and present[i, 2] and present[pairs2[i], 2])
        assert torch.equal(out[2][i], encoded[2][pairs2[i]] if take2 else encoded[2][i]), i
    assert torch.equal(out[0][0], encoded[0][0]) and torch.equal(out[0][1], encoded[0][1])
    assert torch.equal(out[1], encoded[1])  # rate 0: untouched
    assert not torch.equal(out[0], encoded[0])  # this seed does swap some samples


def test_swap_min_present_spares_samples_with_fewer_modalities():
    b = 8
    encoded = [torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 2, 3) + 100 * m for m in range(3)]
    present = torch.ones(b, 3, dtype=torch.bool)
    present[:4, 2] = False  # samples 0-3 have two modalities: spared at min_present 3
    torch.manual_seed(5)
    out = ModalitySwap([1.0, 0.0, 0.0], min_present=3).train()(encoded, present)
    torch.manual_seed(5)
    pairs = torch.randperm(b)
    for i in range(b):
        want = encoded[0][pairs[i]] if i >= 4 else encoded[0][i]
        assert torch.equal(out[0][i], want), i
    torch.manual_seed(5)
    assert not torch.equal(ModalitySwap([1.0, 0.0, 0.0]).train()(encoded, present)[0][:4], encoded[0][:4])


def test_swap_is_off_in_evaluation_and_draws_nothing_at_rate_zero(specs, tasks):
    tokens, present = random_batch(specs, 5)
    augment = build_augmentation(specs, AugmentConfig(swap={"rgb": 1.0, "audio": 1.0}))
    assert augment.swap.rates == [1.0, 0.0, 1.0]  # in the model's modality order
    model = KARMMA(specs, tasks, tiny_model_cfg()).eval()
    # Evaluation forwards get no pipeline (the engine hands it to training steps only), and the model
    # keeps nothing of it: without augment= nothing is swapped, whatever the random stream.
    torch.manual_seed(0)
    ref = model(tokens, present)
    torch.manual_seed(1)
    assert all(torch.equal(model(tokens, present)[t], ref[t]) for t in tasks)
    assert not any("swap" in k for k in model.state_dict())
    # Training with no swap leaves the random stream as it was: older presets reproduce exactly.
    assert build_augmentation(specs, AugmentConfig(swap={"rgb": 0.0})) is None  # the engine passes none ...
    plain = KARMMA(specs, tasks, tiny_model_cfg()).train()
    torch.manual_seed(0)
    plain(tokens, present)
    after_plain = torch.rand(1)
    off = Augmentation(specs, AugmentConfig(swap={"rgb": 0.0}))  # ... and the pipeline itself draws nothing
    torch.manual_seed(0)
    plain(tokens, present, augment=off)
    assert torch.equal(torch.rand(1), after_plain)
    model.train()
    torch.manual_seed(0)
    swapped = model(tokens, present, augment=augment)
    torch.manual_seed(0)
    augment.swap.rates = [0.0, 0.0, 0.0]
    assert not torch.allclose(model(tokens, present, augment=augment).readers, swapped.readers)
    assert all(torch.equal(a, b) for a, b in zip(swapped.encoded, model.encode(tokens, present)))  # before the swap


def test_swap_is_checked_against_the_config_and_the_data():
    specs = [ModalitySpec("depth", 2, 4), ModalitySpec("skeleton", 3, 6)]
    with pytest.raises(ConfigError, match=r"augment.swap.depth=1.5 must be a probability in \[0, 1\]"):
        AugmentConfig(swap={"depth": 1.5}).validate()
    with pytest.raises(ConfigError, match=r"augment.swap_min_present=0 must be >= 1"):
        AugmentConfig(swap_min_present=0).validate()
    with pytest.raises(
        ConfigError, match=r"augment.swap names modality \['audio'\]; the data has \['depth', 'skeleton'\]"
    ):
        build_augmentation(specs, AugmentConfig(swap={"audio": 0.5}))
    # One check for every per-modality setting (augment.rotate, model.encoders, augment.swap).
    with pytest.raises(ConfigError, match=r"model.encoders names modality \['audio'\]; the data has"):
        KARMMA(specs, {"a": 3}, tiny_model_cfg(encoders={"audio": "temporal_conv"}))
    with pytest.raises(ConfigError, match=r"augment.swap.depth: expected float, got str 'lots'"):
        load_config(preset_path("utd_mhad_teacher"), ["augment.swap={depth: lots}"])
    # The shipped choices (docs/results/utd_mhad.md); the demo presets do not swap.
    assert load_config(preset_path("utd_mhad_teacher")).augment.swap == {"flow": 0.5}
    assert load_config(preset_path("utd_mhad_student")).augment.swap == {"flow": 0.25}
    assert load_config(preset_path("demo_student")).augment.swap == {}

"""The motion-map CNN encoder: shapes, absent samples, batch-norm statistics, the token-augment
opt-out, and the UTD-MHAD presets built on it (export included)."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from karmma.config import AugmentConfig, ModelConfig, load_config
from karmma.engine.augment import Augmentation
from karmma.errors import ConfigError
from karmma.extractors.motion_maps import DepthMotionMaps
from karmma.modalities import ModalitySpec
from karmma.models import KARMMA
from karmma.models.motion_maps import MotionMapCNN
from karmma.presets import preset_path
from tests.conftest import preset_specs

SPEC = ModalitySpec("depth", 3, 3 * 16 * 16)


def images(b):
    return torch.rand(b, 3, SPEC.dim)


def test_output_shape_and_absent_samples_are_zeros():
    enc = MotionMapCNN(SPEC, width=4).eval()
    present = torch.tensor([True, False, True])
    out = enc(images(3), present)
    assert out.shape == (3, 1, 3 * 16) and enc.out_spec() == ModalitySpec("depth", 1, 48)
    assert not out[1].any() and out[0].abs().sum() > 0
    # A present sample's output does not depend on its neighbours.
    x = images(3)
    assert torch.allclose(enc(x, present)[0], enc(x[:1], present[:1])[0], atol=1e-6)


def test_absent_everywhere_skips_the_cnn():
    enc = MotionMapCNN(SPEC, width=4).eval()
    with FlopCounterMode(display=False) as counter:
        out = enc(images(2), torch.tensor([False, False]))
    assert counter.get_total_flops() == 0 and not out.any()


def test_training_batch_norm_never_sees_absent_samples():
    torch.manual_seed(0)
    a, b = MotionMapCNN(SPEC, width=4).train(), MotionMapCNN(SPEC, width=4).train()
    b.load_state_dict(a.state_dict())
    x = images(4)
    torch.manual_seed(1)
    out = a(x, torch.tensor([True, False, True, False]))
    torch.manual_seed(1)
    ref = b(x[[0, 2]], torch.tensor([True, True]))
    bn_a, bn_b = a.cnn[0][1], b.cnn[0][1]
    assert torch.equal(bn_a.running_mean, bn_b.running_mean) and torch.equal(bn_a.running_var, bn_b.running_var)
    assert torch.allclose(out[[0, 2]], ref) and not out[[1, 3]].any()
    out.sum().backward()  # gradients reach the CNN through the present rows
    assert a.cnn[0][0].weight.grad.abs().sum() > 0


def test_a_training_batch_without_the_modality_gives_zeros_and_zero_gradients():
    enc = MotionMapCNN(SPEC, width=4).train()
    before = enc.cnn[0][1].running_mean.clone()
    out = enc(images(2), torch.tensor([False, False]))
    assert not out.any()
    out.sum().backward()  # every parameter is in the graph (DDP needs that), with zero gradient
    assert all(p.grad is not None and not p.grad.any() for p in enc.parameters())
    assert torch.equal(enc.cnn[0][1].running_mean, before)


def test_tokens_that_are_not_images_name_the_modality():
    with pytest.raises(ConfigError, match=r"'depth'.*not 3 x S x S images"):
        MotionMapCNN(ModalitySpec("depth", 8, 2560))


def test_model_feeds_it_unwarped_unstandardised_images():
    # Time warp and input noise are on; the CNN must still get the stored images exactly.
    spec = [SPEC, ModalitySpec("imu", 8, 6)]
    cfg = ModelConfig(dim=16, depth=1, attn_heads=2, head_hidden=16,
                      encoders={"depth": "motion_map_cnn", "imu": "temporal_conv"}, image_encoder_width=4)  # fmt: skip
    model = KARMMA(spec, {"a": 3}, cfg).train()
    augment = Augmentation(spec, AugmentConfig(time_warp=0.5, input_noise=1.0))
    seen, imu = {}, []
    model.encoders[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0], present=args[1]))
    model.encoders[1].register_forward_pre_hook(lambda m, args: imu.append(args[0]))
    x = {"depth": images(4), "imu": torch.randn(4, 8, 6)}
    present = torch.tensor([[True, True], [False, True], [True, True], [True, False]])
    model(x, present, augment=augment)
    assert torch.equal(seen["present"], present[:, 0])
    assert torch.equal(seen["x"][present[:, 0]], x["depth"][present[:, 0]]) and not seen["x"][1].any()
    model(x, present)
    assert not torch.allclose(imu[0], imu[1])  # the pipeline was on: the other encoder's tokens were augmented


def test_utd_presets_use_it_on_extracted_maps_and_export(tmp_path):
    from karmma.deploy.export import export_onnx, verify_onnx
    from karmma.io.checkpoint import model_metadata

    t_specs, s_specs, tasks = preset_specs("utd_mhad")
    assert t_specs[0] == ModalitySpec("depth", 3, DepthMotionMaps().dim)
    teacher = load_config(preset_path("utd_mhad_teacher")).model
    student = load_config(preset_path("utd_mhad_student")).model
    assert teacher.encoders["depth"] == student.encoders["depth"] == "motion_map_cnn"
    model = KARMMA(s_specs, tasks, student)
    assert isinstance(model.encoders[0], MotionMapCNN) and model.cfg.dropout > 0
    # Real maps of a synthetic clip go through the student, and its ONNX graph agrees on every subset.
    clip = np.full((10, 48, 64), 0.8, np.float32)
    for t in range(10):
        clip[t, 10:30, 20 + t : 30 + t] = 0.5
    maps = torch.from_numpy(DepthMotionMaps()(clip))[None]
    tokens = [maps] + [torch.zeros(1, s.num_tokens, s.dim) for s in s_specs[1:]]
    with torch.no_grad():
        logits = model.eval()(tokens, torch.tensor([[True, False, False, False]]))["action"]
    assert logits.shape == (1, 27) and torch.isfinite(logits).all()
    path = export_onnx(model, model_metadata(model), tmp_path / "student.onnx")
    report = verify_onnx(model, path)
    assert report["ok"] and len(report["max_abs_diff"]) == 16, report  # 15 subsets + a per-token mask

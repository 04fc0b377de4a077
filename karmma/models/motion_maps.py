"""A small CNN trained from scratch on depth motion maps (beyond the paper).

It reads the tokens :class:`karmma.extractors.motion_maps.DepthMotionMaps` stores — one token per
view (front, side, top), each a C-channel S x S image flattened — runs one CNN shared by the views
(four blocks of 3x3 conv, batch norm, ReLU and 2x2 max pooling, widths w, 2w, 4w, 4w; global
average pool), adds a learned embedding per view and returns one token: the three views' features
side by side (B, 1, 3 x 4w). On UTD-MHAD's depth this beat frozen ImageNet features of the same
clips by ~30 points (docs/results/utd_mhad.md).

* In training, each image gets a random scale (+-15%) and shift (+-10%), and only the samples whose
  modality is present go through the CNN, so that batch-norm statistics never see absent zeros.
* Outside training an absent sample's output is zeros, and a batch with the modality absent
  everywhere skips the CNN (an absent modality's extractor does not run; the cost tables count
  that). ONNX export always runs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from karmma.errors import ConfigError
from karmma.modalities import ModalitySpec
from karmma.models.encoders import ENCODERS, ModalityEncoder

SCALE, SHIFT = 0.15, 0.1  # paper-unknown defaults (beyond the paper): train-time affine jitter


def image_side(dim: int, channels: int = 3) -> int | None:
    """The side S when tokens of ``dim`` values are ``channels`` x S x S images with S >= 16 (what
    this encoder reads), else None."""
    side = int(round((dim / channels) ** 0.5))
    return side if channels * side * side == dim and side >= 16 else None


@ENCODERS.register("motion_map_cnn")
class MotionMapCNN(ModalityEncoder):
    standardize_inputs = False  # images in [0, 1]
    token_augment = False  # time warp / input noise are for token sequences; this jitters images
    takes_presence = True  # forward(x, present)

    def __init__(self, spec: ModalitySpec, width: int = 16, channels: int = 3) -> None:
        super().__init__()
        side = image_side(spec.dim, channels)
        if side is None:
            raise ConfigError(
                f"modality {spec.name!r}: tokens of {spec.dim} values are not {channels} x S x S images with "
                "S >= 16; the motion_map_cnn encoder reads depth motion maps (extract with --encoder efficientnet)"
            )
        self.side, self.channels = side, channels
        widths = (channels, width, 2 * width, 4 * width, 4 * width)
        self.cnn = nn.Sequential(
            *(_block(a, b) for a, b in zip(widths[:-1], widths[1:])), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.views = nn.Parameter(torch.zeros(spec.num_tokens, 4 * width))
        self.spec = ModalitySpec(spec.name, 1, spec.num_tokens * 4 * width)

    @classmethod
    def from_config(cls, spec: ModalitySpec, cfg) -> MotionMapCNN:
        return cls(spec, width=cfg.image_encoder_width)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], 1, self.spec.dim)
        if self.training:
            rows = present.nonzero().squeeze(1)
            if len(rows):
                return out.index_copy(0, rows, self._encode(_jitter(x[rows], self.channels, self.side)))
            # No sample has the modality: every parameter still joins the graph (with zero
            # gradient), as DDP expects of each step.
            return out + 0.0 * sum(p.sum() for p in self.parameters())
        if not torch.onnx.is_in_onnx_export() and not bool(present.any()):
            return out
        return torch.where(present[:, None, None], self._encode(x), out)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        b, v, _ = x.shape
        h = self.cnn(x.reshape(b * v, self.channels, self.side, self.side)).reshape(b, v, -1)
        return (h + self.views).reshape(b, 1, -1)


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
    )


def _jitter(x: torch.Tensor, channels: int, side: int) -> torch.Tensor:
    """Each (sample, view) image scaled by 1 +- SCALE and shifted by +- SHIFT of its side."""
    b, v, d = x.shape
    images = x.reshape(b * v, channels, side, side)
    n = len(images)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    scale = 1.0 + SCALE * (2.0 * torch.rand(n, dtype=x.dtype, device=x.device) - 1.0)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = SHIFT * (2.0 * torch.rand(n, 2, dtype=x.dtype, device=x.device) - 1.0)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False).reshape(b, v, d)

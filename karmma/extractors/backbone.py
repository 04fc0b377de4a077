"""Extraction with real pre-trained backbones (``karmma extract --encoder efficientnet``).

* Frames (e.g. RGB): per temporal segment, the frozen backbone's features of the segment's
  middle frame and of its motion map (the sum of |frame differences| over the segment), each
  image channel-replicated where it has one channel and scaled to [0, 1] -> (segments, 2 x 1280).
* Depth (``Kind("depth")``, UTD-MHAD): three-view depth motion maps, stored as images for the
  model's trainable ``motion_map_cnn`` (:mod:`karmma.extractors.motion_maps`); on UTD-MHAD's
  validation folds that CNN beat these frozen features of the same clips by ~25 points.
* Optical flow: per segment, the backbone's features of the mean flow image (u, v, magnitude
  mapped to [0, 1]) -> (segments, 1280).
* Signals (inertial) and skeletons: resampled to a fixed number of time steps (skeletons with
  joint velocities), stored raw for the model's *trainable* 1-D encoders.

The teacher's backbone is EfficientNet-Lite2 at 224 px, the student's Lite0 at 128 px (22% of the
teacher's backbone FLOPs); both frozen, features cached in the store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from karmma.extractors.backbone_inputs import (  # noqa: F401  (frame/flow helpers: their home before 0.3)
    BACKBONES,
    SIGNAL_STEPS,
    FlowImages,
    FrameImages,
    Resampled,
    flow_images,
    flow_tokens,
    frame_features,
    frame_images,
    frame_tokens,
)  # fmt: skip
from karmma.extractors.efficientnet_lite import EfficientNetLite, load_pretrained

__all__ = ["BACKBONES", "SIGNAL_STEPS", "BackboneFlow", "BackboneFrames", "Resampled", "backbone", "embed_images"]


@functools.lru_cache(maxsize=4)
def backbone(variant: str) -> EfficientNetLite:
    model = load_pretrained(variant)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.inference_mode()
def embed_images(images: np.ndarray, variant: str, resolution: int) -> np.ndarray:
    """(N, H, W, C) in [0, 1], C = 1 or 3 -> (N, 1280) backbone features."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return backbone(variant).forward_features(x).numpy()


@dataclass(frozen=True)
class BackboneFrames(FrameImages):
    num_tokens: int
    variant: str
    resolution: int
    motion: bool = True  # also the depth motion map of each segment

    @property
    def dim(self) -> int:
        return EfficientNetLite.FEATURE_DIM * (2 if self.motion else 1)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return embed_images(images, self.variant, self.resolution)


@dataclass(frozen=True)
class BackboneFlow(FlowImages):
    num_tokens: int
    variant: str
    resolution: int

    @property
    def dim(self) -> int:
        return EfficientNetLite.FEATURE_DIM

    def embed(self, images: np.ndarray) -> np.ndarray:
        return embed_images(images, self.variant, self.resolution)

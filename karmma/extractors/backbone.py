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

from karmma.extractors.efficientnet_lite import EfficientNetLite, load_pretrained
from karmma.extractors.encoders import segment_bounds

BACKBONES = {"teacher": ("lite2", 224), "student": ("lite0", 128)}  # paper-unknown default
SIGNAL_STEPS = 32  # paper-unknown default: time steps of a resampled raw signal


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


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


@dataclass(frozen=True)
class BackboneFrames:
    num_tokens: int
    variant: str
    resolution: int
    motion: bool = True  # also the depth motion map of each segment

    @property
    def dim(self) -> int:
        return EfficientNetLite.FEATURE_DIM * (2 if self.motion else 1)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        f = np.asarray(frames, np.float32)
        f = f[..., None] if f.ndim == 3 else f
        f = _unit(f)
        segs = segment_bounds(len(f), self.num_tokens)
        images = [f[(a + b - 1) // 2] for a, b in segs]
        if self.motion:
            diff = np.abs(np.diff(f, axis=0, prepend=f[:1]))
            images += [_unit(diff[a:b].sum(0)) for a, b in segs]
        feats = embed_images(np.stack(images), self.variant, self.resolution)
        n = self.num_tokens
        return np.concatenate([feats[:n], feats[n:]], axis=1) if self.motion else feats


@dataclass(frozen=True)
class BackboneFlow:
    num_tokens: int
    variant: str
    resolution: int

    @property
    def dim(self) -> int:
        return EfficientNetLite.FEATURE_DIM

    def __call__(self, flow: np.ndarray) -> np.ndarray:
        flow = np.asarray(flow, np.float32)  # (T-1, H, W, 3): u, v, magnitude
        scale = max(float(np.percentile(flow[..., 2], 99)), 1e-3)
        images = []
        for a, b in segment_bounds(len(flow), self.num_tokens):
            m = flow[a:b].mean(0) / scale
            images.append(np.stack([0.5 + 0.5 * np.clip(m[..., 0], -1, 1), 0.5 + 0.5 * np.clip(m[..., 1], -1, 1),
                                    np.clip(m[..., 2], 0, 1)], axis=-1))  # fmt: skip
        return embed_images(np.stack(images), self.variant, self.resolution)


@dataclass(frozen=True)
class Resampled:
    """A (T, C) signal linearly resampled to ``num_tokens`` steps (+ velocities): (steps, C[*2])."""

    num_tokens: int
    channels: int
    velocity: bool = False

    @property
    def dim(self) -> int:
        return self.channels * (2 if self.velocity else 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        t = np.linspace(0, len(x) - 1, self.num_tokens)
        out = np.stack([np.interp(t, np.arange(len(x)), x[:, c]) for c in range(x.shape[1])], axis=1)
        if self.velocity:
            out = np.concatenate([out, np.gradient(out, axis=0) * (self.num_tokens / 8.0)], axis=1)
        return out.astype(np.float32)

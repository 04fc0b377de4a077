"""What the frozen backbones see, without torch: the images of each temporal segment of a clip
(:func:`frame_tokens`, :func:`flow_tokens`, given any ``embed``: the PyTorch backbone of
:mod:`karmma.extractors.backbone` or its ONNX export in a torch-free deployment) and raw
resampled signals (:class:`Resampled`) for the model's trainable 1-D encoders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from karmma.extractors.segments import segment_bounds

BACKBONES = {"teacher": ("lite2", 224), "student": ("lite0", 128)}  # paper-unknown default
SIGNAL_STEPS = 32  # paper-unknown default: time steps of a resampled raw signal

Embed = Callable[[np.ndarray], np.ndarray]  # (N, H, W, C) images in [0, 1] -> (N, features)


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


def frame_images(frames: np.ndarray, num_tokens: int, motion: bool = True) -> np.ndarray:
    """Per segment: its middle frame, then (``motion``) its motion map (the sum of |frame
    differences| over the segment), each scaled to [0, 1] -> (segments[*2], H, W, C)."""
    f = np.asarray(frames, np.float32)
    f = f[..., None] if f.ndim == 3 else f
    f = _unit(f)
    segs = segment_bounds(len(f), num_tokens)
    images = [f[(a + b - 1) // 2] for a, b in segs]
    if motion:
        diff = np.abs(np.diff(f, axis=0, prepend=f[:1]))
        images += [_unit(diff[a:b].sum(0)) for a, b in segs]
    return np.stack(images)


def frame_features(feats: np.ndarray, num_tokens: int, motion: bool = True) -> np.ndarray:
    """:func:`frame_images`' features -> (segments, features[*2]): a segment's frame and motion map side by side."""
    n = num_tokens
    return np.concatenate([feats[:n], feats[n:]], axis=1) if motion else feats


def frame_tokens(frames: np.ndarray, num_tokens: int, embed: Embed, motion: bool = True) -> np.ndarray:
    """Per segment: the features of its middle frame and (``motion``) of its motion map."""
    return frame_features(embed(frame_images(frames, num_tokens, motion)), num_tokens, motion)


def flow_images(flow: np.ndarray, num_tokens: int) -> np.ndarray:
    """Per segment: the mean flow image (u, v, magnitude mapped to [0, 1], scaled by the clip's
    99th percentile of magnitude) -> (segments, H, W, 3)."""
    flow = np.asarray(flow, np.float32)  # (T-1, H, W, 3): u, v, magnitude
    scale = max(float(np.percentile(flow[..., 2], 99)), 1e-3)
    images = []
    for a, b in segment_bounds(len(flow), num_tokens):
        m = flow[a:b].mean(0) / scale
        images.append(np.stack([0.5 + 0.5 * np.clip(m[..., 0], -1, 1), 0.5 + 0.5 * np.clip(m[..., 1], -1, 1),
                                np.clip(m[..., 2], 0, 1)], axis=-1))  # fmt: skip
    return np.stack(images)


def flow_tokens(flow: np.ndarray, num_tokens: int, embed: Embed) -> np.ndarray:
    """Per segment: the features of its mean flow image -> (segments, features)."""
    return embed(flow_images(flow, num_tokens))


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


class FrameImages:
    """:func:`frame_tokens` for a class giving ``num_tokens``, ``motion`` and ``embed`` (the
    PyTorch backbone, or its ONNX graph); ``images``/``tokens`` let a stream batch the backbone."""

    num_tokens: int
    motion: bool
    embed: Embed

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return frame_tokens(frames, self.num_tokens, self.embed, self.motion)

    def images(self, frames: np.ndarray) -> np.ndarray:
        return frame_images(frames, self.num_tokens, self.motion)

    def tokens(self, feats: np.ndarray) -> np.ndarray:
        return frame_features(feats, self.num_tokens, self.motion)


class FlowImages:
    """:func:`flow_tokens` for a class giving ``num_tokens`` and ``embed``."""

    num_tokens: int
    embed: Embed

    def __call__(self, flow: np.ndarray) -> np.ndarray:
        return flow_tokens(flow, self.num_tokens, self.embed)

    def images(self, flow: np.ndarray) -> np.ndarray:
        return flow_images(flow, self.num_tokens)

    def tokens(self, feats: np.ndarray) -> np.ndarray:
        return feats


@dataclass(frozen=True)
class FrameTokens(FrameImages):
    """:func:`frame_tokens` with a given ``embed`` (a backbone's ONNX graph in a torch-free deployment)."""

    num_tokens: int
    embed: Embed
    motion: bool = True
    features: int = 1280

    @property
    def dim(self) -> int:
        return self.features * (2 if self.motion else 1)


@dataclass(frozen=True)
class FlowTokens(FlowImages):
    """:func:`flow_tokens` with a given ``embed``."""

    num_tokens: int
    embed: Embed
    features: int = 1280

    @property
    def dim(self) -> int:
        return self.features

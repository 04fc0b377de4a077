"""Frozen per-modality encoders that turn raw media into ``num_tokens`` token features.

Two families, each with a teacher-sized and a student-sized variant per modality:

* ``pool`` — parameter-free: temporal segments, spatial average pooling to a grid (frames) or
  segment statistics (signals). Needs no weights; the UTD-MHAD benchmark uses it.
* ``cnn`` — small convolutional encoders whose *pretrained* weights are loaded from a local
  folder (``{weights}/{modality}_{teacher|student}.safetensors``, with the encoder config in the
  safetensors metadata). A missing file is an error that names it; nothing is downloaded.

Input kinds: ``frames`` (T, H, W, C) float, ``signal`` (T, C) float.

This module imports no torch (a torch-free deployment runs the ``pool`` family); the ``cnn``
family's encoders live in :mod:`karmma.extractors.cnn` and are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from karmma.extractors.segments import segment_bounds
from karmma.modalities import HALF

SIZES = ("teacher", "student")


def token_valid(valid: np.ndarray, num_tokens: int, whole_clip: bool = False) -> np.ndarray:
    """Which of ``num_tokens`` tokens hold data, from the raw steps' validity ``(T,)``: a token is
    present when at least half of its raw steps are valid (``segment_bounds``; every step for a
    token that summarises the whole clip); with any valid step, at least the best covered token
    is (:mod:`karmma.presence`)."""
    valid = np.asarray(valid, dtype=bool)
    spans = [(0, len(valid))] * num_tokens if whole_clip else segment_bounds(len(valid), num_tokens)
    share = np.array([valid[a:b].mean() if b > a else 0.0 for a, b in spans])
    out = share >= HALF
    if not out.any() and valid.any():  # the best covered token; a whole-clip summary's tokens together
        out[:] = whole_clip
        out[int(share.argmax())] = True
    return out


def whole_clip_tokens(encoder: object) -> bool:
    """Whether each token of ``encoder`` summarises the whole clip (depth motion maps: a view each)."""
    return bool(getattr(encoder, "whole_clip_tokens", False))


def encode(encoder: Any, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``encoder(x)``; a whole-clip summary is computed over the raw steps ``valid`` marks working
    (a time token's failed steps are dropped by its presence flag instead, :func:`token_valid`)."""
    if valid is not None and whole_clip_tokens(encoder) and not np.all(valid):
        return encoder(x, valid=valid)
    return encoder(x)


@dataclass(frozen=True)
class PoolFrames:
    """Per segment: mean frame and mean |frame difference| pooled to a ``grid`` (both per channel)."""

    num_tokens: int
    grid: tuple[int, int]
    channels: int
    motion: bool = True

    @property
    def dim(self) -> int:
        return self.grid[0] * self.grid[1] * self.channels * (2 if self.motion else 1)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, np.float32)
        if frames.ndim == 3:
            frames = frames[..., None]
        gh, gw = self.grid
        pooled = np.stack([cv2.resize(f, (gw, gh), interpolation=cv2.INTER_AREA).reshape(gh, gw, -1) for f in frames])
        diff = np.abs(np.diff(pooled, axis=0, prepend=pooled[:1]))
        tokens = []
        for a, b in segment_bounds(len(frames), self.num_tokens):
            parts = [pooled[a:b].mean(0).ravel()]
            if self.motion:
                parts.append(diff[a:b].mean(0).ravel())
            tokens.append(np.concatenate(parts))
        return np.stack(tokens).astype(np.float32)


@dataclass(frozen=True)
class PoolSignal:
    """Per segment: mean/std (and with ``rich``: min/max and ``points`` resampled values) per channel."""

    num_tokens: int
    channels: int
    rich: bool = True
    points: int = 4

    @property
    def dim(self) -> int:
        return self.channels * ((4 + self.points) if self.rich else 2)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        tokens = []
        for a, b in segment_bounds(len(x), self.num_tokens):
            seg = x[a:b]
            parts = [seg.mean(0), seg.std(0)]
            if self.rich:
                idx = np.linspace(0, len(seg) - 1, self.points).round().astype(int)
                parts += [seg.min(0), seg.max(0), seg[idx].T.ravel()]
            tokens.append(np.concatenate(parts))
        return np.stack(tokens).astype(np.float32)


@dataclass(frozen=True)
class WithVelocity:
    """Appends frame-to-frame differences (times ``scale``) to a (T, C) signal before ``encoder``."""

    encoder: object
    scale: float = 10.0

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.encoder(np.concatenate([x, np.diff(x, axis=0, prepend=x[:1]) * self.scale], axis=1))


__all__ = ["PoolFrames", "PoolSignal", "WithVelocity", "encode", "segment_bounds", "token_valid", "whole_clip_tokens"]


def __getattr__(name: str) -> Any:  # the cnn family's classes, imported (with torch) when asked for
    if name in ("CNNConfig", "CNNEncoder", "encoder_path"):
        from karmma.extractors import cnn

        return getattr(cnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Frozen per-modality encoders that turn raw media into ``num_tokens`` token features.

Two families, each with a teacher-sized and a student-sized variant per modality:

* ``pool`` — parameter-free: temporal segments, spatial average pooling to a grid (frames) or
  segment statistics (signals). Needs no weights; the UTD-MHAD benchmark uses it.
* ``cnn`` — small convolutional encoders whose *pretrained* weights are loaded from a local
  folder (``{weights}/{modality}_{teacher|student}.safetensors``, with the encoder config in the
  safetensors metadata). A missing file is an error that names it; nothing is downloaded.

Input kinds: ``frames`` (T, H, W, C) float, ``signal`` (T, C) float.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from karmma.errors import CheckpointError
from karmma.presence import HALF

SIZES = ("teacher", "student")


def segment_bounds(t: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous, non-empty [start, stop) segments covering ``t`` steps (reused if t < n)."""
    edges = np.linspace(0, t, n + 1)
    out = []
    for i in range(n):
        a = min(int(edges[i]), t - 1)
        out.append((a, max(a + 1, int(edges[i + 1]))))
    return out


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


# --------------------------------------------------------------------------- learned encoders


@dataclass
class CNNConfig:
    kind: str  # "frames" | "signal"
    in_channels: int
    width: int
    out_dim: int
    num_tokens: int


class CNNEncoder(nn.Module):
    """Frames: per-frame 2D conv stack + global pool; signals: a 1D conv stack. Then temporal
    segment means and a linear map to ``out_dim``."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.kind == "frames":
            conv, pool = nn.Conv2d, nn.AdaptiveAvgPool2d(1)
        elif cfg.kind == "signal":
            conv, pool = nn.Conv1d, None
        else:
            raise ValueError(f"unknown encoder kind {cfg.kind!r}")
        self.body = nn.Sequential(
            conv(cfg.in_channels, w, 3, stride=2, padding=1), nn.GELU(),
            conv(w, 2 * w, 3, stride=2 if cfg.kind == "frames" else 1, padding=1), nn.GELU(),
        )  # fmt: skip
        self.pool = pool
        self.out = nn.Linear(2 * w, cfg.out_dim)

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(x, np.float32))
        if self.cfg.kind == "frames":
            if t.ndim == 3:
                t = t[..., None]
            h = self.pool(self.body(t.permute(0, 3, 1, 2))).flatten(1)  # (T, 2w)
            steps = len(h)
        else:
            h = self.body(t.T[None])[0].T  # (T', 2w)
            steps = len(h)
        tokens = torch.stack([h[a:b].mean(0) for a, b in segment_bounds(steps, self.cfg.num_tokens)])
        return self.out(tokens).numpy().astype(np.float32)

    @property
    def dim(self) -> int:
        return self.cfg.out_dim

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"karmma_encoder": json.dumps(asdict(self.cfg))})
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CNNEncoder:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"pretrained encoder weights {path} are missing; put the {path.name} file there "
                "(karmma never downloads weights), or use --encoder pool"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            cfg = CNNConfig(**json.loads(meta["karmma_encoder"]))
        except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a karmma encoder checkpoint ({e})") from e
        enc = cls(cfg)
        missing, unexpected = enc.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the encoder config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return enc.eval().requires_grad_(False)


def encoder_path(weights: str | Path, modality: str, size: str) -> Path:
    return Path(weights) / f"{modality}_{size}.safetensors"

"""The ``cnn`` extractor family's encoders: small convolutional networks with pretrained weights
loaded from local files (:mod:`karmma.extractors.encoders` describes the families)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from karmma.errors import CheckpointError
from karmma.extractors.segments import segment_bounds


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

"""Per-modality encoders: the trainable module between what a store holds and the embedding.

``model.encoders`` maps a modality to a registered encoder (default ``identity``: today's token
features go straight to the embedding). An encoder takes the standardised stored tokens
(B, N, D) of one modality — zeros where the modality is absent — and returns (B, N', D'), which
:meth:`out_spec` declares so that the embedding is sized for it. A registered encoder is built
with ``from_config(spec, cfg)``; its ``__init__`` takes plain arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from karmma.modalities import ModalitySpec
from karmma.registry import Registry

ENCODERS = Registry("modality encoder")


@ENCODERS.register("identity")
class IdentityEncoder(nn.Module):
    """The stored tokens as they are (no parameters)."""

    def __init__(self, spec: ModalitySpec) -> None:
        super().__init__()
        self.spec = spec

    @classmethod
    def from_config(cls, spec: ModalitySpec, cfg) -> IdentityEncoder:
        return cls(spec)

    def out_spec(self) -> ModalitySpec:
        return self.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@ENCODERS.register("temporal_conv")
class TemporalConvEncoder(nn.Module):
    """A trainable temporal encoder over frame/signal tokens: ``layers`` residual 1-D conv blocks
    (kernel 3, over the token axis) at width ``width``; keeps the number of tokens."""

    def __init__(self, spec: ModalitySpec, width: int, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = ModalitySpec(spec.name, spec.num_tokens, width)
        self.inp = nn.Linear(spec.dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), _Conv1d(width), nn.GELU(), nn.Dropout(dropout)) for _ in range(layers)
        )

    @classmethod
    def from_config(cls, spec: ModalitySpec, cfg) -> TemporalConvEncoder:
        return cls(spec, width=cfg.encoder_width or cfg.dim, layers=cfg.encoder_layers, dropout=cfg.dropout)

    def out_spec(self) -> ModalitySpec:
        return self.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return h


class _Conv1d(nn.Module):
    """Conv1d over the token axis of (B, N, C) tensors."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def build_encoders(specs: list[ModalitySpec], names: dict[str, str], cfg) -> nn.ModuleList:
    """One encoder per modality (``identity`` where ``names`` has none)."""
    from karmma.errors import ConfigError

    unknown = sorted(set(names) - {s.name for s in specs})
    if unknown:
        raise ConfigError(f"model.encoders names modality {unknown}; the data has {[s.name for s in specs]}")
    return nn.ModuleList(ENCODERS.get(names.get(s.name, "identity")).from_config(s, cfg) for s in specs)

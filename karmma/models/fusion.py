"""Fusion blocks over [CLS] + every modality's tokens, chosen by ``model.fusion`` from :data:`FUSION`.

**The fusion contract** (what :class:`karmma.models.KARMMA` relies on, and what a custom block
must keep): ``forward(x, key_mask)`` takes ``x`` (B, L, dim) — position 0 is [CLS], then each
modality's ``num_tokens`` slots in modality order — and ``key_mask`` (B, L) bool (True = may be
attended to) or None, and returns (B, L, dim) with output position i belonging to input token i.
The model reads the [CLS] output at position 0 and averages each modality's slots. A registered
block is built with ``from_config(cfg: ModelConfig)``; its ``__init__`` takes plain arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from karmma.registries import FUSION


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


@FUSION.register("transformer")
class Fusion(nn.Module):
    """``depth`` pre-norm transformer blocks and a final LayerNorm. ``key_mask`` (B, L): True = attend."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_config(cls, cfg) -> Fusion:
        return cls(cfg.dim, cfg.depth, cfg.attn_heads, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)

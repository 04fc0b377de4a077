"""The reconstruction baseline (``model.missing: reconstruct``): an absent modality's slots hold
tokens *predicted from the present ones*, the answer of ActionMAE (Woo et al., AAAI 2023) and MMP
(Wei et al., "MMP: Towards Robust Multi-Modal Learning with Masked Modality Projection", 2024)
to a missing modality, where KARMMA shows the fusion block only the modality's learned tokens.

    every slot s (modality m, position i): query_s = a learned query per slot
    keys: a learned null token + every *present* projected token (+ a learned "where from" token)
    reconstruction_s = MLP(cross-attention(query_s, keys))           (B, ΣN_m, dim)
    slot s holds its projected token where present, reconstruction_s where absent

Presence per token is honoured both ways: a modality present for part of a clip lends its present
tokens to the prediction of its own absent ones. The null key keeps the attention defined when
nothing is present. Like the other strategies, the learned modality and position tokens are then
added by the embedding, so the fusion block still knows which modality a slot belongs to.

**Training** adds ``weight`` × the reconstruction loss (``recon`` in the history): the squared
error between the prediction and the real projected tokens of the slots that modality dropout
removed from this step although the data holds them, relative to those tokens' squared norm (1 =
no better than predicting zeros; the projection's scale changes in training, this ratio does not).
The targets are the model's own projection of the real tokens, computed without gradient (a
stop-gradient: the projection cannot shrink its outputs to make them easy to predict).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from karmma import presence
from karmma.modalities import ModalitySpec
from karmma.models.missing import MissingStrategy
from karmma.registries import MISSING

if TYPE_CHECKING:
    from karmma.data.dataset import Batch

WEIGHT = 1.0  # the reconstruction loss's weight beside the task's loss


@MISSING.register("reconstruct")
class Reconstruct(MissingStrategy):
    """Baseline: absent slots hold a cross-attention prediction from the present tokens."""

    weight = WEIGHT

    def build(self, specs: list[ModalitySpec], dim: int) -> None:
        self.counts = presence.counts_of(specs)
        total = sum(self.counts)
        self.heads = next(h for h in (4, 2, 1) if dim % h == 0)
        self.queries = nn.Parameter(torch.zeros(total, dim))
        self.sources = nn.Parameter(torch.zeros(total, dim))  # which slot a key comes from
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        for p in (self.queries, self.sources, self.null):
            nn.init.trunc_normal_(p, std=0.02)
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def predict(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``h`` (B, L, dim) every slot's projected tokens, ``keep`` (B, L) bool -> (B, L, dim)."""
        b, n, d = h.shape
        ctx = torch.cat([self.null.expand(b, -1, -1).to(h.dtype), self.norm_kv(h + self.sources)], dim=1)
        mask = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)[:, None, None, :]
        q = self.q(self.norm_q(self.queries)).expand(b, -1, -1)
        k, v = self.kv(ctx).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(b, n, d))
        return y + self.mlp(y)

    def complete(self, hs: list[torch.Tensor], keeps: list[torch.Tensor]) -> list[torch.Tensor]:
        h = torch.cat(hs, dim=1)
        keep = torch.cat([k.expand(-1, n, -1) for k, n in zip(keeps, self.counts)], dim=1)[..., 0]
        recon = self.predict(h, keep)
        self._last = (recon, keep)  # for losses(), right after this forward
        return list(torch.where(keep[..., None], h, recon).split(self.counts, dim=1))

    def losses(self, model: Any, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._last is None:
            return {}
        recon, used = self._last
        self._last = None
        whole, masks = model.presence(batch.mask())  # what the data holds, before modality dropout
        with torch.no_grad():
            encoded = model.encode(batch.tokens, whole, token_masks=masks)
            target = torch.cat([proj(x) for x, proj in zip(encoded, model.embed.proj)], dim=1)
            held = model.encoded_masks(masks) or presence.expand(whole, self.counts)
            dropped = torch.cat(list(held), dim=1) & ~used
        if not bool(dropped.any()):
            loss = recon.sum() * 0.0  # every weight still takes part (DDP)
        else:
            err, energy = (recon - target).pow(2).sum(-1)[dropped], target.pow(2).sum(-1)[dropped]
            loss = err.sum() / energy.sum().clamp_min(1e-12)  # 1 = no better than predicting zeros
        return {"loss": self.weight * loss, "recon": loss.detach()}

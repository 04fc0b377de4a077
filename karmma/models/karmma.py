"""The KARMMA model (teacher and student share this layout; only sizes differ).

    tokens[m] (B, N_m, D_m), present (B, M)
      -> ModalityEmbedding -> [CLS] + tokens -> Fusion
      -> readers: [CLS] output and each modality's mean output token
      -> MultiTaskHead -> {task: logits}, averaged over readers

The baselines share the interface: ``missing="zero"`` (zero-filled features) and
``missing="attn_mask"`` (missing slots masked out of attention and of the head average). The
"no modality dropout" baseline is a training setting (``modality_dropout.kind=none``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from karmma.config import ModelConfig
from karmma.errors import DataError
from karmma.modalities import ModalitySpec
from karmma.models.embedding import ModalityEmbedding
from karmma.models.fusion import Fusion
from karmma.models.heads import MultiTaskHead


class KARMMA(nn.Module):
    def __init__(self, specs: Sequence[ModalitySpec], tasks: Mapping[str, int], cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        if not specs:
            raise DataError("KARMMA needs at least one modality spec")
        if not tasks:
            raise DataError("KARMMA needs at least one task (e.g. {'action': 27})")
        self.specs = list(specs)
        self.tasks = dict(tasks)
        self.cfg = cfg
        self.embed = ModalityEmbedding(self.specs, cfg.dim, cfg.missing)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.fusion = Fusion(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.head = MultiTaskHead(cfg.dim, cfg.head_hidden, self.tasks, 1 + len(self.specs))
        self.apply(_init_linear)

    @property
    def modality_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _as_list(self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(tokens, Mapping):
            unknown = sorted(set(tokens) - set(self.modality_names))
            if unknown:
                raise DataError(f"unknown modality {unknown}; this model knows {self.modality_names}")
            missing = [n for n in self.modality_names if n not in tokens]
            if missing:
                raise DataError(
                    f"no tensor for modality {missing}: pass zeros of the right shape and mark it "
                    "absent in the presence mask"
                )
            return [tokens[n] for n in self.modality_names]
        return list(tokens)

    def forward_features(
        self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], present: torch.Tensor
    ) -> torch.Tensor:
        """Readers ``(B, 1 + M, dim)``: the [CLS] output and each modality's mean output token."""
        xs = self._as_list(tokens)
        b = present.shape[0]
        x = self.embed(xs, present)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        key_mask = None
        if self.cfg.missing == "attn_mask":
            slots = [present[:, m : m + 1].expand(-1, s.num_tokens) for m, s in enumerate(self.specs)]
            key_mask = torch.cat([torch.ones_like(present[:, :1])] + slots, dim=1)
        x = self.fusion(x, key_mask)
        readers = [x[:, 0]]
        start = 1
        for s in self.specs:
            readers.append(x[:, start : start + s.num_tokens].mean(1))
            start += s.num_tokens
        return torch.stack(readers, dim=1)

    def reader_weights(self, present: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(present[:, :1], dtype=torch.float32)
        if self.cfg.head_average == "present" or self.cfg.missing == "attn_mask":
            return torch.cat([ones, present.float()], dim=1)
        return torch.cat([ones, torch.ones_like(present, dtype=torch.float32)], dim=1)

    def forward(
        self, tokens: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], present: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.head(self.forward_features(tokens, present), self.reader_weights(present))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(specs: Sequence[ModalitySpec], tasks: Mapping[str, int], cfg: ModelConfig) -> KARMMA:
    return KARMMA(specs, tasks, cfg)

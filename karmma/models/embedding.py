"""The embedding layer: per-modality projection + learned modality token + learned position tokens.

A missing modality keeps its token slots. What its slots hold is the missing-modality strategy's
choice (:mod:`karmma.models.missing`); with KARMMA's ``token`` strategy they hold the learned
modality token + per-position tokens only, so the model knows *which* modality is absent without
seeing any of its (absent) values.
"""

from __future__ import annotations

import torch
from torch import nn

from karmma.modalities import ModalitySpec
from karmma.models.missing import LearnedTokens, MissingStrategy


class ModalityEmbedding(nn.Module):
    """``in_specs``: what the store holds (input standardisation is sized for it); ``specs``:
    what the encoders give (the projections and position tokens are sized for it)."""

    missing: MissingStrategy

    def __init__(
        self,
        specs: list[ModalitySpec],
        dim: int,
        missing: MissingStrategy | None = None,
        in_specs: list[ModalitySpec] | None = None,
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        # shared with the model, which owns it: not a submodule here, so its weights (if any) are saved once
        object.__setattr__(self, "missing", missing if missing is not None else LearnedTokens())
        self.missing.build(self.specs, dim)
        self.proj = nn.ModuleList([nn.Linear(s.dim, dim) for s in self.specs])
        self.modality_tokens = nn.Parameter(torch.zeros(len(self.specs), dim))
        self.position_tokens = nn.ParameterList([nn.Parameter(torch.zeros(s.num_tokens, dim)) for s in self.specs])
        # Input standardisation (per stored feature), set from training data by set_input_stats()
        # and saved with the weights, so exported and reloaded models see the same scale.
        for m, s in enumerate(in_specs or self.specs):
            self.register_buffer(f"input_mean_{m}", torch.zeros(s.dim))
            self.register_buffer(f"input_std_{m}", torch.ones(s.dim))
        nn.init.trunc_normal_(self.modality_tokens, std=0.02)
        for p in self.position_tokens:
            nn.init.trunc_normal_(p, std=0.02)

    @torch.no_grad()
    def set_input_stats(self, means: list[torch.Tensor], stds: list[torch.Tensor]) -> None:
        for m, (mu, sd) in enumerate(zip(means, stds)):
            getattr(self, f"input_mean_{m}").copy_(torch.as_tensor(mu))
            getattr(self, f"input_std_{m}").copy_(torch.as_tensor(sd).clamp_min(1e-6))

    def standardize(self, m: int, x: torch.Tensor, keep: torch.Tensor, scale: bool = True) -> torch.Tensor:
        """Stored tokens of modality ``m``, standardised (unless ``scale`` is False), zeros where
        absent (``keep`` (B, 1, 1), or (B, N, 1) per token). Absent values never reach the model, whatever they hold."""
        if scale:
            x = (x - getattr(self, f"input_mean_{m}")) / getattr(self, f"input_std_{m}")
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype))

    def forward(
        self, tokens: list[torch.Tensor], present: torch.Tensor, token_masks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``tokens[m]``: encoded ``(B, N_m, D_m)``; ``present``: ``(B, M)`` bool -> ``(B, sum N_m, dim)``.
        With ``token_masks`` (``[(B, N_m)]``) an absent *slot* is filled as an absent modality's are."""
        hs = [proj(x) for x, proj in zip(tokens, self.proj)]
        keeps = [present[:, m, None, None] if token_masks is None else token_masks[m][..., None]
                 for m in range(len(hs))]  # fmt: skip
        out = [h + self.modality_tokens[m] + self.position_tokens[m]
               for m, h in enumerate(self.missing.complete(hs, keeps))]  # fmt: skip
        return torch.cat(out, dim=1)

"""The embedding layer: per-modality projection + learned modality token + learned position tokens.

A missing modality keeps its token slots. With ``missing="token"`` (KARMMA) those slots hold the
learned modality token + per-position tokens only, so the model knows *which* modality is absent
without seeing any of its (absent) values.
"""

from __future__ import annotations

import torch
from torch import nn

from karmma.modalities import ModalitySpec


class ModalityEmbedding(nn.Module):
    def __init__(self, specs: list[ModalitySpec], dim: int, missing: str = "token") -> None:
        super().__init__()
        self.specs = list(specs)
        self.missing = missing
        self.proj = nn.ModuleList([nn.Linear(s.dim, dim) for s in self.specs])
        self.modality_tokens = nn.Parameter(torch.zeros(len(self.specs), dim))
        self.position_tokens = nn.ParameterList([nn.Parameter(torch.zeros(s.num_tokens, dim)) for s in self.specs])
        # Input standardisation (per feature), set from training data by set_input_stats() and
        # saved with the weights, so exported and reloaded models see the same scale.
        for m, s in enumerate(self.specs):
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

    def forward(self, tokens: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """``tokens[m]``: ``(B, N_m, D_m)``; ``present``: ``(B, M)`` bool -> ``(B, sum N_m, dim)``."""
        out = []
        for m, (x, proj) in enumerate(zip(tokens, self.proj)):
            keep = present[:, m, None, None]
            # Absent values never reach the model, whatever they hold (NaN included); this also
            # keeps gradients finite.
            x = (x - getattr(self, f"input_mean_{m}")) / getattr(self, f"input_std_{m}")
            h = proj(torch.where(keep, x, torch.zeros((), dtype=x.dtype)))
            if self.missing != "zero":
                # KARMMA: the slot is only modality token + position tokens. ("zero" baseline keeps
                # proj(0), i.e. zero-filled features projected like real ones.)
                h = torch.where(keep, h, torch.zeros((), dtype=h.dtype))
            out.append(h + self.modality_tokens[m] + self.position_tokens[m])
        return torch.cat(out, dim=1)

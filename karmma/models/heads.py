"""The multi-head MLP: one MLP per (reader, task); readers are [CLS] and each modality's mean
output token; each task's logits are the (weighted) average over readers."""

from __future__ import annotations

import torch
from torch import nn


class MultiTaskHead(nn.Module):
    def __init__(self, dim: int, hidden: int, tasks: dict[str, int], num_readers: int) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.heads = nn.ModuleDict(
            {
                task: nn.ModuleList(
                    [
                        nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n))
                        for _ in range(num_readers)
                    ]
                )
                for task, n in self.tasks.items()
            }
        )

    def forward(self, readers: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``readers``: (B, R, dim); ``weights``: (B, R) non-negative -> ``{task: (B, C)}``."""
        w = weights / weights.sum(1, keepdim=True).clamp_min(1e-6)
        out = {}
        for task, mlps in self.heads.items():
            per_reader: list[nn.Module] = list(mlps)  # type: ignore[call-overload]
            logits = torch.stack([mlp(readers[:, r]) for r, mlp in enumerate(per_reader)], dim=1)
            out[task] = (logits * w[:, :, None]).sum(1)
        return out

"""Top-k accuracy, accumulated over batches, per head (and per modality subset upstream)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``(B,)``: the label is among the top ``k`` logits (k capped at the class count)."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    if labels.numel() == 0:
        return float("nan")
    return topk_correct(logits, labels, k).float().mean().item() * 100.0


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """NumPy twin of :func:`topk_correct` for score arrays read from files (ties: lower id first)."""
    return (np.argsort(-scores, 1, kind="stable")[:, :k] == labels[:, None]).any(1)


class AccuracyMeter:
    """Accumulates top-1/top-5 per task; empty batches are fine."""

    def __init__(self, tasks: list[str], ks: tuple[int, ...] = (1, 5)) -> None:
        self.tasks = list(tasks)
        self.ks = ks
        self.correct = {(t, k): 0 for t in self.tasks for k in ks}
        self.count = 0

    def update(self, logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> None:
        n = next(iter(labels.values())).shape[0] if labels else 0
        if n == 0:
            return
        for t in self.tasks:
            for k in self.ks:
                self.correct[(t, k)] += int(topk_correct(logits[t], labels[t], k).sum())
        self.count += n

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {"count": float(self.count)}
        for (t, k), c in self.correct.items():
            out[f"{t}_top{k}"] = 100.0 * c / self.count if self.count else float("nan")
        return out

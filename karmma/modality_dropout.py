"""Modality dropout: whole modalities dropped at random, always keeping at least one present.

Samplers take the data's presence mask and a ``torch.Generator`` and return a new mask that is a
subset of it; a modality the data lacks can never be switched on. In distillation the one mask
returned here feeds both teacher and student.
"""

from __future__ import annotations

import torch

from karmma.config import ModalityDropoutConfig
from karmma.modalities import subset_masks


def independent_dropout(present: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each present modality with probability ``p``; a sample that would lose every modality
    keeps one of its present modalities, chosen uniformly."""
    present = present.bool()
    drop = torch.rand(present.shape, generator=generator) < p
    kept = present & ~drop
    # Uniform choice among present modalities for the rescue: random scores, -inf where absent.
    scores = torch.rand(present.shape, generator=generator).masked_fill(~present, -1.0)
    rescue = torch.zeros_like(present)
    rescue.scatter_(1, scores.argmax(1, keepdim=True), True)
    empty = ~kept.any(1, keepdim=True)
    return torch.where(empty, rescue & present, kept)


def subset_dropout(present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Replace each sample's mask by a subset drawn uniformly among the non-empty subsets of its
    present modalities."""
    present = present.bool()
    out = torch.zeros_like(present)
    for b in range(present.shape[0]):
        idx = present[b].nonzero().flatten()
        k = len(idx)
        if k == 0:
            continue
        code = int(torch.randint(1, 2**k, (1,), generator=generator))
        out[b, idx] = subset_masks(k)[code - 1]
    return out


def apply_modality_dropout(
    present: torch.Tensor, cfg: ModalityDropoutConfig, generator: torch.Generator
) -> torch.Tensor:
    if cfg.kind == "none" or (cfg.kind == "independent" and cfg.p == 0.0):
        return present.bool().clone()
    if cfg.kind in ("independent", "burst"):  # burst: the whole-modality part (bursts: karmma.bursts)
        return independent_dropout(present, cfg.p, generator) if cfg.p > 0 else present.bool().clone()
    return subset_dropout(present, generator)


def sensor_dropout_masks(present: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """Run-time sensor dropout for evaluation: each present sensor fails with probability ``rate``
    (at least one survives), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return independent_dropout(present, rate, g)

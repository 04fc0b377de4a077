"""Presence per token: which of a modality's tokens hold data (a sensor may fail for part of a clip).

Two forms of the one mask, both bool tensors, accepted wherever a presence mask is:

* **whole**: ``(B, M)``, one flag per modality for the whole clip (the paper's mask);
* **per token**: ``(B, ΣN_m)``, one flag per stored token, modality after modality in the model's
  order (the ONNX ``present`` input of a per-token export). Split, it is ``[(B, N_m)]``.

The whole mask derives from the per-token one: a modality is present when any of its tokens is.
A per-token mask whose every modality is all-or-nothing *is* a whole mask (:func:`normalize`
returns it as such), so models compute exactly what they did before per-token masks existed.

Tokens span the clip evenly, in time order (``segment_bounds``): token ``k`` of ``N`` covers
``[k/N, (k+1)/N)`` of the clip. An encoder that changes the token count (pooling 32 steps to 16
fusion tokens, or three views to one token) maps the mask by :func:`resample`: an output token is
present when at least half of its span is covered by present input tokens; a modality with any
present input keeps at least one present output (the best covered), so no data is dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from karmma.errors import DataError
from karmma.modalities import HALF  # noqa: F401  (the coverage from which a resampled token counts as present)


def counts_of(specs: Sequence) -> list[int]:
    """The token counts ``N_m`` of modality specs (anything with ``num_tokens``)."""
    return [int(s.num_tokens) for s in specs]


def expand(present: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    """A whole mask ``(B, M)`` as per-token masks ``[(B, N_m)]``."""
    return [present[:, m, None].expand(-1, n) for m, n in enumerate(counts)]


def per_token(present: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """A whole mask ``(B, M)`` as a per-token one ``(B, ΣN_m)``: each flag repeated over its tokens."""
    return flatten(expand(present, counts))


def flatten(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[(B, N_m)]`` -> ``(B, ΣN_m)``."""
    return torch.cat(list(masks), dim=1)


def split(flat: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    """``(B, ΣN_m)`` -> ``[(B, N_m)]``."""
    if flat.shape[1] != sum(counts):
        raise DataError(f"a per-token mask of {flat.shape[1]} columns; the modalities have {sum(counts)} tokens "
                        f"{list(counts)}")  # fmt: skip
    return list(torch.split(flat, list(counts), dim=1))


def whole(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[(B, N_m)]`` -> ``(B, M)``: a modality is present when any of its tokens is."""
    return torch.stack([m.any(1) for m in masks], dim=1)


def is_partial(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B,)``: the samples with a modality present for part of the clip only."""
    rows = [(m.any(1) & ~m.all(1)) for m in masks]
    return torch.stack(rows, 1).any(1) if rows else torch.zeros(0, dtype=torch.bool)


def normalize(mask: torch.Tensor, counts: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Either form -> ``(whole (B, M), per-token [(B, N_m)] or None)``; None when no modality of
    any sample is present for part of the clip (the whole mask then says everything)."""
    mask = mask.bool()
    if mask.ndim != 2 or mask.shape[1] not in (len(counts), sum(counts)):
        raise DataError(
            f"presence mask of shape {tuple(mask.shape)}; give (B, {len(counts)}) (one flag per modality) "
            f"or (B, {sum(counts)}) (one per token: {list(counts)})"
        )
    if mask.shape[1] == len(counts):  # whole (also when every modality has one token: the same thing)
        return mask, None
    masks = split(mask, counts)
    return whole(masks), (masks if bool(is_partial(masks).any()) else None)


def combine(mask: torch.Tensor, data: torch.Tensor | None, counts: Sequence[int]) -> torch.Tensor:
    """``mask`` (either form) AND the data's own per-token presence ``data`` ``(B, ΣN_m)`` (None:
    whole-clip data) -> the mask in per-token form when either is per token, else whole."""
    if data is None and mask.shape[1] == len(counts):
        return mask.bool()
    flat = mask.bool() if mask.shape[1] != len(counts) else per_token(mask.bool(), counts)
    if flat.shape[1] != sum(counts):
        split(flat, counts)  # raises, naming the shapes
    return flat & data.bool() if data is not None else flat


def coverage(mask: torch.Tensor, n_out: int) -> torch.Tensor:
    """``(B, N)`` bool -> ``(B, n_out)`` float: the fraction of each output token's span (the clip
    cut in ``n_out`` equal parts) covered by present input tokens (the clip cut in ``N``)."""
    n = mask.shape[1]
    if n == n_out:
        return mask.float()
    # exact overlap of [j/n_out, (j+1)/n_out) with [k/n, (k+1)/n), in units of 1/(n * n_out)
    j = torch.arange(n_out, device=mask.device)[:, None]
    k = torch.arange(n, device=mask.device)[None, :]
    overlap = (torch.minimum((j + 1) * n, (k + 1) * n_out) - torch.maximum(j * n, k * n_out)).clamp_min(0)
    return (mask.float() @ overlap.T.float()) / n  # (B, n_out): each row of overlap sums to n


def resample(mask: torch.Tensor, n_out: int) -> torch.Tensor:
    """``(B, N)`` -> ``(B, n_out)`` bool by the pooled-mask rule (module docstring)."""
    if mask.shape[1] == n_out:
        return mask.bool()
    cov = coverage(mask.bool(), n_out)
    out = cov >= HALF
    best = torch.arange(n_out, device=mask.device)[None] == cov.argmax(1, keepdim=True)  # (traceable for ONNX)
    rescue = mask.any(1, keepdim=True) & ~out.any(1, keepdim=True)
    return out | (best & rescue)


def to_counts(mask: torch.Tensor, counts: Sequence[int], new_counts: Sequence[int]) -> torch.Tensor:
    """A mask for modalities of ``counts`` tokens as one for the same modalities with ``new_counts``
    (e.g. a student's mask for its teacher, whose extractors give other token counts): a whole
    mask as it is, a per-token one resampled per modality (:func:`resample`)."""
    if mask.shape[1] == len(counts) or list(counts) == list(new_counts):
        return mask
    return flatten([resample(mk, n) for mk, n in zip(split(mask, counts), new_counts)])


def only(mask: torch.Tensor, m: int, counts: Sequence[int]) -> torch.Tensor:
    """Modality ``m`` alone: a whole mask's row of ``m`` for every sample (as a single-modality
    subset); a per-token mask keeps ``m``'s own tokens where it has any (the rest: all of ``m``'s)."""
    row = torch.zeros(len(counts), dtype=torch.bool, device=mask.device)
    row[m] = True
    alone = row.expand(mask.shape[0], -1)
    if mask.shape[1] == len(counts):
        return alone
    mine = split(mask.bool(), counts)[m]
    tokens = [torch.zeros_like(t) for t in split(mask.bool(), counts)]
    tokens[m] = torch.where(mine.any(1, keepdim=True), mine, torch.ones_like(mine))
    return flatten(tokens)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``(B, N, D)`` averaged over its present tokens (``mask`` ``(B, N)``); over all tokens
    where none is present (the placeholders of an absent modality) or ``mask`` is None."""
    plain = x.mean(1)
    if mask is None:
        return plain
    w = mask.to(x.dtype)[..., None]
    total = w.sum(1)
    partial = (x * w).sum(1) / total.clamp_min(1.0)
    use = (mask.any(1) & ~mask.all(1))[:, None]
    return torch.where(use, partial, plain)

"""Modalities, presence masks and modality subsets.

A batch always carries an explicit boolean presence mask of shape ``(B, M)``: ``mask[b, m]`` is
True when modality ``m`` of sample ``b`` is present. Everything downstream (model, losses,
metrics, evaluation) takes that mask rather than guessing presence from the feature values.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from karmma.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where a mask is made: a torch-free deployment reads the specs
    import torch

HALF = 0.5  # the coverage from which a token counts as present (:mod:`karmma.presence`)


@dataclass(frozen=True)
class ModalitySpec:
    """One modality's token features: ``num_tokens`` tokens of ``dim`` features each."""

    name: str
    num_tokens: int
    dim: int

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"modality name {self.name!r} must be a non-empty identifier")
        if self.num_tokens < 1 or self.dim < 1:
            raise ConfigError(
                f"modality {self.name!r}: num_tokens and dim must be >= 1, "
                f"got num_tokens={self.num_tokens}, dim={self.dim}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_tokens, self.dim)

    def to_dict(self) -> dict:
        return {"name": self.name, "num_tokens": self.num_tokens, "dim": self.dim}


def all_subsets(names: list[str] | tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, smallest first, in the given modality order.

    Three modalities give seven subsets, as evaluated in the paper.
    """
    if not names:
        raise ConfigError("at least one modality is needed; got an empty modality list")
    out: list[tuple[str, ...]] = []
    for k in range(1, len(names) + 1):
        out.extend(itertools.combinations(names, k))
    return out


def subset_name(subset: tuple[str, ...] | list[str]) -> str:
    """``("rgb", "flow")`` -> ``"rgb+flow"``."""
    return "+".join(subset)


def parse_subset(text: str, names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Parse ``"rgb+audio"`` (or comma separated) into a subset in modality order."""
    parts = [p.strip() for p in text.replace(",", "+").split("+") if p.strip()]
    if not parts:
        raise ConfigError(f"empty modality subset {text!r}; name at least one of {list(names)}")
    unknown = [p for p in parts if p not in names]
    if unknown:
        raise ConfigError(f"unknown modality {unknown} in {text!r}; known modalities: {list(names)}")
    return tuple(n for n in names if n in parts)


def subset_mask(subset: tuple[str, ...], names: list[str] | tuple[str, ...], batch: int) -> torch.Tensor:
    """A ``(batch, M)`` presence mask with exactly the modalities of ``subset`` present."""
    import torch

    row = torch.tensor([n in subset for n in names], dtype=torch.bool)
    return row.unsqueeze(0).expand(batch, -1).clone()


def subset_masks(num_modalities: int) -> torch.Tensor:
    """``(2**M - 1, M)`` bool: row ``j`` is the subset of bit-code ``j + 1`` (modality m <-> ``2**m``),
    the inverse of :func:`subset_index`."""
    import torch

    codes = torch.arange(1, 2**num_modalities)
    return (codes[:, None] >> torch.arange(num_modalities)) & 1 == 1


def dummy_inputs(
    specs: list[ModalitySpec], batch: int, subset: tuple[str, ...] | None = None, seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random tokens for every modality and the presence mask of ``subset`` (all when None)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    names = [s.name for s in specs]
    tokens = [torch.randn(batch, s.num_tokens, s.dim, generator=g) for s in specs]
    return tokens, subset_mask(tuple(subset or names), names, batch)


def subset_index(mask: torch.Tensor) -> torch.Tensor:
    """Bit-encode each row of a ``(B, M)`` mask: modality m contributes ``2**m``.

    The index of a non-empty subset is ``code - 1`` in ``[0, 2**M - 2]``; used to look up cached
    teacher logits per subset.
    """
    import torch

    weights = 2 ** torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * weights).sum(1) - 1


def check_mask(mask: torch.Tensor, sample_ids: list[str] | None = None) -> None:
    """Raise :class:`DataError` if any sample has no modality present."""
    import torch

    if mask.dtype != torch.bool or mask.dim() != 2:
        raise DataError(f"presence mask must be a (B, M) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        which = [sample_ids[i] for i in empty] if sample_ids else empty
        raise DataError(
            f"sample(s) {which[:5]} have no modality present; every sample needs at least one "
            "modality (drop such samples from the split, or supply one of its modalities)"
        )


def check_named_modalities(named: Iterable[str], specs: Sequence[ModalitySpec], key: str) -> None:
    """A per-modality setting of the config (``key``, e.g. ``model.swap``) names only modalities the
    data has; else a :class:`~karmma.errors.ConfigError` that lists both."""
    have = sorted(s.name for s in specs)
    unknown = sorted(set(named) - set(have))
    if unknown:
        raise ConfigError(f"{key} names modality {unknown}; the data has {have}")

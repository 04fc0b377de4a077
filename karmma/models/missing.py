"""Missing-modality strategies: how an absent modality is shown to the fusion block.

A strategy has three hooks, each given the per-sample presence mask (and two optional ones, for a
strategy with weights of its own: ``build(specs, dim)`` sizes them once the encoded token layout is
known, ``losses(model, batch, mask)`` gives its auxiliary training loss):

* ``fill(h, keep)``: the projected tokens ``h`` (B, N_m, dim) of one modality, with ``keep``
  (B, 1, 1) True where it is present — or (B, N_m, 1), per slot, when a modality is present for
  part of a clip only -> the tokens to which the learned modality and position
  tokens are then added;
* ``key_mask(present, specs, token_masks=None)``: (B, 1 + sum N_m) bool, True = may be attended
  to, or None; ``token_masks`` (per-token presence of the encoded tokens, [(B, N_m)]) when a
  modality is present for part of a clip only;
* ``reader_weights(present, head_average)``: (B, 1 + M) weights of the [CLS] and per-modality
  readers in the head average.

The embedding calls ``complete(hs, keeps)`` with every modality's projected tokens at once; by
default it is ``fill`` per modality, and a strategy that predicts one modality from the others
(``reconstruct``) overrides it.

Registered: ``token`` (KARMMA: an absent modality's slots hold only its learned tokens),
``zero`` (baseline: zero-filled features, projected like real ones) and ``attn_mask`` (baseline:
absent slots masked out of attention and of the head average); ``reconstruct`` (baseline, as
ActionMAE and MMP: absent slots hold tokens predicted from the present ones,
:mod:`karmma.models.reconstruct`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from karmma.modalities import ModalitySpec
from karmma.registries import MISSING

if TYPE_CHECKING:
    from karmma.data.dataset import Batch


class MissingStrategy(nn.Module):
    """The KARMMA behaviour; subclasses override the hooks they change."""

    def build(self, specs: list[ModalitySpec], dim: int) -> None:
        """Size the strategy's own weights (if any) for the encoded ``specs`` and the fusion width."""

    def complete(self, hs: list[torch.Tensor], keeps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every modality's projected tokens ``hs[m]`` (B, N_m, dim) with its ``keeps[m]`` ((B, 1, 1)
        or (B, N_m, 1)) -> what its slots hold before the learned tokens are added."""
        return [self.fill(h, keep) for h, keep in zip(hs, keeps)]

    def losses(self, model: Any, batch: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Auxiliary terms of the training step that just ran ``model`` on ``batch`` under ``mask``
        (``"loss"``: the weighted sum to add), as an add-on's :meth:`~karmma.models.addons.AddOn.losses`."""
        return {}

    def fill(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, h, torch.zeros((), dtype=h.dtype))

    def key_mask(
        self, present: torch.Tensor, specs: list[ModalitySpec], token_masks: list[torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        return None

    def reader_weights(self, present: torch.Tensor, head_average: str) -> torch.Tensor:
        ones = torch.ones_like(present[:, :1], dtype=torch.float32)
        modal = present.float() if head_average == "present" else torch.ones_like(present, dtype=torch.float32)
        return torch.cat([ones, modal], dim=1)


@MISSING.register("token")
class LearnedTokens(MissingStrategy):
    """KARMMA: the slots of an absent modality are its learned modality + position tokens only."""


@MISSING.register("zero")
class ZeroFill(MissingStrategy):
    """Baseline: absent features are zeros, projected like real ones (``proj(0)`` = the bias)."""

    def fill(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return h


@MISSING.register("attn_mask")
class AttentionMask(MissingStrategy):
    """Baseline: absent slots are masked out of attention and of the head average."""

    def key_mask(
        self, present: torch.Tensor, specs: list[ModalitySpec], token_masks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        slots = token_masks or [present[:, m : m + 1].expand(-1, s.num_tokens) for m, s in enumerate(specs)]
        return torch.cat([torch.ones_like(present[:, :1])] + list(slots), dim=1)

    def reader_weights(self, present: torch.Tensor, head_average: str) -> torch.Tensor:
        return super().reader_weights(present, "present")

"""What every KARMMA forward returns: :class:`ModelOutput`, the ``{task: logits}`` mapping (so
``model(tokens, present)["verb"]`` reads as before) carrying what objectives and add-ons read.

* ``readers`` ``(B, 1 + M, dim)``: the [CLS] output and each modality's mean output token;
* ``encoded``: each modality's encoder output (before any train-time swap);
* ``token_masks``: the encoded tokens' presence ``[(B, N_m)]`` when a modality is present for
  part of a clip only (None otherwise: the whole mask says everything);
* ``extras``: ``{add-on: what it computed}``, e.g. the late fusion's unimodal logits.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from karmma.errors import DataError


class ModelOutput(dict):
    readers: torch.Tensor
    encoded: list[torch.Tensor]
    token_masks: list[torch.Tensor] | None
    extras: dict[str, Any]

    def __init__(
        self,
        logits: dict[str, torch.Tensor],
        readers: torch.Tensor,
        encoded: list[torch.Tensor],
        token_masks: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__(logits)
        self.readers, self.encoded, self.extras = readers, encoded, {}
        self.token_masks = token_masks

    @property
    def logits(self) -> dict[str, torch.Tensor]:
        return dict(self)

    def replace_logits(self, logits: dict[str, torch.Tensor]) -> ModelOutput:
        out = ModelOutput(logits, self.readers, self.encoded, self.token_masks)
        out.extras = dict(self.extras)
        return out


def legacy_tuple(model: Any, out: ModelOutput, with_features: bool, with_unimodal: bool) -> Any:
    """karmma 0.1's ``forward(..., with_features=True, with_unimodal=True)`` tuple, for one more
    release: read ``out.readers`` and ``out.extras["late_fusion"]["heads"]`` instead."""
    warnings.warn(
        "KARMMA.forward(with_features=..., with_unimodal=...) is deprecated: the forward returns a "
        "ModelOutput; read .readers and .extras['late_fusion']['heads']",
        DeprecationWarning,
        stacklevel=3,
    )
    parts: list[Any] = [out.logits]
    if with_features:
        parts.append(out.readers)
    if with_unimodal:
        parts.append(unimodal_heads(model, out))
    return tuple(parts)


def unimodal_heads(model: Any, out: ModelOutput) -> dict[str, torch.Tensor]:
    """The late fusion's unimodal logits of ``out`` (computed when the forward did not need them)."""
    addons = getattr(model, "addons", {})
    if "late_fusion" not in addons:
        raise DataError("this model has no unimodal heads: give it model.addons.late_fusion (e.g. {loss_weight: 1.0})")
    return addons["late_fusion"].experts(out)["heads"]

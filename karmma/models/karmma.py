"""The KARMMA model, as the paper draws it (teacher and student share it; only sizes differ).

    tokens[m] (B, N_m, D_m), present (B, M) — or per token (B, ΣN_m)         (karmma.presence)
      -> standardise (absent -> 0) -> encoder[m]                               (encode)
      -> ModalityEmbedding: projection + modality token + position tokens,
         an absent modality's (or token's) slots filled by the missing-modality strategy
      -> [CLS] + tokens -> fusion block
      -> readers: the [CLS] output and each modality's mean present output token (fuse; forward_features)
      -> multi-head MLP per reader, averaged -> {task: logits}                 (forward_head)

Every part is an object chosen by name (``model.encoders``, ``model.missing``, ``model.fusion``)
or passed in. The baselines share it: ``missing="zero"`` (zero-filled features) and
``missing="attn_mask"`` (absent slots masked out of attention and of the head average).
What goes beyond the paper is an add-on (``model.addons``, :mod:`karmma.models.addons`) called at
the end of the forward, or a training-only augmentation the engine passes in (``augment``,
:mod:`karmma.engine.augment`); neither is part of this file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from karmma import presence
from karmma.config import ModelConfig
from karmma.errors import ConfigError, DataError
from karmma.modalities import ModalitySpec
from karmma.models.addons import AddOn, build_addons
from karmma.models.embedding import ModalityEmbedding
from karmma.models.encoders import ModalityEncoder, build_encoders
from karmma.models.heads import MultiTaskHead
from karmma.models.missing import MissingStrategy
from karmma.models.output import ModelOutput, legacy_tuple
from karmma.registries import FUSION, MISSING

Tokens = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


class KARMMA(nn.Module):
    encoders: nn.ModuleList  # of ModalityEncoder
    missing: MissingStrategy
    embed: ModalityEmbedding
    fusion: nn.Module
    head: MultiTaskHead
    addons: nn.ModuleDict  # of AddOn
    cfg: ModelConfig

    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        tasks: Mapping[str, int],
        cfg: ModelConfig,
        *,
        fusion: nn.Module | None = None,
        missing: MissingStrategy | None = None,
        encoders: Sequence[ModalityEncoder] | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        if not specs:
            raise DataError("KARMMA needs at least one modality spec")
        if not tasks:
            raise DataError("KARMMA needs at least one task (e.g. {'action': 27})")
        self.specs = list(specs)  # what the model takes (the stored tokens)
        self.tasks = dict(tasks)
        self.encoders = nn.ModuleList(encoders) if encoders is not None else build_encoders(self.specs, cfg)
        for enc in self.encoders:
            if not isinstance(enc, ModalityEncoder):
                raise ConfigError(f"encoder {enc!r} must subclass karmma.models.encoders.ModalityEncoder")
        self.missing = missing if missing is not None else MISSING.get(cfg.missing)()
        encoded = [e.out_spec() for e in self._encoders()]
        self.embed = ModalityEmbedding(encoded, cfg.dim, self.missing, in_specs=self.specs)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.fusion = fusion if fusion is not None else FUSION.get(cfg.fusion).from_config(cfg)
        self.head = MultiTaskHead(cfg.dim, cfg.head_hidden, self.tasks, 1 + len(self.specs))
        self.addons = build_addons(cfg.addons, self.specs, encoded, self.tasks)
        self.cfg = cfg.with_addons({n: a.options() for n, a in self.addon_list().items()})
        self.apply(_init_linear)

    @property
    def modality_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def encode(
        self, tokens: Tokens, present: torch.Tensor, augment: Any = None, token_masks: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Each modality's standardised tokens (absent ones as zeros) through its encoder; in
        training, ``augment`` (the engine's pipeline) turns raw and standardised tokens — and moves
        the per-token flags ``token_masks`` with them (a time warp; the list is updated in place)."""
        out = []
        for m, (x, enc) in enumerate(zip(self._as_list(tokens), self._encoders())):
            keep = present[:, m, None, None] if token_masks is None else token_masks[m][..., None]
            x = augment.raw(m, x) if augment is not None else x
            x = self.embed.standardize(m, x, keep, enc.standardize_inputs)
            if augment is not None and enc.token_augment:
                if token_masks is None:
                    x = torch.where(keep, augment.tokens(x), x)
                else:  # a failed stretch moves with its tokens
                    x, token_masks[m] = augment.tokens(x, token_masks[m])
            out.append(enc(x, present[:, m]) if enc.takes_presence else enc(x))
        return out

    def presence(self, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """A mask of either form -> (whole ``(B, M)``, per stored token ``[(B, N_m)]`` or None
        when no modality is present for part of a clip)."""
        return presence.normalize(mask, presence.counts_of(self.specs))

    def encoded_masks(self, token_masks: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The encoded tokens' presence, as each encoder maps its input tokens' (None stays None)."""
        if token_masks is None:
            return None
        return [enc.token_mask(mk) for enc, mk in zip(self._encoders(), token_masks)]

    def forward_features(self, tokens: Tokens, present: torch.Tensor) -> torch.Tensor:
        """Readers ``(B, 1 + M, dim)``: the [CLS] output and each modality's mean output token."""
        whole, masks = self.presence(present)
        return self.fuse(self.encode(tokens, whole, token_masks=masks), whole, self.encoded_masks(masks))

    def fuse(
        self, encoded: list[torch.Tensor], present: torch.Tensor, token_masks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The readers from the encoded tokens: embedding, [CLS] + fusion block, means (over the
        present tokens of a modality present for part of the clip)."""
        x = self.embed(encoded, present, token_masks)
        x = torch.cat([self.cls_token.expand(present.shape[0], -1, -1), x], dim=1)
        keys = self.missing.key_mask(present, self.embed.specs, token_masks) if token_masks is not None else (
            self.missing.key_mask(present, self.embed.specs))  # fmt: skip
        x = self.fusion(x, keys)
        readers, start = [x[:, 0]], 1
        for m, s in enumerate(self.embed.specs):
            slots = x[:, start : start + s.num_tokens]
            readers.append(presence.masked_mean(slots, None if token_masks is None else token_masks[m]))
            start += s.num_tokens
        return torch.stack(readers, dim=1)

    def forward_head(self, readers: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: logits}`` from the readers, averaged as the missing-modality strategy weighs them."""
        return self.head(readers, self.missing.reader_weights(present, self.cfg.head_average))

    def forward(self, tokens: Tokens, present: torch.Tensor, with_features: bool = False,
                with_unimodal: bool = False, *, augment: Any = None) -> Any:  # fmt: skip
        """A :class:`ModelOutput`: ``{task: logits}`` with ``.readers``, ``.encoded`` and the
        add-ons' ``.extras`` — one call, so that a DDP wrapper synchronises every gradient.
        ``present``: ``(B, M)``, or ``(B, ΣN_m)`` per stored token (:mod:`karmma.presence`)."""
        out = self.forward_presence(tokens, *self.presence(present), augment=augment)
        if with_features or with_unimodal:  # karmma 0.1's tuple, for one more release
            return legacy_tuple(self, out, with_features, with_unimodal)
        return out

    def forward_presence(self, tokens: Tokens, present: torch.Tensor, token_masks: list[torch.Tensor] | None,
                         augment: Any = None) -> ModelOutput:  # fmt: skip
        """The forward with the presence already split: whole ``(B, M)`` and per token (or None)."""
        encoded = self.encode(tokens, present, augment, token_masks)
        enc_masks = self.encoded_masks(token_masks)
        # in training, a swap pairs samples whose modality is whole (a partial one's slots follow its own mask)
        fused_in = augment.encoded(encoded, present, enc_masks) if augment is not None else encoded
        readers = self.fuse(fused_in, present, enc_masks)
        out = ModelOutput(self.forward_head(readers, present), readers, encoded, enc_masks)
        for addon in self.addon_list().values():
            out = addon(out, present)
        return out

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved state as this release loads it: each add-on maps what older releases wrote."""
        for name, addon in self.addon_list().items():
            state = addon.upgrade_state(state, f"addons.{name}.")
        return state

    def _encoders(self) -> list[ModalityEncoder]:
        return list(self.encoders)  # type: ignore[arg-type]  # checked in __init__

    def addon_list(self) -> dict[str, AddOn]:
        """The add-ons by name, in ``model.addons`` order."""
        return dict(self.addons.items())  # type: ignore[arg-type]

    def _as_list(self, tokens: Tokens) -> list[torch.Tensor]:
        if not isinstance(tokens, Mapping):
            return list(tokens)
        names = self.modality_names
        unknown = sorted(set(tokens) - set(names))
        if unknown:
            raise DataError(f"unknown modality {unknown}; this model knows {names}")
        missing = [n for n in names if n not in tokens]
        if missing:
            raise DataError(
                f"no tensor for modality {missing}: pass zeros of the right shape and mark it absent "
                "in the presence mask"
            )
        return [tokens[n] for n in names]


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

"""Per-modality encoders: the trainable module between what a store holds and the embedding.

``model.encoders`` maps a modality to a registered encoder (default ``identity``: today's token
features go straight to the embedding). An encoder takes the standardised stored tokens
(B, N, D) of one modality — zeros where the modality is absent; raw, unstandardised values when
it sets ``standardize_inputs = False`` — and returns (B, N', D'), which :meth:`out_spec`
declares so that the embedding is sized for it. A registered encoder is built
with ``from_config(spec, cfg)``; its ``__init__`` takes plain arguments. Two more opt-outs: an
encoder with ``token_augment = False`` gets its tokens without ``augment.time_warp`` and
``augment.input_noise`` (images, not sequences); one with ``takes_presence = True`` is called as
``encoder(x, present)`` with the modality's (B,) presence.

Presence per token (:mod:`karmma.presence`): an absent input token reaches the encoder as zeros,
and :meth:`ModalityEncoder.token_mask` says which output tokens are present — by default the
pooled-mask rule of :func:`karmma.presence.resample` when the token count changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from karmma.modalities import ModalitySpec, check_named_modalities
from karmma.presence import resample
from karmma.registries import ENCODERS


class ModalityEncoder(nn.Module):
    """Base of the registered encoders: ``self.spec`` is what it outputs; the class attributes
    declare what it takes (the model reads them, never probes)."""

    spec: ModalitySpec
    standardize_inputs: bool = True  # False: raw stored values (e.g. pixels in [0, 1])
    token_augment: bool = True  # False: no time warp / input noise (images, not sequences)
    takes_presence: bool = False  # True: called as encoder(x, present) with the (B,) presence

    @classmethod
    def from_config(cls, spec: ModalitySpec, cfg) -> ModalityEncoder:
        return cls(spec)

    def out_spec(self) -> ModalitySpec:
        return self.spec

    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The output tokens' presence ``(B, N')`` from the input tokens' ``(B, N)``."""
        return resample(mask, self.out_spec().num_tokens)


@ENCODERS.register("identity")
class IdentityEncoder(ModalityEncoder):
    """The stored tokens as they are (no parameters)."""

    def __init__(self, spec: ModalitySpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@ENCODERS.register("temporal_conv")
class TemporalConvEncoder(ModalityEncoder):
    """A trainable temporal encoder over frame/signal tokens: ``layers`` residual 1-D conv blocks
    (kernel 3, over the token axis) at width ``width``, then average-pooled to ``out_tokens``
    tokens (0: keep the number of tokens) — e.g. 32 raw inertial steps -> 8 fusion tokens."""

    def __init__(
        self, spec: ModalitySpec, width: int, layers: int = 2, dropout: float = 0.0, out_tokens: int = 0
    ) -> None:
        super().__init__()
        self.out_tokens = out_tokens if 0 < out_tokens < spec.num_tokens else 0
        self.spec = ModalitySpec(spec.name, self.out_tokens or spec.num_tokens, width)
        self.inp = nn.Linear(spec.dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), _Conv1d(width), nn.GELU(), nn.Dropout(dropout)) for _ in range(layers)
        )

    @classmethod
    def from_config(cls, spec: ModalitySpec, cfg) -> TemporalConvEncoder:
        return cls(
            spec,
            width=cfg.encoder_width or cfg.dim,
            layers=cfg.encoder_layers,
            dropout=cfg.dropout,
            out_tokens=cfg.encoder_tokens,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        if self.out_tokens:
            h = F.adaptive_avg_pool1d(h.transpose(1, 2), self.out_tokens).transpose(1, 2)
        return h


class _Conv1d(nn.Module):
    """Conv1d over the token axis of (B, N, C) tensors."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def build_encoders(specs: list[ModalitySpec], cfg) -> nn.ModuleList:
    """One encoder per modality, as ``model.encoders`` names them: by modality name, else the
    ``"*"`` entry (every other modality, e.g. ``{"*": temporal_conv}`` in a preset for any data),
    else ``identity``."""
    names: dict[str, str] = dict(cfg.encoders)
    other = names.pop("*", "identity")
    check_named_modalities(names, specs, "model.encoders")
    return nn.ModuleList(ENCODERS.get(names.get(s.name, other)).from_config(s, cfg) for s in specs)


@ENCODERS.register("efficientnet_lite0")
class FineTunedBackbone(ModalityEncoder):
    """The student's image backbone trained end to end: each stored token is one raw RGB image
    (3 x S x S values in [0, 1], flattened), run through ImageNet-initialised EfficientNet-Lite0
    whose weights are all trained -> (N, 1280). For GPU hosts; tested on tiny images."""

    standardize_inputs = False  # pixels in [0, 1], as the ImageNet weights expect

    def __init__(self, spec: ModalitySpec, variant: str = "lite0") -> None:
        super().__init__()
        from karmma.errors import ConfigError
        from karmma.extractors.efficientnet_lite import EfficientNetLite, load_pretrained

        side = int(round((spec.dim / 3) ** 0.5))
        if 3 * side * side != spec.dim:
            raise ConfigError(
                f"modality {spec.name!r}: tokens of {spec.dim} values are not 3 x S x S images; the "
                "efficientnet_lite0 encoder takes raw frames stored flattened"
            )
        self.side = side
        self.backbone = load_pretrained(variant).train()
        self.backbone._fc = nn.Identity()  # type: ignore[assignment]  # the classifier is not used: features only
        self.spec = ModalitySpec(spec.name, spec.num_tokens, EfficientNetLite.FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        images = x.reshape(b * n, 3, self.side, self.side)
        return self.backbone.forward_features(images).reshape(b, n, -1)

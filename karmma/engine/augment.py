"""Train-time augmentation (the ``augment`` config section; all off by default): a pipeline the
training engine builds (:func:`build_augmentation`) and passes to the model's forward in
training steps only. It is never part of a model: nothing of it is saved, exported or built by
``load_model``.

Of a modality's standardised input tokens (``TokenAugment``):

* ``time_warp`` w: each sample's tokens are resampled at a random speed in [1 - w, 1 + w] with a
  random shift of up to w x N / 2 tokens (linear interpolation, edges clamped) — the usual
  temporal augmentation of skeleton and inertial recognisers;
* ``noise`` s: additive Gaussian noise of standard deviation s (the inputs are standardised).

Of raw 3-vectors, before standardising: ``VectorRotate`` (``augment.rotate``). Of the encoders'
outputs, before the fusion: ``ModalitySwap`` (``augment.swap``).

Active only in training mode; the draws come from torch's global generator, which the training
loop seeds per step, so runs stay reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from karmma.config import AugmentConfig
from karmma.errors import DataError
from karmma.modalities import ModalitySpec, check_named_modalities


class TokenAugment(nn.Module):
    def __init__(self, time_warp: float = 0.0, noise: float = 0.0) -> None:
        super().__init__()
        self.time_warp, self.noise = time_warp, noise

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        """``x`` turned; with ``mask`` (B, N) — which tokens hold data — ``(x, mask)``, the mask moved
        by the same warp: a warped token holds data when every token it mixes does, and the
        others are zeros (a partial modality's failed stretch moves with its tokens)."""
        if not self.training or x.shape[0] == 0:
            return x if mask is None else (x, mask)
        if self.time_warp > 0 and x.shape[1] > 1:
            b, n, _ = x.shape
            w = self.time_warp
            speed = 1.0 + w * (2.0 * torch.rand(b, 1, device=x.device) - 1.0)
            shift = w * n * (torch.rand(b, 1, device=x.device) - 0.5)
            centre = (n - 1) / 2.0
            pos = ((torch.arange(n, device=x.device) - centre) * speed + centre + shift).clamp(0, n - 1)
            lo = pos.floor().long().clamp(max=n - 2)
            frac = (pos - lo).unsqueeze(-1)
            take = lambda idx: x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # noqa: E731
            x = take(lo) * (1 - frac) + take(lo + 1) * frac
            if mask is not None:
                f = frac[..., 0]
                mask = (mask.gather(1, lo) | (f >= 1)) & (mask.gather(1, lo + 1) | (f <= 0))
        if self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        if mask is None:
            return x
        return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)), mask


class VectorRotate(nn.Module):
    """Train-time random rotation of raw values read as consecutive 3-vectors — a skeleton's joints
    (positions and velocities), an inertial sensor's accelerometer and gyroscope axes: one rotation
    per sample, the product of rotations about x, y and z by angles uniform in +-``angles``."""

    def __init__(self, angles: list[float]) -> None:
        super().__init__()
        self.angles = [float(a) for a in angles]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] == 0 or not any(self.angles):
            return x
        b, n, d = x.shape
        rot = torch.eye(3, dtype=x.dtype, device=x.device).expand(b, 3, 3)
        for axis, limit in enumerate(self.angles):
            if limit:
                theta = limit * (2.0 * torch.rand(b, device=x.device, dtype=x.dtype) - 1.0)
                rot = rot @ _about(axis, theta)
        return torch.einsum("bij,bnkj->bnki", rot, x.reshape(b, n, d // 3, 3)).reshape(b, n, d)


def _about(axis: int, theta: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations about coordinate ``axis`` by ``theta``: in the plane of the other two
    coordinates, turning the lower-numbered one towards the higher (the angles are symmetric)."""
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.eye(3, dtype=theta.dtype, device=theta.device).repeat(len(theta), 1, 1)
    m[:, i, i], m[:, j, j], m[:, i, j], m[:, j, i] = c, c, -s, s
    return m


class ModalitySwap(nn.Module):
    """Train-time modality swap (``augment.swap``, beyond the paper): with probability ``rates[m]`` a
    sample's encoded tokens of modality ``m`` are replaced by those of another sample of the batch,
    its label kept — so the fusion block meets a present modality that points to the wrong class,
    as a weak sensor does on unseen subjects, and learns to cross-check it against the others.
    Only where both samples have the modality and the sample has at least ``min_present``
    modalities present (2: a sample's only modality is never swapped; 3: neither is either of a
    pair); one random pairing (a permutation) per modality."""

    def __init__(self, rates: list[float], min_present: int = 2) -> None:
        super().__init__()
        self.rates = [float(q) for q in rates]
        self.min_present = min_present

    def forward(self, encoded: list[torch.Tensor], present: torch.Tensor,
                token_masks: list[torch.Tensor] | None = None) -> list[torch.Tensor]:  # fmt: skip
        b = present.shape[0]
        if not self.training or b < 2 or not any(self.rates):
            return encoded
        present = present.bool()
        others = present.sum(1) >= self.min_present
        if token_masks is not None:  # only a modality present for the whole clip is swapped
            present = present & torch.stack([mk.all(1) for mk in token_masks], 1)
        out = list(encoded)
        for m, q in enumerate(self.rates):
            if q > 0:
                perm = torch.randperm(b, device=present.device)
                take = (torch.rand(b, device=present.device) < q) & others & present[:, m] & present[perm, m]
                out[m] = torch.where(take[:, None, None], encoded[m][perm], encoded[m])
        return out


class Augmentation:
    """The pipeline a training step hands to ``model(tokens, present, augment=...)``: ``raw(m, x)``
    before standardising (rotation), ``tokens(x)`` of the standardised tokens (time warp, noise),
    ``encoded(encoded, present)`` of the encoders' outputs (swap). Always active: the engine passes
    it only to training forwards."""

    def __init__(self, specs: Sequence[ModalitySpec], cfg: AugmentConfig) -> None:
        self.token = TokenAugment(cfg.time_warp, cfg.input_noise)
        self.rotate = _rotations(specs, cfg.rotate)
        self.swap = ModalitySwap(_per_modality(specs, cfg.swap, "augment.swap"), cfg.swap_min_present)
        self.names = [s.name for s in specs]

    def raw(self, m: int, x: torch.Tensor) -> torch.Tensor:
        rotate = self.rotate.get(self.names[m])
        return rotate(x) if rotate is not None else x

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        """The standardised tokens turned (and, given, their per-token ``mask`` moved with them)."""
        return self.token(x, mask)

    def encoded(self, encoded: list[torch.Tensor], present: torch.Tensor,
                token_masks: list[torch.Tensor] | None = None) -> list[torch.Tensor]:  # fmt: skip
        return self.swap(encoded, present, token_masks)

    @property
    def active(self) -> bool:
        return bool(self.token.time_warp or self.token.noise or self.rotate or any(self.swap.rates))


def build_augmentation(specs: Sequence[ModalitySpec], cfg: AugmentConfig) -> Augmentation | None:
    """The training pipeline of ``cfg`` for a model of ``specs`` (None when everything is off)."""
    aug = Augmentation(specs, cfg)
    return aug if aug.active else None


def _rotations(specs: Sequence[ModalitySpec], rotate: Mapping[str, list[float]]) -> dict[str, VectorRotate]:
    check_named_modalities(rotate, specs, "augment.rotate")
    dims = {s.name: s.dim for s in specs}
    for name in rotate:
        if dims[name] % 3:
            raise DataError(
                f"augment.rotate.{name}: its tokens have {dims[name]} values, not a whole number of 3-vectors; "
                "rotate only modalities stored as (x, y, z) triples"
            )
    return {name: VectorRotate(angles).train() for name, angles in rotate.items()}


def _per_modality(specs: Sequence[ModalitySpec], values: Mapping[str, float], key: str) -> list[float]:
    """``values`` by modality, in the model's modality order (0 where not named)."""
    check_named_modalities(values, specs, key)
    return [float(values.get(s.name, 0.0)) for s in specs]

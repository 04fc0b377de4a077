"""Train-time augmentation of a modality's standardised input tokens (off by default).

* ``time_warp`` w: each sample's tokens are resampled at a random speed in [1 - w, 1 + w] with a
  random shift of up to w x N / 2 tokens (linear interpolation, edges clamped) — the usual
  temporal augmentation of skeleton and inertial recognisers;
* ``noise`` s: additive Gaussian noise of standard deviation s (the inputs are standardised).

Active only in training mode; the draws come from torch's global generator, which the training
loop seeds per step, so runs stay reproducible and resumable.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenAugment(nn.Module):
    def __init__(self, time_warp: float = 0.0, noise: float = 0.0) -> None:
        super().__init__()
        self.time_warp, self.noise = time_warp, noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] == 0:
            return x
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
        if self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        return x

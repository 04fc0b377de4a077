"""Depth motion maps (DMM) of a depth clip, for a trainable image encoder in the model.

A depth clip is projected onto three views — front (the depth image), side (height x depth) and
top (depth x width), the side and top views as foreground occupancy — and each view's motion map
is the sum of its absolute frame-to-frame differences over a stretch of the clip (Yang, Zhang and
Tian, "Recognizing actions using depth motion maps-based histograms of oriented gradients",
ACM MM 2012; Chen et al. use them on UTD-MHAD). Per view the stretches are the whole clip and its
two halves (the order of the motion), each map cropped to its moving region, padded to a square,
scaled to [0, 1] and resized to ``size`` px.

Output: (3 views, 3 stretches x size x size) float32 — one token per view holding a 3-channel
image, flattened; ``karmma.models.motion_maps.MotionMapCNN`` reads it. Parameter-free: its cost is
a few operations per pixel, nothing next to a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

VIEWS = ("front", "side", "top")
STRETCHES = ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0))  # whole clip, first half, second half


@dataclass(frozen=True)
class DepthMotionMaps:
    size: int = 32  # paper-unknown default (beyond the paper): side of each motion-map image
    # Depth range binned into the side and top views, in the reader's depth units (UTD-MHAD: mm /
    # 4000, so 0.375-0.875 is 1.5-3.5 m, where its subjects stand), and the number of bins.
    z_range: tuple[float, float] = (0.375, 0.875)
    z_bins: int = 160
    foreground: float = 0.0  # depth above this is a measured pixel (0 is "no reading")
    whole_clip_tokens = True  # each token is a view of the whole clip, not a time span (karmma.bursts)

    @property
    def num_tokens(self) -> int:
        return len(VIEWS)

    @property
    def dim(self) -> int:
        return len(STRETCHES) * self.size * self.size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        f = np.asarray(frames, np.float32)
        if f.ndim == 4:
            f = f[..., 0]
        if f.ndim != 3 or len(f) < 2:
            raise ValueError(f"depth motion maps need (T >= 2, H, W) depth frames, got shape {f.shape}")
        views = self._views(f)
        t = len(f)
        images = []
        for view in views:
            maps = []
            for a, b in STRETCHES:
                lo = min(int(a * (t - 1)), t - 2)
                hi = max(int(b * (t - 1)), lo + 1)
                motion = np.abs(np.diff(view[lo : hi + 1], axis=0)).sum(0)
                maps.append(cv2.resize(_crop_square(motion), (self.size, self.size), interpolation=cv2.INTER_AREA))
            images.append(np.stack(maps).ravel())
        return np.stack(images).astype(np.float32)

    def _views(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Front (T, H, W) depth; side (T, H, bins) and top (T, bins, W) foreground occupancy."""
        t, h, w = f.shape
        lo, hi = self.z_range
        z = np.clip(((f - lo) / (hi - lo) * self.z_bins).astype(np.int64), 0, self.z_bins - 1)
        side = np.zeros((t, h, self.z_bins), np.float32)
        top = np.zeros((t, self.z_bins, w), np.float32)
        ti, ri, ci = np.nonzero(f > self.foreground)
        zi = z[ti, ri, ci]
        side[ti, ri, zi] = 1.0
        top[ti, zi, ci] = 1.0
        return f, side, top


def _crop_square(img: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """``img`` scaled to [0, 1], cropped to where it exceeds ``threshold`` and zero-padded to a
    square around that region (all zeros where nothing moved)."""
    peak = float(img.max())
    if peak <= 0:
        return np.zeros((8, 8), np.float32)
    img = img / peak
    ys, xs = np.nonzero(img > threshold)
    img = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = img.shape
    s = max(h, w)
    out = np.zeros((s, s), np.float32)
    out[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = img
    return out

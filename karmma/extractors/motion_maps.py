"""Depth motion maps (DMM) of a depth clip, for a trainable image encoder in the model.

A depth clip is projected onto three views — front (the depth image), side (height x depth) and
top (depth x width), the side and top views as foreground occupancy — and each view's motion map
is the sum of its absolute frame-to-frame differences over a stretch of the clip (Yang, Zhang and
Tian, "Recognizing actions using depth motion maps-based histograms of oriented gradients",
ACM MM 2012; Chen et al. use them on UTD-MHAD). Per view the stretches are the whole clip and its
two halves (the order of the motion), each map cropped to its moving region, padded to a square,
scaled to [0, 1] and resized to ``size`` px.

**Failed frames** (``valid``, :mod:`karmma.data.media.failures`): a frame-to-frame difference
counts only when both of its frames are valid, so the maps hold the motion of the working
stretches, never the jump to or from a black frame (the clip's halves stay the halves of its
time). :meth:`DepthMotionMaps.under_failures` computes many draws of failures at once, both as a
per-token system sees them (this rule) and as a naive one does (failed frames fed as black frames).

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

    def __call__(self, frames: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        f = _frames(frames)
        pairs = None if valid is None or np.all(valid) else _pair_weights(np.asarray(valid, bool)[None])[0]
        views = self._views(f)
        images = []
        for view in views:
            maps = []
            for lo, hi in _stretches(len(f)):
                diff = np.abs(np.diff(view[lo : hi + 1], axis=0))
                motion = diff.sum(0) if pairs is None else np.tensordot(pairs[lo:hi], diff, 1)
                maps.append(self._image(motion))
            images.append(np.stack(maps).ravel())
        return np.stack(images).astype(np.float32)

    def under_failures(self, frames: np.ndarray, failed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``K`` draws of failed frames ``failed`` (K, T) bool: the maps ``(K, 3, dim)``
        over the working frames only (as :meth:`__call__` with ``valid=~failed``), and the maps with
        the failed frames fed as black frames (what a system unaware of the failure computes)."""
        f = _frames(frames)
        works = ~np.asarray(failed, bool)
        both = _pair_weights(works)  # (K, T - 1): both frames of the pair work
        # a pair with one failed (black) frame differs by the working frame itself
        first, second = works[:, :-1] & ~works[:, 1:], ~works[:, :-1] & works[:, 1:]
        k = len(works)
        working, as_data = np.empty((k, 3, self.dim), np.float32), np.empty((k, 3, self.dim), np.float32)
        for v, view in enumerate(self._views(f)):
            flat = view.reshape(len(f), -1)
            diff, mag = np.abs(np.diff(flat, axis=0)), np.abs(flat)
            for s, (lo, hi) in enumerate(_stretches(len(f))):
                span = slice(lo, hi)
                kept = both[:, span] @ diff[span]
                onto = np.zeros((k, len(f)), np.float32)
                onto[:, lo:hi] += first[:, span]
                onto[:, lo + 1 : hi + 1] += second[:, span]
                black = kept + onto @ mag
                for j in range(k):
                    cells = slice(s * self.size**2, (s + 1) * self.size**2)
                    working[j, v, cells] = self._image(kept[j].reshape(view.shape[1:])).ravel()
                    as_data[j, v, cells] = self._image(black[j].reshape(view.shape[1:])).ravel()
        return working, as_data

    def _image(self, motion: np.ndarray) -> np.ndarray:
        return cv2.resize(_crop_square(motion), (self.size, self.size), interpolation=cv2.INTER_AREA)

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


def _frames(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames, np.float32)
    if f.ndim == 4:
        f = f[..., 0]
    if f.ndim != 3 or len(f) < 2:
        raise ValueError(f"depth motion maps need (T >= 2, H, W) depth frames, got shape {f.shape}")
    return f


def _stretches(t: int) -> list[tuple[int, int]]:
    """The frame ranges ``[lo, hi]`` of :data:`STRETCHES` in a clip of ``t`` frames."""
    out = []
    for a, b in STRETCHES:
        lo = min(int(a * (t - 1)), t - 2)
        out.append((lo, max(int(b * (t - 1)), lo + 1)))
    return out


def _pair_weights(works: np.ndarray) -> np.ndarray:
    """``(K, T - 1)`` float32: 1 where both frames of a consecutive pair work (``works`` (K, T))."""
    return (works[:, :-1] & works[:, 1:]).astype(np.float32)


def _crop_square(img: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """``img`` scaled to [0, 1], cropped to where it exceeds ``threshold`` and zero-padded to a
    square around that region (all zeros where nothing moved)."""
    peak = float(img.max())
    if peak <= 0:
        return np.zeros((8, 8), np.float32)
    img = img / peak
    above = img > threshold
    ys, xs = np.flatnonzero(above.any(1)), np.flatnonzero(above.any(0))
    img = img[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    h, w = img.shape
    s = max(h, w)
    out = np.zeros((s, s), np.float32)
    out[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = img
    return out

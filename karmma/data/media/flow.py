"""Optical flow with OpenCV (Farneback or DIS), on grey frames."""

from __future__ import annotations

import cv2
import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Scale a (T, H, W) clip of any dtype to uint8 with the clip's own range."""
    f = frames.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    return np.zeros(f.shape, np.uint8) if hi <= lo else ((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def optical_flow(frames: np.ndarray, method: str = "farneback") -> np.ndarray:
    """Dense flow between consecutive frames: (T, H, W) uint8 -> (T-1, H, W, 2) float32 (pixels)."""
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"optical_flow needs (T, H, W) uint8 frames, got {frames.shape} {frames.dtype}")
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        calc = lambda a, b: dis.calc(a, b, None)  # noqa: E731
    elif method == "farneback":
        calc = lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 2, 5, 1.1, 0)  # noqa: E731
    else:
        raise ValueError(f"unknown flow method {method!r}; use farneback or dis")
    out = np.empty((max(0, len(frames) - 1), *frames.shape[1:], 2), np.float32)
    for t in range(len(frames) - 1):
        out[t] = calc(frames[t], frames[t + 1])
    return out


def flow_with_magnitude(frames: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(T, H, W) uint8 -> (T-1, H, W, 3): Farneback flow divided by ``scale``, and its magnitude."""
    flow = optical_flow(frames) / scale
    return np.concatenate([flow, np.linalg.norm(flow, axis=-1, keepdims=True)], axis=-1)


def flow_from_rgb(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T-1, H, W, 3): Farneback flow between consecutive grey frames, and
    its magnitude (the flow modality of decoded videos)."""
    return flow_with_magnitude(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))

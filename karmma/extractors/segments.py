"""Temporal segments: how a clip's time steps are split among its tokens (every encoder and the
presence of each token use the same split)."""

from __future__ import annotations

import numpy as np


def segment_bounds(t: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous, non-empty [start, stop) segments covering ``t`` steps (reused if t < n)."""
    edges = np.linspace(0, t, n + 1)
    out = []
    for i in range(n):
        a = min(int(edges[i]), t - 1)
        out.append((a, max(a + 1, int(edges[i + 1]))))
    return out

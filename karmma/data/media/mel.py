"""HTK-mel filters (librosa's ``filters.mel(htk=True, norm=None)``, as auditory-slow-fast uses)."""

from __future__ import annotations

import functools

import numpy as np


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=4)
def mel_filterbank(rate: int, n_fft: int, bands: int) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular HTK-mel filters, unnormalised (librosa's
    ``filters.mel(htk=True, norm=None)``, as auditory-slow-fast uses)."""
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), bands + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)

"""The sample order of a training epoch.

In memory any permutation is as cheap as another; from disk it is not: a feature store is
compressed in chunks of samples (:mod:`karmma.data.store_writer`), and a batch of rows drawn
uniformly from the whole file decompresses one whole chunk per row. Chunk-aware shuffling (as in
streaming loaders' shuffle buffers) permutes the chunks, then the samples within each window of
``window`` consecutive chunks of that permutation: a batch reads a few chunks that the reading
handle's chunk cache (:data:`karmma.data.store.CACHE_CHUNKS`) keeps decompressed for the window.
Every sample is still seen exactly once per epoch, in an order set by the seed.

A data set that fits in one window (the demo's stores) gets a plain uniform permutation, the
same as before chunk-aware shuffling existed; ``data.shuffle_chunks: 0`` asks for it whatever the
size. The UTD-MHAD presets do: their stores are held in memory, and their wide depth tokens make
~1 MiB chunks of 12 samples, so the 323 training clips would span two windows.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_order(n: int, generator: torch.Generator, chunk_rows: int | None = None, window: int = 16) -> np.ndarray:
    """A permutation of ``range(n)``: uniform, or chunk-aware (``window`` chunks of ``chunk_rows``
    samples at a time) when the samples come in storage chunks and span more than one window."""
    if not chunk_rows or window <= 0 or n <= chunk_rows * window:
        return torch.randperm(n, generator=generator).numpy()
    num_chunks = -(-n // chunk_rows)
    chunks = torch.randperm(num_chunks, generator=generator).numpy()
    parts = []
    for start in range(0, num_chunks, window):
        rows = np.concatenate(
            [np.arange(c * chunk_rows, min(n, (c + 1) * chunk_rows)) for c in chunks[start : start + window]]
        )
        parts.append(rows[torch.randperm(len(rows), generator=generator).numpy()])
    return np.concatenate(parts)

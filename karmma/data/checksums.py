"""Per-row checksums of a feature store: what proves a row marked done holds what was written.

The store writer records, for every present row of every feature set, the CRC-32 of its stored
bytes (``checksums/<set>``, ``(N, M)`` uint32) in the same chunk write that marks the row done.
Before training or evaluation :func:`unwritten_rows` finds the rows whose features never reached
the disk (a full disk, a killed process, with the karmma of before: HDF5 then reads zeros), which
are refused by name. A stored row can genuinely be all zeros (a black clip, a still camera's flow,
a zero signal), so an all-zero row passes when its checksum vouches for it; stores written before
checksums existed have none (:data:`NO_RECORD`), so there every present all-zero row is refused.
Features built in memory (no store) are not checked: nothing was lost on their way.
"""

from __future__ import annotations

import zlib

import numpy as np


def row_checksums(x: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (``x``: ``(n, ...)`` in the stored dtype), as ``(n,)`` uint32."""
    x = np.ascontiguousarray(x)
    flat = x.reshape(len(x), int(np.prod(x.shape[1:], dtype=np.int64)))
    return np.fromiter((zlib.crc32(row) for row in flat), dtype=np.uint32, count=len(flat))


def zero_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` that are exactly all zeros."""
    x = np.asarray(x)
    return ~x.reshape(len(x), int(np.prod(x.shape[1:], dtype=np.int64))).any(1)


NO_RECORD = 0  # the checksum :func:`karmma.data.store.open_store` gives every row of a store without checksums


def unwritten_rows(x: np.ndarray, checksums: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (present rows, stored dtype) that were never written: all zeros (what HDF5
    reads where nothing was written) and not vouched for by their checksum (a genuine zero row's
    matches; :data:`NO_RECORD`, an older store's, matches no row of zeros)."""
    zero = zero_rows(x)
    if not zero.any():
        return zero
    return zero & (row_checksums(x) != np.asarray(checksums, dtype=np.uint32))

"""The feature store's format name and version (HDF5 attributes ``format`` and ``version``), its
feature dtypes and its storage chunks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from karmma.modalities import ModalitySpec

FORMAT = "karmma-feature-store"
VERSION = 1

DTYPES = ("float32", "float16")
CHUNK_BYTES = 1 << 20  # HDF5's advice: ~1 MiB chunks (and its default chunk cache is 1 MiB)
MAX_CHUNK_ROWS = 64


def chunk_rows(feature_sets: Mapping[str, Sequence[ModalitySpec]], n: int, itemsize: int) -> int:
    """Samples per storage chunk, the same for every modality: about 1 MiB for the widest one."""
    widest = max((s.num_tokens * s.dim * itemsize for specs in feature_sets.values() for s in specs), default=1)
    return max(1, min(n, MAX_CHUNK_ROWS, CHUNK_BYTES // max(widest, 1)))

"""The values a feature store accepts at write time: finite, within ±MAX_ABS_FEATURE (no extractor
produces more; a corrupt file does), and within float16's range in a float16 store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from karmma.data.dataset import MAX_ABS_FEATURE, row_extremes
from karmma.errors import DataError

FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_values(x: np.ndarray, path: Path, feature_set: str, name: str, rows: Sequence[int], dtype) -> None:
    """Refuse NaN/Inf and absurd magnitudes at write time (``x``: (n, tokens, dim) of ``rows``)."""
    if not len(x):
        return
    nonfinite, largest = row_extremes(x)  # one pass serves both checks below
    bad = nonfinite | (largest > MAX_ABS_FEATURE)
    if bad.any():
        raise DataError(
            f"{path}: modality {name!r} ({feature_set}) of sample(s) {[int(r) for r in np.asarray(rows)[bad][:5]]} "
            f"holds NaN/Inf or values beyond ±{MAX_ABS_FEATURE:g}; fix the extractor's output or write the "
            "modality as absent"
        )
    if np.dtype(dtype) == np.float16:
        over = largest > FLOAT16_MAX
        if over.any():
            which = [int(r) for r in np.asarray(rows)[over][:5]]
            raise DataError(
                f"{path}: modality {name!r} ({feature_set}) of sample(s) {which} "
                f"holds values beyond float16's ±{FLOAT16_MAX:g}; store float32 features (--dtype float32) "
                "or scale the extractor's output"
            )

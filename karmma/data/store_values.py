"""The feature values karmma accepts, at write time (the store writer) and before training or
evaluation (:func:`karmma.data.dataset.validate_features`): finite, within ±MAX_ABS_FEATURE (no
extractor produces more; a corrupt file does), and within float16's range in a float16 store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from karmma.errors import DataError

FLOAT16_MAX = float(np.finfo(np.float16).max)
# Features beyond this magnitude are refused: no extractor produces them, a corrupt file does
# (and input standardisation would then flatten the modality for every sample).
MAX_ABS_FEATURE = 1e6


def row_extremes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``x`` (n, ...): (holds NaN/Inf, largest finite magnitude as float64)."""
    flat = np.asarray(x).reshape(len(x), -1)
    finite = np.isfinite(flat)
    largest = np.abs(np.where(finite, flat, 0.0)).max(1, initial=0.0).astype(np.float64)  # float16: no overflow
    return ~finite.all(1), largest


def invalid_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``x`` (n, ...): (holds NaN/Inf, holds a value beyond ±MAX_ABS_FEATURE) — the one
    value check, used at write time by the store writer and before training/evaluation."""
    nonfinite, largest = row_extremes(x)
    return nonfinite, largest > MAX_ABS_FEATURE


def check_values(x: np.ndarray, path: Path, feature_set: str, name: str, rows: Sequence, dtype) -> None:
    """Refuse NaN/Inf and absurd magnitudes at write time (``x``: (n, tokens, dim) of ``rows``, the
    samples' ids — or indices — named in the error)."""
    if not len(x):
        return
    nonfinite, largest = row_extremes(x)  # one pass serves both checks below
    bad = nonfinite | (largest > MAX_ABS_FEATURE)
    if bad.any():
        raise DataError(
            f"{path}: modality {name!r} ({feature_set}) of sample(s) {_named(rows, bad)} "
            f"holds NaN/Inf or values beyond ±{MAX_ABS_FEATURE:g}; fix the extractor's output or write the "
            "modality as absent"
        )
    if np.dtype(dtype) == np.float16:
        over = largest > FLOAT16_MAX
        if over.any():
            which = _named(rows, over)
            raise DataError(
                f"{path}: modality {name!r} ({feature_set}) of sample(s) {which} "
                f"holds values beyond float16's ±{FLOAT16_MAX:g}; store float32 features (--dtype float32) "
                "or scale the extractor's output"
            )


def _named(rows: Sequence, bad: np.ndarray) -> list:
    """The first few of ``rows`` (sample ids or indices) where ``bad``."""
    return [r.item() if isinstance(r, np.generic) else r for r in (rows[int(k)] for k in np.flatnonzero(bad)[:5])]

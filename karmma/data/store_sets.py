"""Feature sets held in memory, written to one feature store at once (:func:`write_store`, shown
as ``karmma.data.store.write_store``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from karmma.data.store_writer import FeatureStoreWriter

if TYPE_CHECKING:
    from karmma.data.dataset import FeatureSet


def write_store(path: str | Path, sets: Mapping[str, FeatureSet], dtype: str | None = None,
                extra: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Write feature sets of the same samples (e.g. ``{"teacher": a, "student": b}``) to one store,
    in ``dtype`` (default: float16 if the sets hold float16, else float32); ``extra``: the store's
    provenance (its reader, split, extractor family: ``store_info(...)["extra"]``).

    All or nothing: the store is written under a temporary name and renamed when complete, so a
    refused write (bad values, no samples) leaves no file and never replaces an existing store.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.writing")
    first = next(iter(sets.values()))
    if dtype is None:
        held = {getattr(a, "dtype", np.float32) for v in sets.values() for a in v.features.values()}
        dtype = "float16" if held == {np.dtype(np.float16)} else "float32"
    try:
        with FeatureStoreWriter(
            tmp,
            ids=first.ids,
            labels=first.labels,
            tasks=first.tasks,
            feature_sets={k: v.specs for k, v in sets.items()},
            class_names=first.class_names,
            extra={**(extra or {}), "clip_tokens": list(first.clip_tokens)},
            resume=False,
            dtype=dtype,
        ) as w:
            rows = np.arange(len(first))
            w.write_all({k: {s.name: v._read(s.name, rows, keep_dtype=True) for s in v.specs} for k, v in sets.items()},
                        first.present, {k: v.token_present for k, v in sets.items()}, first.durations)  # fmt: skip
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

"""Data: feature sets with explicit presence masks, the HDF5 feature store, dataset readers.

``Batch``, ``FeatureSet`` and ``PairedFeatureSet`` are imported (with torch and h5py) when first
used, so that a deployment importing :mod:`karmma.data.raw` or the media decoders stays light."""

from __future__ import annotations

from typing import Any

__all__ = ["Batch", "FeatureSet", "PairedFeatureSet"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from karmma.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

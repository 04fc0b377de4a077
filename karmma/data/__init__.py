"""Data: feature sets with explicit presence masks, the HDF5 feature store, dataset readers."""

from karmma.data.dataset import Batch, FeatureSet, PairedFeatureSet

__all__ = ["Batch", "FeatureSet", "PairedFeatureSet"]

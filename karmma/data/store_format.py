"""The feature store's format name and version (HDF5 attributes ``format`` and ``version``)."""

FORMAT = "karmma-feature-store"
VERSION = 1

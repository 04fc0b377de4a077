"""The feature store: one HDF5 file per split, holding per-sample, per-modality token features
for one or more feature sets (e.g. the teacher's and the student's extractors), with genuinely
absent modalities recorded in a presence mask.

Layout (``format = karmma-feature-store``, ``version = 1``)::

    attrs["meta"]             JSON: modalities, feature_sets -> specs, tasks, class_names, extra
    ids        (N,)           sample ids (utf-8)
    present    (N, M) bool    modality present in the raw data
    done       (N,) bool      sample written (extraction resumes from here)
    labels/<task> (N,) int64
    features/<set>/<modality> (N, num_tokens, dim) float32 or float16, chunked by samples (~1 MiB)

Reading is lazy (h5py datasets, each with a chunk cache that holds a shuffle window: see
:func:`karmma.data.order.epoch_order`) or in memory (``in_memory=True``, the default for small
files), where the features keep their stored dtype: a float16 store costs its size, not double.
Writing: :mod:`karmma.data.store_writer`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from karmma.data.dataset import FeatureSet, RowView
from karmma.data.store_writer import FORMAT, VERSION, FeatureStoreWriter, write_store
from karmma.errors import DataError
from karmma.modalities import ModalitySpec

log = logging.getLogger(__name__)

__all__ = ["FeatureStoreWriter", "LazyH5", "open_store", "store_info", "write_store"]

_IN_MEMORY_LIMIT = 2 * 1024**3
CACHE_CHUNKS = 24  # chunks each lazily read dataset keeps decompressed: above data.shuffle_chunks


def store_info(path: str | Path) -> dict:
    """The store's metadata (modalities, feature sets, tasks, class names, sample count)."""
    with _open(Path(path)) as h5:
        meta = _meta(h5, Path(path))
        meta["num_samples"] = int(h5["ids"].shape[0])
        meta["num_done"] = int(h5["done"][:].sum())
        return meta


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"feature store {path} does not exist; create it with `karmma extract` first")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 feature store ({e}); the file is corrupt — re-extract it") from e


def _meta(h5: h5py.File, path: Path) -> dict:
    if h5.attrs.get("format") != FORMAT:
        raise DataError(f"{path}: not a karmma feature store (no format={FORMAT!r} attribute)")
    if int(h5.attrs.get("version", -1)) > VERSION:
        raise DataError(
            f"{path}: store version {h5.attrs['version']} is newer than this karmma supports; upgrade karmma"
        )
    try:
        return json.loads(h5.attrs["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: store metadata is missing or corrupt ({e}); re-extract it") from e


def open_store(path: str | Path, feature_set: str = "teacher", in_memory: bool | None = None) -> FeatureSet:
    """Open one feature set of a store as a :class:`FeatureSet`.

    Samples not yet written (``done`` False, an interrupted extraction) are left out with a
    warning. ``in_memory=None`` loads files under 2 GiB into memory and reads larger ones lazily,
    through per-process HDF5 handles (safe in DataLoader workers).
    """
    path = Path(path)
    if in_memory is None and path.is_file():
        in_memory = path.stat().st_size < _IN_MEMORY_LIMIT
    with _open(path) as h5:
        meta = _meta(h5, path)
        sets = meta.get("feature_sets", {})
        if feature_set not in sets:
            raise DataError(f"{path}: no feature set {feature_set!r}; it has {sorted(sets)} (set data.feature_set)")
        try:
            specs = [ModalitySpec(**d) for d in sets[feature_set]]
            ids = list(h5["ids"].asstr()[:])
            done = h5["done"][:]
            present = h5["present"][:]
            labels = {t: h5[f"labels/{t}"][:] for t in meta["tasks"]}
            # read once in memory: no chunk cache needed (it would only raise the peak)
            cache = 0 if in_memory else CACHE_CHUNKS
            features = {s.name: LazyH5(path, f"features/{feature_set}/{s.name}", h5, cache) for s in specs}
        except (KeyError, OSError) as e:
            raise DataError(f"{path}: missing or unreadable dataset ({e}); the store is corrupt — re-extract it") from e
    keep = np.flatnonzero(done)
    if len(keep) < len(ids):
        log.warning(
            "%s: %d of %d samples not written (extraction interrupted, or no readable modality: see %s.summary.json); "
            "using the %d done",
            path,
            len(ids) - len(keep),
            len(ids),
            path.name,
            len(keep),
        )
    all_done = len(keep) == len(ids)
    chunk = next(iter(features.values())).chunks if features else None
    fs = FeatureSet(
        specs=specs,
        features=features if all_done else {k: RowView(v, keep) for k, v in features.items()},
        present=present[keep],
        labels={t: v[keep] for t, v in labels.items()},
        ids=[ids[i] for i in keep],
        tasks={k: int(v) for k, v in meta["tasks"].items()},
        class_names=meta.get("class_names", {}),
        source=str(path),
        # the storage layout, kept in memory too: batches follow the same chunk-aware order either way
        chunk_rows=chunk[0] if chunk and all_done else None,
        labelled=bool(meta.get("extra", {}).get("labelled", True)),
    )
    if in_memory:
        fs = fs.subset(np.arange(len(fs)))
        for arr in features.values():
            arr.close()
    return fs


def read_sorted_rows(read_slice, rows: np.ndarray, chunk_rows: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with the sorted ``rows`` of a chunked HDF5 dataset: one slice read per storage
    chunk touched (``read_slice(a, b)`` returns rows ``a:b``), picked in numpy — h5py's point
    selection costs ~30x more than the chunk-cached slices it replaces."""
    k = 0
    for group in np.split(rows, np.flatnonzero(np.diff(rows // chunk_rows)) + 1):
        out[k : k + len(group)] = read_slice(int(group[0]), int(group[-1]) + 1)[group - group[0]]
        k += len(group)
    return out


class LazyH5:
    """An h5py dataset by (file, name), opened on first read in each process: a handle opened
    before a fork is never used in a DataLoader worker."""

    def __init__(self, path: Path, name: str, h5: h5py.File, cache_chunks: int = CACHE_CHUNKS) -> None:
        """``h5``: the file, already open, from which shape, dtype and chunking are read;
        ``cache_chunks``: how many decompressed chunks the reading handle keeps (1 MiB at least)."""
        self.path, self.name = Path(path), name
        ds = h5[name]
        self.shape, self.dtype, self.chunks = ds.shape, ds.dtype, ds.chunks
        chunk_bytes = int(np.prod(ds.chunks or ds.shape)) * ds.dtype.itemsize
        self._cache = {"rdcc_nbytes": max(1 << 20, cache_chunks * chunk_bytes), "rdcc_nslots": 10007}
        self._pid: int | None = None
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None

    def _ds(self) -> h5py.Dataset:
        # The dataset handle is kept open: HDF5's chunk cache lives (and dies) with it.
        if self._pid != os.getpid() or self._dataset is None:
            self._file = h5py.File(self.path, "r", **self._cache)
            self._dataset = self._file[self.name]
            self._pid = os.getpid()
        return self._dataset

    def __getitem__(self, idx):
        ds = self._ds()
        if not isinstance(idx, np.ndarray) or idx.ndim != 1 or len(idx) < 2:
            return ds[idx]
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        return read_sorted_rows(lambda a, b: ds[a:b], idx, self.chunks[0] if self.chunks else len(self), out)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._dataset = None

    def __getstate__(self) -> dict:  # pickled for spawned workers: without the handle
        return {**self.__dict__, "_file": None, "_dataset": None, "_pid": None}

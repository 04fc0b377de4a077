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
    checksums/<set> (N, M) uint32  CRC-32 of each present row as written (:mod:`karmma.data.checksums`)
    tokens_present/<set> (N, ΣN_m) bool  which tokens hold data (:mod:`karmma.data.store_tokens`)
    reasons    (N,)           JSON {modality: why it is absent} per sample ("" if none): the summary's source
    provenance/<modality> (N,) uint8  where each sample's modality came from (:mod:`karmma.data.store_provenance`)

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
from typing import TYPE_CHECKING

import h5py
import numpy as np

from karmma.data import store_tokens
from karmma.data.checksums import NO_RECORD
from karmma.data.dataset import FeatureSet, RowView
from karmma.data.safe_files import check_hdf5, declared_bytes
from karmma.data.store_format import FORMAT, VERSION
from karmma.errors import ConfigError, DataError
from karmma.modalities import ModalitySpec

if TYPE_CHECKING:
    from karmma.data.store_sets import write_store
    from karmma.data.store_writer import FeatureStoreWriter

log = logging.getLogger(__name__)

__all__ = ["FeatureStoreWriter", "LazyH5", "open_store", "store_info", "write_store"]

_IN_MEMORY_LIMIT = 2 * 1024**3
_MAX_META_DEPTH = 16
MAX_CLASSES = 1_000_000  # per task: EPIC-100 actions are 3,806; more is a corrupt store, not a task
CACHE_CHUNKS = 24  # chunks each lazily read dataset keeps decompressed: above data.shuffle_chunks


def store_info(path: str | Path) -> dict:
    """The store's metadata (modalities, feature sets, tasks, class names, sample count)."""
    with _open(Path(path)) as h5:
        meta = _meta(h5, Path(path))
        try:
            meta["num_samples"] = int(h5["ids"].shape[0])
            meta["num_done"] = int(np.count_nonzero(h5["done"][:]))
        except (KeyError, AttributeError, TypeError, IndexError, OSError) as e:
            raise DataError(f"{path}: no readable ids/done datasets ({e}); the store is corrupt — re-extract it") from e
        return meta


def all_ids(path: str | Path) -> list[str]:
    """Every sample id the store was made for, written or not (``open_store`` keeps the written)."""
    with _open(Path(path)) as h5:
        _meta(h5, Path(path))
        try:
            return list(h5["ids"].asstr()[:])
        except (KeyError, AttributeError, TypeError, OSError) as e:
            raise DataError(f"{path}: no readable ids dataset ({e}); the store is corrupt — re-extract it") from e


def token_coverage(path: str | Path) -> dict:
    """Per feature set and modality, over the written samples: ``samples_present`` and
    ``tokens_present``, the share of their tokens present (1.0 in a store without per-token flags;
    None with no sample present). Unreadable flags give the reason in place of the numbers."""
    with _open(Path(path)) as h5:
        meta = _meta(h5, Path(path))
        try:
            done = np.asarray(h5["done"][:], bool)
            present = np.asarray(h5["present"][:], bool)
        except (KeyError, OSError, TypeError) as e:
            return {"unreadable": str(e)[:200]}
        out: dict = {}
        for fs, raw in meta.get("feature_sets", {}).items():
            try:
                specs = [ModalitySpec(**d) for d in raw]
                tokens = store_tokens.read(h5, fs, present, specs, path, [str(i) for i in range(len(present))])
                flags = store_tokens.expand(present, specs) if tokens is None else tokens
                cov, start = {}, 0
                for m, s in enumerate(specs):
                    rows = present[done, m]
                    part = flags[done, start : start + s.num_tokens][rows]
                    cov[s.name] = {"samples_present": int(rows.sum()),
                                   "tokens_present": float(part.mean()) if rows.any() else None}  # fmt: skip
                    start += s.num_tokens
                out[fs] = cov
            except (DataError, ConfigError, KeyError, OSError, TypeError, ValueError) as e:
                out[fs] = f"unreadable per-token flags ({str(e)[:200]})"
        return out


def brief_info(info: dict, names: int = 5) -> dict:
    """``info`` for printing: a long class-name list becomes its count and first few names."""
    out = dict(info)
    out["class_names"] = {
        task: v if not isinstance(v, list) or len(v) <= 2 * names else {"count": len(v), "first": v[:names]}
        for task, v in (info.get("class_names") or {}).items()
    }
    return out


def _open(path: Path) -> h5py.File:
    """The store, read-only, once its links and datasets are checked: nothing in it can read
    another file (:func:`karmma.data.safe_files.check_hdf5`)."""
    if not path.is_file():
        raise DataError(f"feature store {path} does not exist; create it with `karmma extract` first")
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 feature store ({e}); the file is corrupt — re-extract it") from e
    try:
        check_hdf5(h5, path, "features/", CACHE_CHUNKS)
    except BaseException:
        h5.close()
        raise
    return h5


def _meta(h5: h5py.File, path: Path) -> dict:
    if h5.attrs.get("format") != FORMAT:
        raise DataError(f"{path}: not a karmma feature store (no format={FORMAT!r} attribute)")
    if int(h5.attrs.get("version", -1)) > VERSION:
        raise DataError(
            f"{path}: store version {h5.attrs['version']} is newer than this karmma supports; upgrade karmma"
        )
    try:
        meta = json.loads(h5.attrs["meta"])
    except (KeyError, OSError, TypeError, ValueError, RecursionError) as e:  # ValueError: JSON's decode error
        raise DataError(f"{path}: store metadata is missing or corrupt ({str(e)[:200]}); re-extract it") from e
    ok = isinstance(meta, dict) and all(isinstance(meta.get(k, {}), dict) for k in ("feature_sets", "tasks", "extra"))
    if not ok or _depth(meta) > _MAX_META_DEPTH:
        raise DataError(f"{path}: store metadata is corrupt (not the layout karmma writes); re-extract it")
    for task, n in meta.get("tasks", {}).items():
        if type(n) is not int or not 1 <= n <= MAX_CLASSES:
            raise DataError(f"{path}: task {str(task)[:40]!r} has {str(n)[:40]!r} classes in the store's "
                            f"metadata (a whole number, 1 to {MAX_CLASSES:,}); the store is corrupt")  # fmt: skip
    return meta


def _check_layout(path: Path, n: int, arrays: dict[str, tuple[np.ndarray | h5py.Dataset, tuple]], ids: list) -> None:
    """Every per-sample dataset has one row per sample (``arrays``: name -> (array, expected shape);
    the features are checked by :class:`FeatureSet`) and the sample ids are distinct."""
    for name, (arr, shape) in arrays.items():
        if tuple(arr.shape) != shape:
            raise DataError(f"{path}: dataset {name!r} has shape {tuple(arr.shape)}, expected {shape} for {n} "
                            "samples; the store is corrupt — re-extract it")  # fmt: skip
    if len(set(ids)) != n:
        seen: set[str] = set()
        twice = [i for i in ids if i in seen or seen.add(i)][:5]  # type: ignore[func-returns-value]
        raise DataError(f"{path}: sample id(s) {twice} appear more than once; the store is corrupt — re-extract it")


def _depth(obj: object) -> int:
    """How deeply JSON ``obj`` nests (walked without recursion)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        x, d = todo.pop()
        deepest = max(deepest, d)
        if d <= _MAX_META_DEPTH and isinstance(x, dict | list):
            todo.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


def open_store(path: str | Path, feature_set: str = "teacher", in_memory: bool | None = None) -> FeatureSet:
    """Open one feature set of a store as a :class:`FeatureSet`.

    Samples not yet written (``done`` False, an interrupted extraction) are left out with a
    warning. ``in_memory=None`` loads a feature set that declares under 2 GiB into memory and reads
    larger ones lazily, through per-process HDF5 handles (safe in DataLoader workers).
    """
    path = Path(path)
    with _open(path) as h5:
        meta = _meta(h5, path)
        sets = meta.get("feature_sets", {})
        if feature_set not in sets:
            raise DataError(f"{path}: no feature set {feature_set!r}; it has {sorted(sets)} (set data.feature_set)")
        try:
            specs = [ModalitySpec(**d) for d in sets[feature_set]]
            if in_memory is None:  # what the features declare, not the file's size: a compressed store is small
                names = [f"features/{feature_set}/{s.name}" for s in specs]
                in_memory = sum(declared_bytes(h5[n].shape, h5[n].dtype) for n in names) < _IN_MEMORY_LIMIT
            ids = list(h5["ids"].asstr()[:])
            done = h5["done"][:]
            present = h5["present"][:]
            # a store written before per-row checksums has no record: NO_RECORD vouches for no all-zero row
            key = f"checksums/{feature_set}"
            sums = h5[key][:] if key in h5 else np.full(present.shape, NO_RECORD, np.uint32)
            labels = {t: h5[f"labels/{t}"][:] for t in meta["tasks"]}
            # read once in memory: no chunk cache needed (it would only raise the peak)
            cache = 0 if in_memory else CACHE_CHUNKS
            features = {s.name: LazyH5(path, f"features/{feature_set}/{s.name}", h5, cache) for s in specs}
            n, m = len(ids), len(specs)
            layout = {"done": (done, (n,)), "present": (present, (n, m)), "checksums": (sums, (n, m))}
            layout.update({f"labels/{t}": (v, (n,)) for t, v in labels.items()})
            _check_layout(path, n, layout, ids)
            tokens = store_tokens.read(h5, feature_set, present, specs, path, ids)  # after: present is (n, m)
            durations = store_tokens.read_durations(h5, n, path)
        except (KeyError, OSError, AttributeError, TypeError, ConfigError) as e:
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
        checksums=sums[keep],
        token_present=None if tokens is None else tokens[keep],
        durations=None if durations is None else durations[keep],
        clip_tokens=store_tokens.clip_tokens(meta, [s.name for s in specs]),
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


def __getattr__(name: str):
    """The writing side, imported only when asked for: reading a store (a deployment, an
    evaluation) does not load the writer."""
    if name == "write_store":
        from karmma.data.store_sets import write_store

        return write_store
    if name == "FeatureStoreWriter":
        from karmma.data.store_writer import FeatureStoreWriter

        return FeatureStoreWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

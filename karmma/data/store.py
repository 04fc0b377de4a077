"""The feature store: one HDF5 file per split, holding per-sample, per-modality token features
for one or more feature sets (e.g. the teacher's and the student's extractors), with genuinely
absent modalities recorded in a presence mask.

Layout (``format = karmma-feature-store``, ``version = 1``)::

    attrs["meta"]             JSON: modalities, feature_sets -> specs, tasks, class_names, extra
    ids        (N,)           sample ids (utf-8)
    present    (N, M) bool    modality present in the raw data
    done       (N,) bool      sample written (extraction resumes from here)
    labels/<task> (N,) int64
    features/<set>/<modality> (N, num_tokens, dim) float32, chunked by samples

Reading is lazy (h5py datasets) or in memory (``in_memory=True``, the default for small files).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from karmma.data.dataset import MAX_ABS_FEATURE, FeatureSet, invalid_rows
from karmma.errors import DataError
from karmma.modalities import ModalitySpec

log = logging.getLogger(__name__)

FORMAT = "karmma-feature-store"
VERSION = 1
_IN_MEMORY_LIMIT = 2 * 1024**3


class FeatureStoreWriter:
    """Create (or reopen, to resume) a store and write samples one at a time.

    ``write(i, features, present)`` stores sample ``i``; ``done`` marks it so a re-run with
    ``resume=True`` skips it. Call ``close()`` (or use as a context manager).
    """

    def __init__(
        self,
        path: str | Path,
        ids: Sequence[str],
        labels: Mapping[str, Sequence[int]],
        tasks: Mapping[str, int],
        feature_sets: Mapping[str, Sequence[ModalitySpec]],
        class_names: Mapping[str, list[str]] | None = None,
        extra: Mapping | None = None,
        resume: bool = True,
    ) -> None:
        self.path = Path(path)
        names = None
        for fs, specs in feature_sets.items():
            these = [s.name for s in specs]
            if names is not None and these != names:
                raise DataError(f"feature set {fs!r} lists modalities {these}, others list {names}")
            names = these
        self.modalities = names or []
        self.feature_sets = {k: list(v) for k, v in feature_sets.items()}
        meta = {
            "modalities": self.modalities,
            "feature_sets": {k: [s.to_dict() for s in v] for k, v in self.feature_sets.items()},
            "tasks": dict(tasks),
            "class_names": dict(class_names or {}),
            "extra": dict(extra or {}),
        }
        n = len(ids)
        if n == 0:
            raise DataError(f"{self.path}: no samples to write; a feature store needs at least one sample")
        if resume and self.path.exists():
            self.h5 = h5py.File(self.path, "r+")
            old = json.loads(self.h5.attrs.get("meta", "{}"))
            if old.get("feature_sets") != meta["feature_sets"] or list(self.h5["ids"].asstr()[:]) != list(ids):
                self.h5.close()
                raise DataError(
                    f"{self.path}: exists with other samples or feature shapes; delete it or write elsewhere"
                )
            log.info("resuming %s: %d/%d samples done", self.path, int(self.h5["done"][:].sum()), n)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".partial")
        # Written under a temporary name, then renamed: a store never appears half-initialised.
        try:
            self._create(tmp, meta, ids, labels, tasks, n)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(self.path)
        self.h5 = h5py.File(self.path, "r+")

    def _create(
        self,
        tmp: Path,
        meta: dict,
        ids: Sequence[str],
        labels: Mapping[str, Sequence[int]],
        tasks: Mapping[str, int],
        n: int,
    ) -> None:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = FORMAT
            h5.attrs["version"] = VERSION
            h5.attrs["meta"] = json.dumps(meta)
            h5.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=h5py.string_dtype())
            h5.create_dataset("present", shape=(n, len(self.modalities)), dtype=bool)
            h5.create_dataset("done", shape=(n,), dtype=bool)
            for task in tasks:
                h5.create_dataset(f"labels/{task}", data=np.asarray(labels[task], dtype=np.int64))
            for fs, specs in self.feature_sets.items():
                for s in specs:
                    h5.create_dataset(
                        f"features/{fs}/{s.name}",
                        shape=(n, *s.shape),
                        dtype=np.float32,
                        chunks=(max(1, min(n, 64)), *s.shape),
                        compression="lzf",
                        fletcher32=True,  # a checksum per chunk: corruption is detected on read
                    )

    @property
    def done(self) -> np.ndarray:
        return self.h5["done"][:]

    def write(self, i: int, features: Mapping[str, Mapping[str, np.ndarray | None]], present: Sequence[bool]) -> None:
        """``features[feature_set][modality]``: array ``(num_tokens, dim)`` or None if absent."""
        for fs, specs in self.feature_sets.items():
            for s, p in zip(specs, present):
                x = features.get(fs, {}).get(s.name)
                if p:
                    x = np.asarray(x, dtype=np.float32)
                    if x.shape != s.shape:
                        raise DataError(
                            f"{self.path}: sample {i} modality {s.name!r} ({fs}) has shape {x.shape}, "
                            f"expected {s.shape}"
                        )
                    _check_values(x[None], self.path, fs, s.name, [i])
                    self.h5[f"features/{fs}/{s.name}"][i] = x
        self.h5["present"][i] = np.asarray(present, dtype=bool)
        self.h5["done"][i] = True

    def write_all(self, features: Mapping[str, Mapping[str, np.ndarray]], present: np.ndarray) -> None:
        """Bulk write: ``features[feature_set][modality]`` is ``(N, num_tokens, dim)``."""
        present = np.asarray(present, dtype=bool)
        for fs, mods in features.items():
            for name, arr in mods.items():
                arr = np.asarray(arr, dtype=np.float32)
                m = self.modalities.index(name)
                _check_values(arr[present[:, m]], self.path, fs, name, np.flatnonzero(present[:, m]))
                self.h5[f"features/{fs}/{name}"][:] = arr
        self.h5["present"][:] = np.asarray(present, dtype=bool)
        self.h5["done"][:] = True

    def flush(self) -> None:
        self.h5.flush()

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_values(x: np.ndarray, path: Path, feature_set: str, name: str, rows: Sequence[int]) -> None:
    """Refuse NaN/Inf and absurd magnitudes at write time (``x``: (n, tokens, dim) of ``rows``)."""
    if not len(x):
        return
    nonfinite, big = invalid_rows(x)
    bad = nonfinite | big
    if bad.any():
        raise DataError(
            f"{path}: modality {name!r} ({feature_set}) of sample(s) {[int(r) for r in np.asarray(rows)[bad][:5]]} "
            f"holds NaN/Inf or values beyond ±{MAX_ABS_FEATURE:g}; fix the extractor's output or write the "
            "modality as absent"
        )


def write_store(path: str | Path, sets: Mapping[str, FeatureSet]) -> Path:
    """Write feature sets of the same samples (e.g. ``{"teacher": a, "student": b}``) to one store.

    All or nothing: the store is written under a temporary name and renamed when complete, so a
    refused write (bad values, no samples) leaves no file and never replaces an existing store.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.writing")
    first = next(iter(sets.values()))
    try:
        with FeatureStoreWriter(
            tmp,
            ids=first.ids,
            labels=first.labels,
            tasks=first.tasks,
            feature_sets={k: v.specs for k, v in sets.items()},
            class_names=first.class_names,
            resume=False,
        ) as w:
            w.write_all(
                {k: {s.name: v._read(s.name, np.arange(len(v))) for s in v.specs} for k, v in sets.items()},
                first.present,
            )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
            features = {s.name: LazyH5(path, f"features/{feature_set}/{s.name}", h5) for s in specs}
        except (KeyError, OSError) as e:
            raise DataError(f"{path}: missing or unreadable dataset ({e}); the store is corrupt — re-extract it") from e
    if in_memory is None:
        in_memory = path.stat().st_size < _IN_MEMORY_LIMIT
    keep = np.flatnonzero(done)
    if len(keep) < len(ids):
        log.warning(
            "%s: %d of %d samples not extracted yet; using the %d done", path, len(ids) - len(keep), len(ids), len(keep)
        )
    all_done = len(keep) == len(ids)
    fs = FeatureSet(
        specs=specs,
        features=features if all_done else {k: _Rows(v, keep) for k, v in features.items()},
        present=present[keep],
        labels={t: v[keep] for t, v in labels.items()},
        ids=[ids[i] for i in keep],
        tasks={k: int(v) for k, v in meta["tasks"].items()},
        class_names=meta.get("class_names", {}),
        source=str(path),
    )
    if in_memory:
        fs = fs.subset(np.arange(len(fs)))
        for arr in features.values():
            arr.close()
    return fs


class LazyH5:
    """An h5py dataset by (file, name), opened on first read in each process: a handle opened
    before a fork is never used in a DataLoader worker."""

    def __init__(self, path: Path, name: str, h5: h5py.File) -> None:
        """``h5``: the file, already open, from which shape, dtype and chunking are read."""
        self.path, self.name = Path(path), name
        ds = h5[name]
        self.shape, self.dtype, self.chunks = ds.shape, ds.dtype, ds.chunks
        self._pid: int | None = None
        self._file: h5py.File | None = None

    def _ds(self) -> h5py.Dataset:
        if self._pid != os.getpid() or self._file is None:
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.name]

    def __getitem__(self, idx):
        return self._ds()[idx]

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:  # pickled for spawned workers: without the handle
        return {**self.__dict__, "_file": None, "_pid": None}


class _Rows:
    """A row-subset view of a dataset, indexable like it."""

    def __init__(self, ds: LazyH5, rows: np.ndarray) -> None:
        self.ds, self.rows = ds, rows
        self.shape = (len(rows), *ds.shape[1:])

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.ds[self.rows[idx]]

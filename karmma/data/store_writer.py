"""Writing feature stores (the layout is described in :mod:`karmma.data.store`).

:class:`FeatureStoreWriter` takes samples one at a time, as extraction produces them, and buffers
them per storage chunk: a chunk is compressed and written once, when it is complete (or on
``flush``/``close``), so per-sample writing runs at bulk speed instead of rewriting a whole
chunk per sample. ``done`` is set only once a sample's features are on disk, so an interrupted
extraction resumes from the last written chunk. Features are stored as float32 or, optionally,
float16 (half the disk and I/O; readers still hand float32 to the model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from karmma.data.dataset import MAX_ABS_FEATURE, FeatureSet, row_extremes
from karmma.errors import DataError
from karmma.modalities import ModalitySpec

log = logging.getLogger(__name__)

FORMAT = "karmma-feature-store"
VERSION = 1
DTYPES = ("float32", "float16")
CHUNK_BYTES = 1 << 20  # HDF5's advice: ~1 MiB chunks (and its default chunk cache is 1 MiB)
MAX_CHUNK_ROWS = 64
FLOAT16_MAX = float(np.finfo(np.float16).max)


def chunk_rows(feature_sets: Mapping[str, Sequence[ModalitySpec]], n: int, itemsize: int) -> int:
    """Samples per storage chunk, the same for every modality: about 1 MiB for the widest one."""
    widest = max((s.num_tokens * s.dim * itemsize for specs in feature_sets.values() for s in specs), default=1)
    return max(1, min(n, MAX_CHUNK_ROWS, CHUNK_BYTES // max(widest, 1)))


class FeatureStoreWriter:
    """Create (or reopen, to resume) a store and write samples one at a time.

    ``write(i, features, present)`` stores sample ``i``; ``done`` marks it once it is on disk, so a
    re-run with ``resume=True`` skips it. Call ``close()`` (or use as a context manager).
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
        dtype: str = "float32",
    ) -> None:
        self.path = Path(path)
        if dtype not in DTYPES:
            raise DataError(f"{self.path}: feature dtype {dtype!r} is not supported; choose one of {DTYPES}")
        self.dtype = np.dtype(dtype)
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
        self._n = n
        self._pending: dict[int, tuple[dict, np.ndarray]] = {}  # sample -> (features, present), one chunk
        if resume and self.path.exists():
            self.h5 = h5py.File(self.path, "r+")
            old = json.loads(self.h5.attrs.get("meta", "{}"))
            if old.get("feature_sets") != meta["feature_sets"] or list(self.h5["ids"].asstr()[:]) != list(ids):
                self.h5.close()
                raise DataError(
                    f"{self.path}: exists with other samples or feature shapes; delete it or write elsewhere"
                )
            self._chunk = self._first_dataset().chunks[0]
            stored = self._first_dataset().dtype
            if stored != self.dtype:
                self.h5.close()
                raise DataError(
                    f"{self.path}: exists with {stored} features, this run writes {self.dtype}; "
                    "resume with the same dtype or delete the file"
                )
            log.info("resuming %s: %d/%d samples done", self.path, int(self.h5["done"][:].sum()), n)
            return
        self._chunk = chunk_rows(self.feature_sets, n, self.dtype.itemsize)
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

    def _first_dataset(self) -> h5py.Dataset:
        fs, specs = next(iter(self.feature_sets.items()))
        return self.h5[f"features/{fs}/{specs[0].name}"]

    def _create(self, tmp: Path, meta: dict, ids: Sequence[str], labels, tasks, n: int) -> None:
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
                        dtype=self.dtype,
                        chunks=(self._chunk, *s.shape),
                        compression="lzf",
                        fletcher32=True,  # a checksum per chunk: corruption is detected on read
                    )

    @property
    def done(self) -> np.ndarray:
        done = self.h5["done"][:]
        done[list(self._pending)] = True
        return done

    def _checked(self, i: int, fs: str, s: ModalitySpec, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape != s.shape:
            raise DataError(
                f"{self.path}: sample {i} modality {s.name!r} ({fs}) has shape {x.shape}, expected {s.shape}"
            )
        _check_values(x[None], self.path, fs, s.name, [i], self.dtype)
        return x.astype(self.dtype, copy=False)

    def write(self, i: int, features: Mapping[str, Mapping[str, np.ndarray | None]], present: Sequence[bool]) -> None:
        """``features[feature_set][modality]``: array ``(num_tokens, dim)`` or None if absent.

        Buffered: the sample reaches the file when its chunk is complete, on ``flush`` or ``close``."""
        present = np.asarray(present, dtype=bool)
        row = {
            (fs, s.name): self._checked(i, fs, s, features.get(fs, {}).get(s.name))
            for fs, specs in self.feature_sets.items()
            for s, p in zip(specs, present)
            if p
        }
        if self._pending and next(iter(self._pending)) // self._chunk != i // self._chunk:
            self.flush()
        self._pending[i] = (row, present)
        if len(self._pending) == self._chunk or i + 1 == self._n:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        rows = np.array(sorted(self._pending))
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):  # contiguous runs: slice writes
            a, b = int(run[0]), int(run[-1]) + 1
            for fs, specs in self.feature_sets.items():
                for s in specs:
                    block = np.zeros((b - a, *s.shape), dtype=self.dtype)
                    for k, r in enumerate(run):
                        x = self._pending[int(r)][0].get((fs, s.name))
                        if x is not None:
                            block[k] = x
                    self.h5[f"features/{fs}/{s.name}"][a:b] = block
            self.h5["present"][a:b] = np.stack([self._pending[int(r)][1] for r in run])
            self.h5["done"][a:b] = True  # after the features: a crash never marks unwritten samples done
        self._pending.clear()

    def write_all(self, features: Mapping[str, Mapping[str, np.ndarray]], present: np.ndarray) -> None:
        """Bulk write: ``features[feature_set][modality]`` is ``(N, num_tokens, dim)``."""
        present = np.asarray(present, dtype=bool)
        for fs, mods in features.items():
            for name, arr in mods.items():
                m = self.modalities.index(name)
                rows = np.flatnonzero(present[:, m])
                _check_values(np.asarray(arr)[rows], self.path, fs, name, rows, self.dtype)
                self.h5[f"features/{fs}/{name}"][:] = np.asarray(arr).astype(self.dtype, copy=False)
        self.h5["present"][:] = present
        self.h5["done"][:] = True

    def flush(self) -> None:
        self._write_pending()
        self.h5.flush()

    def close(self) -> None:
        if self.h5.id.valid:
            try:
                self._write_pending()
            finally:
                self.h5.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_path(store: str | Path) -> Path:
    """``<store>.summary.json``: what extraction or import left absent or unwritten, and why."""
    store = Path(store)
    return store.with_name(store.name + ".summary.json")


def _check_values(x: np.ndarray, path: Path, feature_set: str, name: str, rows: Sequence[int], dtype) -> None:
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


def write_store(path: str | Path, sets: Mapping[str, FeatureSet], dtype: str | None = None) -> Path:
    """Write feature sets of the same samples (e.g. ``{"teacher": a, "student": b}``) to one store,
    in ``dtype`` (default: float16 if the sets hold float16, else float32).

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
            resume=False,
            dtype=dtype,
        ) as w:
            rows = np.arange(len(first))
            w.write_all({k: {s.name: v._read(s.name, rows, keep_dtype=True) for s in v.specs} for k, v in sets.items()},
                        first.present)  # fmt: skip
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

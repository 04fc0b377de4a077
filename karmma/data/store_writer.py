"""Writing feature stores (the layout is described in :mod:`karmma.data.store`).

:class:`FeatureStoreWriter` takes samples one at a time, as extraction produces them, and buffers
them per storage chunk: a chunk is compressed and written once, when it is complete (or on
``flush``/``close``), so per-sample writing runs at bulk speed instead of rewriting a whole
chunk per sample. Features are stored as float32 or, optionally, float16 (half the disk and I/O;
readers still hand float32 to the model).

Whatever happens to the process or the disk, a sample is marked ``done`` only once it is on disk:
each chunk's features, presence, per-row checksums (:mod:`karmma.data.checksums`) and absence
reasons are flushed and synced first, and its ``done`` rows after them, then synced again. A
killed extraction (SIGKILL included) therefore resumes with at most the chunk it was filling to
redo. A failed write (a full disk) stops with one error naming the store; nothing is written after
it and no row is marked done that is not on disk. A small reserve file beside the store
(``.<store>.reserve``) is released on such a failure, so that HDF5 can finish what it holds and
close the file cleanly (HDF5 left with a file it cannot close crashes the process at exit).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from karmma.data import store_tokens
from karmma.data.checksums import row_checksums
from karmma.data.safe_files import check_hdf5
from karmma.data.store_safety import Reserve, add_checksums, os_error, reserve_bytes
from karmma.data.store_summary import summary_path  # noqa: F401  (re-exported: its old home)
from karmma.data.store_values import check_values
from karmma.errors import DataError
from karmma.modalities import ModalitySpec
from karmma.outputs import write_failed

log = logging.getLogger(__name__)

from karmma.data.store_format import CHUNK_BYTES, DTYPES, FORMAT, MAX_CHUNK_ROWS, VERSION, chunk_rows  # noqa: E402,F401  (their home before 0.2)  # noqa: E402,F401


class _Pending(NamedTuple):
    features: dict | None  # (feature set, modality) -> row; None: the sample could not be written
    present: np.ndarray
    reasons: dict[str, str]  # modality -> why it is absent
    tokens: dict[str, np.ndarray] | None = None  # feature set -> (ΣN_m,) per-token presence
    duration: float = float("nan")  # the clip's seconds (NaN: unknown)


class FeatureStoreWriter:
    """Create (or reopen, to resume) a store and write samples one at a time.

    ``write(i, features, present, reasons)`` stores sample ``i``; ``done`` marks it once it is on
    disk, so a re-run with ``resume=True`` skips it. ``skip(i, reasons)`` records why a sample
    could not be written (it stays not done). Call ``close()`` (or use as a context manager).
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
        self._ids = list(ids)  # named in errors
        self._pending: dict[int, _Pending] = {}  # sample -> what to write, one chunk
        self._failed: DataError | None = None
        self._reserve = Reserve(self.path)
        if resume and self.path.exists():
            self._reopen(meta, ids)
            log.info("resuming %s: %d/%d samples done", self.path, int(self._ds["done"][:].sum()), n)
            return
        self._chunk = chunk_rows(self.feature_sets, n, self.dtype.itemsize)
        self._reserve_space()
        tmp = self.path.with_suffix(self.path.suffix + ".partial")
        # Written under a temporary name, then renamed: a store never appears half-initialised.
        try:
            self._create(tmp, meta, ids, labels, tasks, n)
            tmp.replace(self.path)
            self.h5 = h5py.File(self.path, "r+")
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            self._release()
            raise write_failed(self.path, os_error(e)) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._release()
            raise
        self._open_datasets()

    def _reopen(self, meta: dict, ids: Sequence[str]) -> None:
        try:
            self.h5 = h5py.File(self.path, "r+")
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise write_failed(self.path, e) from e
            raise DataError(f"{self.path}: cannot reopen it to resume ({e}); it is not a karmma feature store or "
                            "it is corrupt — delete it or run with --no-resume") from e  # fmt: skip
        try:
            check_hdf5(self.h5, self.path, "features/")  # nothing in it reads another file
            old = json.loads(self.h5.attrs.get("meta", "{}"))
            prep = old.get("extra", {}).get("preprocessing"), meta["extra"].get("preprocessing")  # e.g. --frames
            if old.get("feature_sets") != meta["feature_sets"] or list(self.h5["ids"].asstr()[:]) != list(ids) or (
                    prep[0] != prep[1]):  # fmt: skip
                what = f"extraction options {prep[0]}" if prep[0] != prep[1] else "other samples or feature shapes"
                raise DataError(f"{self.path}: exists with {what}; delete it or write elsewhere")
            self._chunk = self.h5[self._first_dataset()].chunks[0]
            stored = self.h5[self._first_dataset()].dtype
            if stored != self.dtype:
                raise DataError(
                    f"{self.path}: exists with {stored} features, this run writes {self.dtype}; "
                    "resume with the same dtype or delete the file"
                )
            self._reserve_space()
            self._upgrade()
            self._open_datasets()
        except BaseException as e:
            self.close()
            if isinstance(e, (KeyError, TypeError, ValueError)) and not isinstance(e, DataError):
                raise DataError(f"{self.path}: not a feature store this karmma can resume ({e}); delete it or "
                                "run with --no-resume") from e  # fmt: skip
            raise

    def _first_dataset(self) -> str:
        fs, specs = next(iter(self.feature_sets.items()))
        return f"features/{fs}/{specs[0].name}"

    def _reserve_space(self) -> None:
        self._reserve.hold(reserve_bytes(self.feature_sets, self._chunk, self.dtype.itemsize))

    def _release(self) -> None:
        self._reserve.release()

    def _create(self, tmp: Path, meta: dict, ids: Sequence[str], labels, tasks, n: int) -> None:
        h5 = h5py.File(tmp, "w")
        try:
            h5.attrs["format"] = FORMAT
            h5.attrs["version"] = VERSION
            h5.attrs["meta"] = json.dumps(meta)
            h5.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=h5py.string_dtype())
            h5.create_dataset("present", shape=(n, len(self.modalities)), dtype=bool)
            h5.create_dataset("done", shape=(n,), dtype=bool)
            h5.create_dataset("reasons", shape=(n,), dtype=h5py.string_dtype(), chunks=(self._chunk,))
            for task in tasks:
                h5.create_dataset(f"labels/{task}", data=np.asarray(labels[task], dtype=np.int64))
            store_tokens.create(h5, self.feature_sets, n, self._chunk)
            for fs, specs in self.feature_sets.items():
                h5.create_dataset(f"checksums/{fs}", shape=(n, len(specs)), dtype=np.uint32,
                                  chunks=(self._chunk, len(specs)))  # fmt: skip
                for s in specs:
                    h5.create_dataset(
                        f"features/{fs}/{s.name}",
                        shape=(n, *s.shape),
                        dtype=self.dtype,
                        chunks=(self._chunk, *s.shape),
                        compression="lzf",
                        fletcher32=True,  # a checksum per chunk: corruption is detected on read
                    )
            h5.flush()
        except BaseException:
            self._release()  # room for HDF5 to close the file it could not finish
            h5.close()
            raise
        h5.close()

    def _upgrade(self) -> None:
        """A store written before per-row checksums and reasons existed gets them; done samples
        that were never written there (see :func:`~karmma.data.store_safety.add_checksums`) are redone."""
        try:
            if "reasons" not in self.h5:
                self.h5.create_dataset("reasons", shape=(self._n,), dtype=h5py.string_dtype(), chunks=(self._chunk,))
            store_tokens.upgrade(self.h5, self.feature_sets, self._n, self._chunk)
            redo = add_checksums(self.h5, self.feature_sets, self._n, self._chunk)
            if redo.any():
                log.warning("%s: %d done sample(s) hold no features (written by an extraction that failed); "
                            "redoing them", self.path, int(redo.sum()))  # fmt: skip
                self.h5["done"][np.flatnonzero(redo)] = False
            self._sync()
        except (OSError, RuntimeError) as e:
            self._fail(e)

    def _open_datasets(self) -> None:
        # Held open for the writer's life: each dataset's chunk cache is written on ``_sync``, where a
        # failure raises, not when a temporary dataset object is dropped (where h5py ignores it).
        names = ["present", "done", "reasons"] + [f"checksums/{fs}" for fs in self.feature_sets]
        names += store_tokens.names(self.feature_sets)
        names += [f"features/{fs}/{s.name}" for fs, specs in self.feature_sets.items() for s in specs]
        self._ds = {k: self.h5[k] for k in names}

    @property
    def done(self) -> np.ndarray:
        done = self._ds["done"][:]
        done[[i for i, p in self._pending.items() if p.features is not None]] = True
        return done

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def _checked(self, i: int, fs: str, s: ModalitySpec, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape != s.shape:
            raise DataError(
                f"{self.path}: sample {self._ids[i]!r} modality {s.name!r} ({fs}) has shape {x.shape}, "
                f"expected {s.shape}"
            )
        check_values(x[None], self.path, fs, s.name, [self._ids[i]], self.dtype)
        return x.astype(self.dtype, copy=False)

    def write(self, i: int, features: Mapping[str, Mapping[str, np.ndarray | None]], present: Sequence[bool],
              reasons: Mapping[str, str] | None = None, tokens: Mapping[str, Mapping[str, np.ndarray]] | None = None,
              duration: float | None = None) -> None:  # fmt: skip
        """``features[feature_set][modality]``: array ``(num_tokens, dim)`` or None if absent;
        ``reasons[modality]``: why an absent modality is absent (kept in the store's summary);
        ``tokens[feature_set][modality]``: ``(num_tokens,)`` bool, which tokens of a present
        modality hold data (default: all; :mod:`karmma.data.store_tokens`); ``duration``: seconds.

        Buffered: the sample reaches the file when its chunk is complete, on ``flush`` or ``close``."""
        if self._failed:
            raise self._failed
        present = np.asarray(present, dtype=bool)
        row = {
            (fs, s.name): self._checked(i, fs, s, features.get(fs, {}).get(s.name))
            for fs, specs in self.feature_sets.items()
            for s, p in zip(specs, present)
            if p
        }
        where = f"{self.path}: sample {self._ids[i]!r}"
        flags = {fs: store_tokens.sample_row(present, specs, (tokens or {}).get(fs), f"{where} ({fs})")
                 for fs, specs in self.feature_sets.items()}  # fmt: skip
        seconds = float("nan") if duration is None else float(duration)
        self._queue(i, _Pending(row, present, dict(reasons or {}), flags, seconds))

    def skip(self, i: int, reasons: Mapping[str, str]) -> None:
        """Sample ``i`` could not be written (no modality readable): its reasons are kept, it stays
        not done, and a re-run tries it again."""
        if self._failed:
            raise self._failed
        self._queue(i, _Pending(None, np.zeros(len(self.modalities), bool), dict(reasons)))

    def _queue(self, i: int, item: _Pending) -> None:
        if self._pending and next(iter(self._pending)) // self._chunk != i // self._chunk:
            self._write_pending()
        self._pending[i] = item
        if len(self._pending) == self._chunk or i + 1 == self._n:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._failed:
            raise self._failed
        if not self._pending:
            return
        rows = np.array(sorted(self._pending))
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)]
        try:
            for a, b in runs:  # contiguous runs: slice writes
                self._write_run(a, b)
            self._sync()  # features, presence, checksums and reasons on disk ...
            for a, b in runs:
                self._ds["done"][a:b] = [self._pending[r].features is not None for r in range(a, b)]
            self._sync()  # ... before their samples are marked done
        except (OSError, RuntimeError) as e:
            self._fail(e)
        self._pending.clear()

    def _write_run(self, a: int, b: int) -> None:
        items = [self._pending[r] for r in range(a, b)]
        for fs, specs in self.feature_sets.items():
            sums = np.zeros((b - a, len(specs)), np.uint32)
            for m, s in enumerate(specs):
                block = np.zeros((b - a, *s.shape), dtype=self.dtype)
                rows = [k for k, it in enumerate(items) if it.features and (fs, s.name) in it.features]
                for k in rows:
                    block[k] = items[k].features[(fs, s.name)]
                sums[rows, m] = row_checksums(block[rows])
                self._ds[f"features/{fs}/{s.name}"][a:b] = block
            self._ds[f"checksums/{fs}"][a:b] = sums
        store_tokens.write_rows(self._ds, self.feature_sets, a, items)
        self._ds["present"][a:b] = np.stack([it.present for it in items])
        self._ds["reasons"][a:b] = np.array([json.dumps(it.reasons) if it.reasons else "" for it in items], object)

    def _sync(self) -> None:
        self.h5.flush()
        os.fsync(self.h5.id.get_vfd_handle())

    def _fail(self, e: Exception) -> None:
        """A write failed: release the reserve so HDF5 can finish what it holds (never a done row
        whose features are not on disk: those are synced first), and refuse any further write."""
        self._pending.clear()
        self._release()
        try:
            self._sync()
        except (OSError, RuntimeError) as again:
            log.warning("%s: could not finish the store after a failed write (%s)", self.path, again)
        try:
            kept = f"{int(self._ds['done'][:].sum())} of {self._n}"
        except (OSError, RuntimeError, AttributeError):
            kept = "the written"
        self._failed = DataError(f"{write_failed(self.path, os_error(e))}; {kept} samples are written and kept: "
                                 "run the same command again to resume")  # fmt: skip
        raise self._failed from e

    def write_all(self, features: Mapping[str, Mapping[str, np.ndarray]], present: np.ndarray,
                  tokens: Mapping[str, np.ndarray | None] | None = None,
                  durations: np.ndarray | None = None) -> None:  # fmt: skip
        """Bulk write: ``features[feature_set][modality]`` is ``(N, num_tokens, dim)``; ``tokens``
        and ``durations`` as :func:`karmma.data.store_tokens.write_all` takes them."""
        present = np.asarray(present, dtype=bool)
        try:
            store_tokens.write_all(self._ds, self.feature_sets, present, tokens, durations)
            for fs, mods in features.items():
                sums = np.zeros((self._n, len(self.modalities)), np.uint32)
                for name, arr in mods.items():
                    m = self.modalities.index(name)
                    rows = np.flatnonzero(present[:, m])
                    check_values(np.asarray(arr)[rows], self.path, fs, name, [self._ids[r] for r in rows], self.dtype)
                    stored = np.asarray(arr).astype(self.dtype, copy=False)
                    self._ds[f"features/{fs}/{name}"][:] = stored
                    sums[rows, m] = row_checksums(stored[rows])
                self._ds[f"checksums/{fs}"][:] = sums
            self._ds["present"][:] = present
            self._sync()
            self._ds["done"][:] = True
            self._sync()
        except (OSError, RuntimeError) as e:
            self._fail(e)

    def flush(self) -> None:
        self._write_pending()

    def close(self) -> None:
        """Write what is pending (unless a write failed) and close the file."""
        h5 = getattr(self, "h5", None)
        if h5 is None or not h5.id.valid:
            self._release()
            return
        try:
            if not self._failed:
                self._write_pending()
        finally:
            self._ds = {}
            try:
                h5.close()
            except (OSError, RuntimeError) as e:
                if not self._failed:
                    raise write_failed(self.path, os_error(e)) from e
            finally:
                self._release()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def __getattr__(name: str):
    """``write_store`` lives in :mod:`karmma.data.store_sets`, shown as ``karmma.data.store.write_store``."""
    if name == "write_store":
        import importlib
        import warnings

        warnings.warn("import write_store from karmma.data.store; karmma.data.store_writer.write_store will "
                      "be removed in the next release", DeprecationWarning, stacklevel=2)  # fmt: skip
        return importlib.import_module("karmma.data.store_sets").write_store  # lazily: store_sets imports this
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

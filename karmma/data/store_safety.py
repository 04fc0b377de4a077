"""What keeps a feature store whole while it is written (used by :mod:`karmma.data.store_writer`).

* :class:`Reserve` — room held beside the store (``.<store>.reserve``) for one chunk of every
  dataset. On a failed write (a full disk) it is released, so HDF5 can finish what it holds and
  close the file cleanly: HDF5 left with a file it cannot close crashes the process at exit.
* :func:`os_error` — h5py reports a failed write as OSError or RuntimeError, its errno only in the
  text; this recovers it, for :func:`karmma.outputs.write_failed`.
* :func:`add_checksums` — stores written before per-row checksums existed get them when resumed;
  a done sample whose present features are all zeros (or unreadable) there was never written (a
  full disk, with the karmma of then), so it is marked for redoing.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from karmma.data.checksums import row_checksums, zero_rows
from karmma.modalities import ModalitySpec
from karmma.outputs import write_failed

RESERVE_EXTRA = 1 << 20  # the reserve: one chunk of every dataset, a quarter more, and this for metadata


def os_error(e: Exception) -> OSError:
    """The OSError (with its errno) behind an h5py write error."""
    if isinstance(e, OSError) and e.errno:
        return e
    m = re.search(r"errno = (\d+)", str(e))
    code = int(m.group(1)) if m else errno.EIO
    return OSError(code, os.strerror(code))


def reserve_bytes(feature_sets: Mapping[str, Sequence[ModalitySpec]], chunk: int, itemsize: int) -> int:
    raw = sum(chunk * s.num_tokens * s.dim * itemsize for specs in feature_sets.values() for s in specs)
    return raw + raw // 4 + RESERVE_EXTRA


class Reserve:
    """``size`` bytes held in ``.<store>.reserve`` until :meth:`release`."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.path = store.with_name(f".{store.name}.reserve")

    def hold(self, size: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as e:  # a filesystem without fallocate: write the bytes
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    for start in range(0, size, 1 << 20):
                        os.write(fd, bytes(min(1 << 20, size - start)))
            finally:
                os.close(fd)
        except OSError as e:
            self.release()
            raise write_failed(self.store, e) from e

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def add_checksums(h5: h5py.File, feature_sets: Mapping[str, Sequence[ModalitySpec]], n: int, chunk: int) -> np.ndarray:
    """Add the missing ``checksums/<set>`` of a store (computed from what is on disk) and return
    the done samples to redo: a present row that is all zeros or unreadable."""
    done, present = h5["done"][:], h5["present"][:]
    redo = np.zeros(n, bool)
    for fs, specs in feature_sets.items():
        if f"checksums/{fs}" in h5:
            continue
        sums = np.zeros((n, len(specs)), np.uint32)
        for m, s in enumerate(specs):
            ds = h5[f"features/{fs}/{s.name}"]
            for a in range(0, n, chunk):
                rows = a + np.flatnonzero(done[a : a + chunk] & present[a : a + chunk, m])
                if not len(rows):
                    continue
                try:
                    x = ds[a : a + chunk][rows - a]
                except (OSError, RuntimeError):  # an unreadable chunk: its samples are redone
                    redo[rows] = True
                    continue
                sums[rows, m] = row_checksums(x)
                redo[rows[zero_rows(x)]] = True
        h5.create_dataset(f"checksums/{fs}", data=sums, chunks=(chunk, len(specs)))
    return redo

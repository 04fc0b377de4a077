"""Reading the HDF5, ``.npy`` and ``.npz`` files a user hands karmma as hostile files: nothing in
them may make karmma read another file or hold more memory than :data:`karmma.limits.DECLARED_BYTES`.

* HDF5 (:func:`check_hdf5`): the file's link structure is walked with the low-level API, never
  following a link out of the file; an external link, a soft link, a dataset stored in another
  (raw) file or a virtual dataset is refused, as is a dataset whose declared size is over the bound.
* ``.npy`` / ``.npz`` (:func:`read_npy`, :func:`read_npz`): the header (the zip member's declared
  size, then the array's declared shape and dtype) is checked before a byte of data is read, and
  the data is read once, straight into its array; object (pickled) arrays are refused.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np

from karmma.errors import DataError
from karmma.limits import DECLARED_BYTES

_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link (to another file)"}
_MAX_OBJECTS = 10_000_000  # groups and datasets one HDF5 file may hold: far above any feature file


def declared_bytes(shape: tuple[int, ...] | None, dtype: np.dtype) -> int:
    """What an array of ``shape`` and ``dtype`` holds, in exact (unbounded) integers."""
    return math.prod(int(n) for n in (shape or ())) * int(dtype.itemsize)


def check_features_dtype(dtype: np.dtype, where: str) -> None:
    """Features are real numbers: refuse complex, string, object and structured arrays."""
    if dtype.kind == "c":
        raise DataError(f"{where}: holds complex ({dtype}) values; features must be real numbers (save float32)")
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{where}: is a {dtype} array; features must be numbers (save float32 arrays)")


def check_hdf5(
    h5: h5py.File, path: Path, lazy_prefix: str | None = None, cache_chunks: int = 1, sizes: bool = True
) -> dict[str, int]:
    """Walk every group and dataset of ``h5`` (hard links only, each object once) and refuse what
    could read another file or, with ``sizes``, declares too much; returns ``{dataset: declared bytes}``.

    A dataset under ``lazy_prefix`` is read by rows (a store's features): its row, and the
    ``cache_chunks`` decompressed chunks the reader keeps, are bounded instead of its whole size.
    ``sizes=False`` leaves the sizes to the reader (which bounds each dataset it reads)."""
    try:
        return _walk(h5, path, lazy_prefix, cache_chunks, sizes)
    except DataError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as e:  # h5py's errors for a damaged file
        raise DataError(f"{path}: a damaged HDF5 file ({type(e).__name__}: {str(e)[:200]}); get a fresh copy") from e


def _walk(h5: h5py.File, path: Path, lazy_prefix: str | None, cache_chunks: int, sizes: bool) -> dict[str, int]:
    found: dict[str, int] = {}
    seen: set[int] = set()
    todo: list[tuple[str, h5py.h5g.GroupID]] = [("", h5.id)]
    while todo:
        prefix, gid = todo.pop()
        for raw in gid:  # names only: iterating a group follows no link
            name = prefix + raw.decode("utf-8", "replace")
            link = gid.links.get_info(raw)
            if link.type != h5py.h5l.TYPE_HARD:
                what = _LINK_KINDS.get(link.type, f"a user-defined link (type {link.type})")
                raise DataError(f"{path}: {name!r} is {what}; refused — karmma reads only data inside the file "
                                "(re-save it with h5py without links)")  # fmt: skip
            if link.u in seen:  # the object's address: a second hard link to it (or a cycle)
                continue
            seen.add(link.u)
            if len(seen) > _MAX_OBJECTS:
                raise DataError(f"{path}: holds over {_MAX_OBJECTS:,} groups and datasets; not a feature file")
            oid = h5py.h5o.open(gid, raw)
            if isinstance(oid, h5py.h5g.GroupID):
                todo.append((name + "/", oid))
            elif isinstance(oid, h5py.h5d.DatasetID):
                found[name] = _check_dataset(oid, f"{path}: dataset {name!r}", lazy_prefix, name, cache_chunks, sizes)
    return found


def _check_dataset(
    oid: h5py.h5d.DatasetID, where: str, lazy_prefix: str | None, name: str, cache_chunks: int, sizes: bool
) -> int:
    plist = oid.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise DataError(f"{where} is a virtual dataset (it maps other files); refused — store the data itself")
    if plist.get_external_count() > 0:
        raise DataError(f"{where} keeps its data in another file (external storage); refused — store the data itself")
    if not sizes:
        return 0
    shape, dtype = oid.shape or (), oid.dtype
    if lazy_prefix is not None and name.startswith(lazy_prefix):
        DECLARED_BYTES.check(declared_bytes(shape[1:], dtype), f"{where} (one row)")
        if layout == h5py.h5d.CHUNKED:
            DECLARED_BYTES.check(declared_bytes(plist.get_chunk(), dtype) * cache_chunks, f"{where} (its chunk cache)")
    else:
        DECLARED_BYTES.check(declared_bytes(shape, dtype), where)
    return declared_bytes(shape, dtype)


# -- .npy / .npz ------------------------------------------------------------------------------------


def _npy_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(f)
    except ValueError as e:
        if "EOF" in str(e):
            raise DataError(f"{where}: truncated (the file ends inside the .npy header); save it again") from None
        raise DataError(f"{where}: not an .npy array (no .npy header); save it with numpy.save") from None
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise DataError(f"{where}: .npy format version {version} is not read (only 1.0 and 2.0: numeric arrays)")
    try:
        shape, fortran, dtype = read(f)
    except ValueError as e:
        if "EOF" in str(e):
            raise DataError(f"{where}: truncated (the file ends inside the .npy header); save it again") from None
        raise DataError(f"{where}: corrupt .npy header ({str(e)[:200]}); save it again with numpy.save") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds an object (pickled) array; refused, never unpickled — save float arrays")
    return tuple(shape), dtype, bool(fortran)


def _fill(f: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, where: str) -> np.ndarray:
    """The array's data, read straight into it (one copy)."""
    arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = memoryview(arr.reshape(-1, order="A").view(np.uint8)) if arr.size else memoryview(b"")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise DataError(f"{where}: truncated (declares {len(view)} data bytes, holds {got}); save it again")
        got += n
    return arr


def npy_info(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` file declares, checked against its size and the bound."""
    with _open_regular(path) as f:
        shape, dtype, _ = _npy_header(f, str(path))
        _check_npy_size(shape, dtype, path.stat().st_size - f.tell(), str(path))
    return shape, dtype


def _check_npy_size(shape: tuple[int, ...], dtype: np.dtype, available: int, where: str) -> None:
    nbytes = declared_bytes(shape, dtype)
    DECLARED_BYTES.check(nbytes, where)
    if nbytes > available:
        raise DataError(f"{where}: truncated (declares {nbytes} data bytes, holds {available}); save it again")


def read_npy(path: Path) -> np.ndarray:
    """One ``.npy`` array, its header checked before its data is read."""
    with _open_regular(path) as f:
        shape, dtype, fortran = _npy_header(f, str(path))
        _check_npy_size(shape, dtype, path.stat().st_size - f.tell(), str(path))
        return _fill(f, shape, dtype, fortran, str(path))


def _open_regular(path: Path) -> BinaryIO:
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DataError(f"{path}: not a regular file")
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e


def npz_info(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{member: (shape, dtype)}`` as an ``.npz`` archive declares them (nothing decompressed
    beyond the headers), each member and their total checked against the bound."""
    return {name: (shape, dtype) for name, shape, dtype, _ in _npz_members(path, None)}


def read_npz(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive (or only ``names``), each read once into its array."""
    return {name: arr for name, _, _, arr in _npz_members(path, names, read=True)}


def _npz_members(path: Path, names: list[str] | None, read: bool = False) -> Iterator[tuple]:
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as z:
            total = 0
            for info in z.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise DataError(f"{path}: member {info.filename!r} is not an .npy array; write it with numpy.savez")
                name = info.filename[: -len(".npy")]
                if names is not None and name not in names:
                    continue
                where = f"{path}: member {name!r}"
                DECLARED_BYTES.check(info.file_size, where)
                with z.open(info) as f:
                    shape, dtype, fortran = _npy_header(f, where)
                    _check_npy_size(shape, dtype, info.file_size - f.tell(), where)
                    total += declared_bytes(shape, dtype)
                    DECLARED_BYTES.check(total, f"{path} (its arrays together)")
                    yield name, shape, dtype, _fill(f, shape, dtype, fortran, where) if read else None
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, RuntimeError,
            NotImplementedError, ValueError) as e:  # fmt: skip
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {str(e)[:200]}); "
                        "write it with numpy.savez") from e  # fmt: skip

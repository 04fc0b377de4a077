"""Writing what a command produces, whatever the disk does: every output file appears whole or
not at all (written under a temporary name beside it, then renamed), a read-only or full disk is
one :class:`~karmma.errors.DataError` naming the path and the fix, and a command checks that its
output folder is writable *before* a long evaluation or extraction starts."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from karmma.errors import DataError


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device; free some space or write elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only?); choose a writable place"
    if e.errno == errno.EISDIR:
        return "it is a folder; give a file name"
    if e.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return f"{e.strerror or e}"


def write_failed(path: Path, e: OSError) -> DataError:
    """The one-line error for a failed write of ``path``."""
    return DataError(f"cannot write {path}: {_why(e)}")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """``path`` holds ``data`` entirely, or is left as it was (nothing half-written, no temp left)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a folder; give a file name")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e) from e
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, **kw: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, **{"indent": 2, **kw}))


def check_writable(folder: str | Path, what: str = "output") -> Path:
    """Create ``folder`` if needed and prove a file can be written there (a probe written, synced
    and removed) — before any long work whose result would go there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the {what} folder {folder} is a file; give a folder")
    probe = folder / f".karmma-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise DataError(f"the {what} folder {folder} is not writable: {_why(e)}") from e
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return folder


def check_file_writable(path: str | Path, what: str = "output") -> Path:
    """``path`` can be written as a file: not a folder, and its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"the {what} {path} is a folder; give a file name")
    check_writable(path.parent if str(path.parent) else Path("."), what)
    return path


def not_an_input(out: str | Path, inputs: dict[str, str | Path]) -> None:
    """Refuse to write ``out`` over a file the same command reads (``inputs``: flag -> path)."""
    out = Path(out)
    if not out.exists():
        return
    for flag, path in inputs.items():
        try:
            same = Path(path).is_file() and os.path.samefile(out, path)
        except OSError:
            same = False
        if same:
            raise DataError(f"--out {out} is the file given as {flag}; writing there would destroy it — "
                            "choose another --out")  # fmt: skip

"""Paths a user names on the command line: a symbolic link to nothing is one named error (what the
link points at, and the fix), not a traceback or a misleading "not found"."""

from __future__ import annotations

import os
from pathlib import Path

from karmma.errors import DataError


def dangling(path: str | Path) -> str | None:
    """Where ``path`` (or the first of its folders) points, if it is a symbolic link to nothing."""
    path = Path(path)
    for p in (*reversed(path.parents), path):
        if str(p) not in ("", ".", "/") and p.is_symlink() and not p.exists():
            return f"{p} is a symbolic link to {os.readlink(p)}, which does not exist"
    return None


def no_dangling_link(path: str | Path, what: str) -> Path:
    """``path``, unless it is a symbolic link to nothing: then a :class:`DataError` naming ``what``."""
    why = dangling(path)
    if why:
        raise DataError(f"{what}: {why}; fix the link, or give the real path")
    return Path(path)


def writable_out(out: str | Path) -> Path:
    """``--out`` checked before long work: not a link to nothing, a folder that takes a file."""
    from karmma.outputs import check_writable

    return check_writable(no_dangling_link(out, "--out"), "--out")


def writable_file(path: str | Path, flag: str) -> Path:
    """An output file (``--json``, ``--out``) checked before long work: not a link to nothing, not a
    folder, and its folder writable."""
    from karmma.outputs import check_file_writable

    return check_file_writable(no_dangling_link(path, flag), flag)

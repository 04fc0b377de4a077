"""Reading the CSV files users hand karmma (EPIC-KITCHENS-100 annotations and class lists, the
``labels.csv`` of a video folder) so that every way such a file goes wrong is one named error
with its fix, never a traceback: another encoding (UTF-16, Latin-1), a row shorter than the
header, a NUL byte, an oversized field, a missing column, an empty value or a duplicated id.

A UTF-8 byte-order mark (as Excel saves "CSV UTF-8") is accepted. The file may be at most
:data:`karmma.limits.ANNOTATION_BYTES` (an annotation file of every EPIC-100 segment is ~10 MB).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from karmma.errors import DataError
from karmma.limits import ANNOTATION_BYTES

_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def read_text(path: Path) -> str:
    """A user's text file (CSV or JSON), bounded in size, as UTF-8 (a byte-order mark dropped)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    ANNOTATION_BYTES.check(path.stat().st_size, str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from e
    for bom, name in _BOMS.items():
        if data.startswith(bom):
            raise DataError(f"{path}: is {name} text; save it as UTF-8 (e.g. Excel: 'CSV UTF-8 (Comma delimited)')")
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 4]!r}); save it as UTF-8 CSV"
        ) from e


def read_rows(
    path: str | Path, required: list[str], what: str = "CSV file", id_column: str | None = None
) -> list[dict]:
    """The rows of ``path`` as dicts, with every ``required`` column present and non-empty in every
    row; ``id_column``: its values must be distinct (duplicates are refused, naming them)."""
    path = Path(path)
    text = read_text(path)
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise DataError(f"{path}, line {line}: holds a NUL byte; the file is corrupt or not a {what}")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise DataError(f"{path}: the header names column(s) {twice} more than once; keep one of each")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} (it has {header[:12]}); is this a {what}?")
        rows = []
        for row in reader:
            line = reader.line_num
            if None in row:  # more values than the header names
                raise DataError(f"{path}, line {line}: {len(header) + len(row[None])} values for {len(header)} columns")
            torn = [c for c, v in row.items() if isinstance(v, str) and ("\n" in v or "\r" in v)]
            if torn:  # a stray quote: the field ran on over the rows after it, which would be lost
                raise DataError(f"{path}, line {line}: {torn} run over several lines (an unmatched quote \" in "
                                "the row or one before it?); remove the stray quote")  # fmt: skip
            empty = [c for c in required if row.get(c) in (None, "")]
            if empty:
                raise DataError(f"{path}, line {line}: no value for {empty} (the row is short or the cell empty)")
            rows.append(row)
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: not a readable CSV ({e})") from e
    if id_column is not None:
        dup = sorted(k for k, n in Counter(r[id_column] for r in rows).items() if n > 1)
        if dup:
            raise DataError(f"{path}: {len(dup)} {id_column}(s) appear more than once, e.g. {dup[:5]}; "
                            "each must name one row — remove the duplicates")  # fmt: skip
    return rows

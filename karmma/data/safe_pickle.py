"""The restricted unpickler for community feature pickles (the EPIC UDA TBN files): numpy arrays,
dicts, lists, tuples, numbers and strings, and nothing else.

A pickle is a program; this one may call only numpy's own array reconstruction, and each call is
checked before it runs:

* every global a pickle names is replaced by a guard: ``numpy.ndarray`` only as the subtype
  argument of ``_reconstruct`` (with shape ``(0,)``, as numpy writes it) — never called with a
  buffer and strides; ``numpy.dtype`` only for numeric and string codes; ``scalar`` only with
  exactly its dtype's bytes; protocol 5's ``_frombuffer`` only over bytes of exactly the declared
  size; ``_codecs.encode`` only with latin-1 (how protocol 0-2 pickles store bytes). Anything else
  is refused by name before it runs;
* the bytes the arrays declare are counted, together, against
  :data:`karmma.limits.DECLARED_BYTES`, as is the size of the file before it is read;
* the pickle machine is Python's own, run with a bounded number of operations, memo indices,
  dict sizes and string-only dict keys (no hash flooding), no sets, and reads never larger than
  what is left of the file: no input can make it allocate ahead, loop, or recurse.
"""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from karmma.data.pickle_guards import (  # noqa: F401
    _SAFE_GLOBALS,
    Budget,
    _Array,
    _brief,
    _Bytes,
    _Dtype,
    _DtypeProxy,
    _Encode,
    _FromBuffer,
    _Guard,
    _nbytes,
    _Ndarray,
    _OrderedDict,
    _Reconstruct,
    _Scalar,
)
from karmma.errors import DataError
from karmma.limits import DECLARED_BYTES

MAX_OPERATIONS = 20_000_000  # a TBN pickle of every EPIC-100 segment takes well under a million
MAX_DICT_KEYS = 10_000
MAX_NODES = 10_000_000  # containers and values walked after loading


class _Ops(dict):
    """The opcode table, counting: a pickle runs at most MAX_OPERATIONS operations."""

    def __init__(self, table: dict, u: _Unpickler) -> None:
        super().__init__(table)
        self.left, self.u = MAX_OPERATIONS, u

    def __getitem__(self, op: int) -> Any:
        self.left -= 1
        if self.left < 0:
            raise DataError(f"{self.u.path}: over {MAX_OPERATIONS:,} pickle operations; a feature pickle holds a "
                            "few arrays and a list of ids — this one is not a feature pickle")  # fmt: skip
        try:
            return dict.__getitem__(self, op)
        except KeyError:
            raise DataError(f"{self.u.path}: not a pickle (unknown opcode {op:#04x}) or a corrupt one") from None


class _Capped:
    """A file whose reads never ask for more than what is left of it (a declared length cannot
    make the reader allocate ahead)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline()
        self.left -= len(line)
        return line


class _Unpickler(pickle._Unpickler):  # the Python implementation: every operation goes through dispatch
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f: _Capped, path: Path, budget: Budget) -> None:
        super().__init__(f, encoding="latin1")  # Python 2 pickles: byte strings as latin-1 text
        self.path, self.budget = path, budget
        self.dispatch = _Ops(type(self).dispatch, self)

    def refuse(self, why: str) -> DataError:
        return DataError(f"{self.path}: refused to unpickle {why}; this file is not a plain feature pickle")

    def find_class(self, module: str, name: str) -> _Guard:
        guard = _SAFE_GLOBALS.get((module, name))
        if guard is None:
            raise DataError(
                f"{self.path}: refused to unpickle {module[:100]}.{name[:100]} — only numpy arrays, dicts, lists, "
                "tuples, numbers and strings are read; this file is not a plain feature pickle (it could run code)"
            )
        return guard(self)

    def dtype_of(self, x: Any) -> np.dtype:
        if not (isinstance(x, _DtypeProxy) and x._u is self):
            raise self.refuse("an array or scalar without a numpy dtype")
        return x.dtype

    def shape_of(self, x: Any) -> tuple[int, ...]:
        if type(x) is not tuple or len(x) > 32 or any(type(d) is not int or not 0 <= d < 1 << 62 for d in x):
            raise self.refuse("an array shape that is not a tuple of sizes")
        if math.prod(max(d, 1) for d in x) >= 1 << 62:  # numpy cannot index it, even with no element
            raise self.refuse(f"an array shape {x} beyond what an array can be")
        return x

    # -- operations whose stock versions could allocate ahead, hash-flood or build sets --------

    def _key(self, d: Any, key: Any) -> None:
        if type(d) is not dict or type(key) is not str:
            raise self.refuse("a dict entry with a key that is not a string")
        if len(d) >= MAX_DICT_KEYS and key not in d:
            raise self.refuse(f"a dict of over {MAX_DICT_KEYS:,} keys")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._key(self.stack[-1], key)
        self.stack[-1][key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        d = self.stack[-1]
        for i in range(0, len(items), 2):
            self._key(d, items[i])
            d[items[i]] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        d: dict = {}
        for i in range(0, len(items), 2):
            self._key(d, items[i])
            d[items[i]] = items[i + 1]
        self.append(d)

    def load_put(self) -> None:
        i = int(self.readline()[:-1])
        if not 0 <= i < 1 << 32:
            raise self.refuse("a memo index out of range")
        self.memo[i] = self.stack[-1]

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) != n:
            raise DataError(f"{self.path}: truncated (a byte array of {n} bytes runs past the end of the file)")
        self.append(bytearray(data))

    def load_set(self) -> None:
        raise self.refuse("a set")

    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.PUT[0]] = load_put
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    for _op in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_op[0]] = load_set


def safe_unpickle(path: str | Path, budget: Budget | None = None) -> Any:
    """Load a pickle of numpy arrays and plain containers; refuse anything else by name. The
    arrays it declares count against ``budget`` (shared by the files of one folder)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    size = path.stat().st_size
    DECLARED_BYTES.check(size, f"{path} (the pickle file)")
    budget = budget or Budget()
    try:
        with open(path, "rb") as f:
            u = _Unpickler(_Capped(f, size), path, budget)
            try:
                obj = u.load()
            finally:  # the memo holds every byte string read: not kept until a garbage collection
                u.memo.clear()
                u.stack, u.metastack = [], []
    except DataError as e:
        if str(path) in str(e):
            raise
        raise DataError(f"{path}: {e}") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be a feature pickle") from None
    except Exception as e:  # whatever the bytes make the pickle machine raise: a malformed file
        raise DataError(f"{path}: not a readable feature pickle ({type(e).__name__}: {str(e)[:200]})") from e
    try:
        return plain(obj, path)
    except (ValueError, TypeError, MemoryError) as e:  # an array numpy cannot view as a plain one
        raise DataError(f"{path}: not a readable feature pickle ({type(e).__name__}: {str(e)[:200]})") from e


def plain(obj: Any, path: Path) -> Any:
    """``obj`` with its unpickled arrays as plain ndarrays; refuses anything that is not a dict,
    list, tuple, string, number, None or numeric/string array (walked once per object: a graph of
    shared references is not walked once per path)."""
    seen: set[int] = set()
    todo = [obj]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if len(seen) > MAX_NODES:
            raise DataError(f"{path}: over {MAX_NODES:,} values; not a feature pickle")
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(v, _Array):
                    x[k] = v = v.view(np.ndarray)
                todo.append(v)
        elif isinstance(x, list):
            for i, v in enumerate(x):
                if isinstance(v, _Array):
                    x[i] = v = v.view(np.ndarray)
                todo.append(v)
        elif isinstance(x, tuple):
            todo.extend(x)
        elif isinstance(x, np.ndarray | np.generic):
            if x.dtype.hasobject:
                raise DataError(f"{path}: holds an object array; only numeric arrays are read")
        elif isinstance(x, _Guard):
            raise DataError(f"{path}: holds numpy's {x.what} itself, not data; not a plain feature pickle")
        elif not isinstance(x, str | bytes | bytearray | int | float | type(None)):
            raise DataError(f"{path}: holds a {type(x).__name__}; not a plain feature pickle")
    return obj.view(np.ndarray) if isinstance(obj, _Array) else obj

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
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from karmma.errors import DataError
from karmma.limits import DECLARED_BYTES

MAX_OPERATIONS = 20_000_000  # a TBN pickle of every EPIC-100 segment takes well under a million
MAX_DICT_KEYS = 10_000
MAX_NODES = 10_000_000  # containers and values walked after loading
_DTYPE_CODE = re.compile(r"[biufc]\d{1,2}|[SU]\d{1,9}")


class Budget:
    """The bytes the arrays of one or more pickles declare, together (one bound for a folder)."""

    def __init__(self) -> None:
        self.arrays = 0
        self.encoded = 0

    def take(self, n: int, where: str, encoded: bool = False) -> None:
        if encoded:
            self.encoded += n
            DECLARED_BYTES.check(self.encoded, f"{where} (the byte strings its arrays are built from)")
        else:
            self.arrays += n
            DECLARED_BYTES.check(self.arrays, f"{where} (its arrays together)")


class _Guard:
    """What ``find_class`` hands the pickle instead of a numpy or builtin callable."""

    __slots__ = ("_u",)
    what = "it"

    def __init__(self, u: _Unpickler) -> None:
        self._u = u

    def refuse(self, why: str) -> DataError:
        return DataError(f"{self._u.path}: refused to unpickle {why} — not how numpy pickles arrays; "
                         "this file is not a plain feature pickle (it could run code)")  # fmt: skip

    def __call__(self, *args: Any) -> Any:
        raise self.refuse(f"a direct call of {self.what}")

    def __setstate__(self, state: Any) -> None:  # BUILD on a guard: never part of a genuine pickle
        raise self.refuse(f"a state set on {self.what}")


class _Ndarray(_Guard):
    __slots__ = ()
    what = "numpy.ndarray (an array over a buffer with its own shape and strides)"


class _DtypeProxy(_Guard):
    """A numeric or string dtype, its byte order set by numpy's dtype state (BUILD)."""

    __slots__ = ("dtype",)
    what = "numpy.dtype"

    def __init__(self, u: _Unpickler, dtype: np.dtype) -> None:
        super().__init__(u)
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        ok = (type(state) is tuple and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
              and state[2:5] == (None, None, None) and all(type(v) is int for v in state[5:])
              and state[5] in (-1, self.dtype.itemsize))  # fmt: skip
        if not ok:
            raise self.refuse("a dtype state other than a plain numeric or string type's")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


class _Dtype(_Guard):
    __slots__ = ()
    what = "numpy.dtype"

    def __call__(self, code: Any = None, align: Any = False, copy: Any = False) -> _DtypeProxy:
        flags_ok = all(type(v) in (bool, int) and v in (0, 1) for v in (align, copy))  # numpy 1.x wrote 0/1
        if not (type(code) is str and _DTYPE_CODE.fullmatch(code) and flags_ok):
            raise self.refuse(f"numpy.dtype({_brief(code)}): only numeric and string dtypes are read")
        try:
            return _DtypeProxy(self._u, np.dtype(code))
        except TypeError as e:
            raise self.refuse(f"numpy.dtype({code!r}) ({e})") from None


class _Reconstruct(_Guard):
    __slots__ = ()
    what = "numpy's _reconstruct"

    def __call__(self, subtype: Any = None, shape: Any = None, code: Any = None) -> _Array:
        plain = type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == 0
        if not (isinstance(subtype, _Ndarray) and plain and code in (b"b", "b")):
            raise self.refuse("_reconstruct with arguments other than numpy's own (ndarray, (0,), b'b')")
        arr = _Array((0,), np.int8)
        arr._u = self._u
        return arr


class _Array(np.ndarray):
    """An array being unpickled: its state (shape, dtype, bytes) is checked before numpy sets it."""

    _u: _Unpickler

    def __setstate__(self, state: Any) -> None:
        u = getattr(self, "_u", None)
        if u is None or type(state) is not tuple or len(state) != 5 or state[0] != 1:
            raise DataError("refused to unpickle an array state other than numpy's (1, shape, dtype, order, bytes)")
        _, shape, dtype, fortran, raw = state
        dtype = u.dtype_of(dtype)
        shape = u.shape_of(shape)
        if type(fortran) is not bool or type(raw) not in (bytes, str):
            raise u.refuse("an array whose data is not a byte string")
        nbytes = _nbytes(shape, dtype)
        u.budget.take(nbytes, str(u.path))
        if len(raw) != nbytes:
            raise u.refuse(f"an array of shape {shape} {dtype} over {len(raw)} bytes (it needs {nbytes})")
        super().__setstate__((1, shape, dtype, fortran, raw))
        del self._u  # built once; the unpickler (and its memo of byte strings) is not kept alive


class _Scalar(_Guard):
    __slots__ = ()
    what = "numpy's scalar"

    def __call__(self, dtype: Any = None, data: Any = None) -> Any:
        dtype = self._u.dtype_of(dtype)
        if type(data) is str:
            data = data.encode("latin-1")
        if type(data) is not bytes or len(data) != dtype.itemsize:
            raise self.refuse(f"a {dtype} scalar that is not {dtype.itemsize} bytes")
        return np.frombuffer(data, dtype)[0]


class _FromBuffer(_Guard):
    __slots__ = ()
    what = "numpy's _frombuffer"

    def __call__(self, buf: Any = None, dtype: Any = None, shape: Any = None, order: Any = "C", axes: Any = None):
        dtype, shape = self._u.dtype_of(dtype), self._u.shape_of(shape)
        if type(buf) not in (bytes, bytearray) or order not in ("C", "F", "K"):
            raise self.refuse("_frombuffer over something other than the pickle's own bytes")
        nbytes = _nbytes(shape, dtype)
        self._u.budget.take(nbytes, str(self._u.path))
        if len(buf) != nbytes:
            raise self.refuse(f"an array of shape {shape} {dtype} over {len(buf)} bytes (it needs {nbytes})")
        arr = np.frombuffer(buf, dtype=dtype)
        if order != "K":
            arr = arr.reshape(shape, order=order)
        elif type(axes) is tuple and all(type(a) is int for a in axes) and sorted(axes) == list(range(len(shape))):
            arr = arr.reshape(shape, order="C").transpose(axes)
        else:
            raise self.refuse("_frombuffer with an axis order that is not a permutation")
        return arr.view(_Array)  # as _reconstruct's arrays: a later state set on it is checked (and refused)


class _Encode(_Guard):
    __slots__ = ()
    what = "_codecs.encode"

    def __call__(self, text: Any = None, encoding: Any = None, *rest: Any) -> bytes:
        if type(text) is not str or encoding not in ("latin1", "latin-1") or rest:
            raise self.refuse(f"_codecs.encode with {_brief(encoding)} (only latin-1 byte strings are read)")
        self._u.budget.take(len(text), str(self._u.path), encoded=True)
        return text.encode("latin-1")


class _Bytes(_Guard):
    __slots__ = ()
    what = "bytes"
    empty: type = bytes  # protocol 0-2 write an empty byte string as bytes()

    def __call__(self, *args: Any) -> Any:
        if args:
            raise self.refuse(f"{self.what}(...) with arguments")
        return self.empty()


class _OrderedDict(_Bytes):
    __slots__ = ()
    what = "collections.OrderedDict"
    empty = dict  # its items follow as SETITEMS; a plain dict keeps their order


_SAFE_GLOBALS: dict[tuple[str, str], type[_Guard]] = {
    ("numpy", "ndarray"): _Ndarray,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _Encode,
    ("builtins", "bytes"): _Bytes,
    ("__builtin__", "bytes"): _Bytes,
    ("collections", "OrderedDict"): _OrderedDict,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _Reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _Scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FromBuffer for core in ("core", "_core")},
}


def _brief(x: Any) -> str:
    return repr(x[:40]) if isinstance(x, str | bytes) else type(x).__name__


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


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

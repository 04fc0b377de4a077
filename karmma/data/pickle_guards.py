"""The guards of the restricted unpickler (:mod:`karmma.data.safe_pickle`): what a feature pickle's
globals are replaced by, each checking its call before numpy runs it, and the byte budget the
arrays it declares are counted against."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from karmma.errors import DataError
from karmma.limits import DECLARED_BYTES

if TYPE_CHECKING:
    from karmma.data.safe_pickle import _Unpickler

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

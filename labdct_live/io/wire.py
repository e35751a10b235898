"""The bytes a document travels as between processes: msgpack plus one numpy extension.

A document is a msgpack map. Numpy arrays and numpy scalars travel as msgpack *extension*
types whose payload is a small msgpack array: the dtype string, the shape (arrays only) and
the raw bytes. Decoding rebuilds them with :func:`numpy.frombuffer`, so it never runs code
from the wire. Only plain numbers are accepted: dtype kinds ``b``, ``i``, ``u``, ``f`` and
``c`` with an explicit byte order (``<`` or ``>``, ``|`` for one-byte types). Objects,
strings, structured records and datetimes are refused with :class:`WireDecodeError`.

msgpack-numpy (this package's former codec) encoded an object array as a pickle and decoded
it with :func:`pickle.loads`: anyone able to send a document could run code in the receiver.
Its array marker (a map with the bytes key ``b"nd"``) is refused here too, so a peer still
using it gets a clear error instead of a silently different document.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

__all__ = ["ARRAY_EXT", "MAX_NDIM", "SCALAR_EXT", "WireDecodeError", "pack", "unpack",
           "append_document", "read_documents"]

#: msgpack extension codes of a numpy array and of a numpy scalar ('L' and 'M').
ARRAY_EXT = 76
SCALAR_EXT = 77
#: Deeper arrays are refused (numpy itself stops at 64 dimensions, older numpy at 32).
MAX_NDIM = 32
#: Numbers and booleans only: other kinds are objects, strings, records or dates.
_KINDS = frozenset("biufc")
_MSGPACK_NUMPY_MARKER = b"nd"


class WireDecodeError(ValueError):
    """Bytes received from another process that are not a document this codec accepts."""


# ------------------------------------------------------------------------------ encoding
def pack(doc: dict) -> bytes:
    """Serialise a document to msgpack, numpy arrays and scalars as extension types.

    Parameters
    ----------
    doc : dict
        A document: maps, lists, strings, numbers, booleans, None, bytes and numpy arrays or
        scalars of numeric or bool dtype (string arrays travel as lists of strings).

    Returns
    -------
    bytes

    Raises
    ------
    TypeError
        For values the wire does not carry (Python objects, object or datetime arrays).
    """
    return msgpack.packb(doc, default=_encode, use_bin_type=True)


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in _KINDS:
            return _array_ext(obj)
        if obj.dtype.kind in "US":
            return obj.tolist()  # plain msgpack strings: nothing to rebuild on the other side
        raise TypeError(f"numpy arrays of dtype {obj.dtype} do not travel over the wire")
    if isinstance(obj, np.generic) and obj.dtype.kind in _KINDS:
        return msgpack.ExtType(SCALAR_EXT, msgpack.packb([obj.dtype.str, obj.tobytes()]))
    if isinstance(obj, np.generic) and obj.dtype.kind in "US":
        return obj.item()
    if isinstance(obj, complex):
        return _encode(np.complex128(obj))
    raise TypeError(f"values of type {type(obj).__name__} do not travel over the wire")


def _array_ext(array: np.ndarray) -> msgpack.ExtType:
    data = np.ascontiguousarray(array).tobytes()
    return msgpack.ExtType(ARRAY_EXT, msgpack.packb([array.dtype.str, list(array.shape), data]))


# ------------------------------------------------------------------------------ decoding
def unpack(data: bytes) -> dict:
    """Inverse of :func:`pack`; never executes code from the wire.

    Parameters
    ----------
    data : bytes
        One serialised document.

    Returns
    -------
    dict

    Raises
    ------
    WireDecodeError
        When ``data`` is not msgpack, not a map, or holds an extension or an array this
        codec refuses (see the module docstring).
    """
    try:
        doc = msgpack.unpackb(data, ext_hook=_decode_ext, object_hook=_refuse_msgpack_numpy,
                              raw=False, strict_map_key=False)
    except WireDecodeError:
        raise
    except Exception as exc:  # FormatError, ExtraData, StackError, UnicodeDecodeError...
        raise WireDecodeError(f"not a msgpack document: {exc}") from exc
    if not isinstance(doc, dict):
        raise WireDecodeError(f"a document is a map, not a {type(doc).__name__}")
    return doc


def _refuse_msgpack_numpy(obj: dict) -> dict:
    if _MSGPACK_NUMPY_MARKER in obj:
        raise WireDecodeError("a msgpack-numpy array marker (b'nd'): that codec can carry "
                              "pickles and is not accepted")
    return obj


def _decode_ext(code: int, payload: bytes) -> np.ndarray | np.generic:
    if code == ARRAY_EXT:
        dtype_str, shape, data = _fields(payload, 3)
        return _array(_dtype(dtype_str), _shape(shape), data)
    if code == SCALAR_EXT:
        dtype_str, data = _fields(payload, 2)
        dtype = _dtype(dtype_str)
        return _array(dtype, (), data)[()]
    raise WireDecodeError(f"unknown msgpack extension type {code}")


def _fields(payload: bytes, n: int) -> list:
    """The extension's header: a flat msgpack array of ``n`` items, nothing nested."""
    try:
        fields = msgpack.unpackb(payload, raw=False, use_list=True,
                                 ext_hook=_refuse_nested_ext, strict_map_key=True)
    except WireDecodeError:
        raise
    except Exception as exc:
        raise WireDecodeError(f"malformed numpy extension: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != n:
        raise WireDecodeError(f"malformed numpy extension: expected {n} fields")
    if not isinstance(fields[0], str) or not isinstance(fields[-1], bytes):
        raise WireDecodeError("malformed numpy extension: expected a dtype string and bytes")
    return fields


def _refuse_nested_ext(code: int, payload: bytes):
    raise WireDecodeError("nested extension types are not accepted")


def _dtype(text: str) -> np.dtype:
    """A numeric or bool dtype spelled canonically, e.g. ``'<f4'``, ``'>i8'``, ``'|u1'``."""
    if len(text) < 3 or text[0] not in "<>|" or text[1] not in _KINDS or not text[2:].isdigit():
        raise WireDecodeError(f"dtype {text!r} refused: only numeric and bool dtypes with "
                              "an explicit byte order are accepted")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise WireDecodeError(f"dtype {text!r} refused: {exc}") from exc
    # canonical spelling only: '|' exactly for one-byte types, '<'/'>' for the others
    if dtype.str != text:
        raise WireDecodeError(f"dtype {text!r} refused: numpy spells it {dtype.str!r}")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireDecodeError(f"shape refused: a list of at most {MAX_NDIM} sizes expected")
    if not all(type(n) is int and 0 <= n < 2**62 for n in shape):
        raise WireDecodeError(f"shape {shape} refused: sizes are non-negative integers")
    return tuple(shape)


def _array(dtype: np.dtype, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise WireDecodeError(f"{len(data)} bytes for a {dtype.str} array of shape {shape}: "
                              f"{expected} expected")
    try:
        # a copy: frombuffer over msgpack's bytes is read-only, and receivers write in place
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except ValueError as exc:
        raise WireDecodeError(f"array of shape {shape} refused: {exc}") from exc


# ------------------------------------------------------------------------ document files
def append_document(path: str | os.PathLike, name: str, doc: dict) -> None:
    """Append ``(name, doc)`` to a document file: records of a 4-byte big-endian length and
    :func:`pack` of ``{"name": name, "doc": doc}``, flushed to disk."""
    record = pack({"name": name, "doc": doc})
    with open(path, "ab") as f:
        f.write(len(record).to_bytes(4, "big") + record)
        f.flush()
        os.fsync(f.fileno())


def read_documents(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """The ``(name, doc)`` pairs of a document file written by :func:`append_document`; a
    record cut short at the end (the writer died) is dropped, anything else malformed raises
    :class:`WireDecodeError`."""
    with open(path, "rb") as f:
        while header := f.read(4):
            record = f.read(int.from_bytes(header, "big"))
            if len(header) < 4 or len(record) < int.from_bytes(header, "big"):
                return
            entry = unpack(record)
            if not isinstance(entry.get("name"), str) or not isinstance(entry.get("doc"), dict):
                raise WireDecodeError(f"{path}: a record that is not a (name, document) pair")
            yield entry["name"], entry["doc"]

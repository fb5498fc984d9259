"""The wire format: msgpack with numpy values as tagged maps, byte for byte what openpi-client 0.1.2's
`msgpack_numpy` writes, reproduced here because openpi-client pins numpy<2.

    np.ndarray -> {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": [*arr.shape]}
    np.generic -> {b"__npgeneric__": True, b"data": item.item(), b"dtype": item.dtype.str}

Tag and field names are msgpack *bin* (bytes) keys, user keys are *str*, in that order. The decoder
is written for untrusted input: no pickle and no extension types ever; only the dtypes in `DTYPES`;
the payload length must equal prod(shape) * itemsize; message size, array size and nesting depth are
bounded. Whatever it refuses raises `RequestError`, naming where in the message the fault is.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from clap_vla.errors import ClapError

PROTOCOL = "openpi-msgpack-numpy"
PROTOCOL_VERSION = 1
BAD_REQUEST = "bad request: "
"""Prefix of the text frame answering a request the server refuses; the connection stays open."""

ARRAY_TAG, SCALAR_TAG = b"__ndarray__", b"__npgeneric__"
DATA, DTYPE, SHAPE = b"data", b"dtype", b"shape"
# dtype.str of every accepted dtype: little-endian (what every client machine writes) and never object,
# void or datetime, so an array is always plain numbers reinterpreted from bytes.
DTYPES = {s: np.dtype(s) for s in ("|b1", "|u1", "<i4", "<i8", "<f2", "<f4", "<f8")}
_PACKABLE_KINDS = "biuf"
MAX_NDIM = 8
MAX_DEPTH = 32


class RequestError(ClapError):
    """A request the server refuses (malformed, over a limit, or not an observation); the message says
    where and what was expected."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _PACKABLE_KINDS:
        raise TypeError(f"cannot send a numpy value of dtype {obj.dtype}: only bool, integer and float numbers")
    if isinstance(obj, np.ndarray):
        return {ARRAY_TAG: True, DATA: obj.tobytes(), DTYPE: obj.dtype.str, SHAPE: list(obj.shape)}
    if isinstance(obj, np.generic):
        return {SCALAR_TAG: True, DATA: obj.item(), DTYPE: obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}: use dicts, lists, str, bytes, numbers and numpy arrays")


def packb(obj: Any) -> bytes:
    """One message in openpi's format (the same bytes as openpi_client.msgpack_numpy.packb)."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise RequestError(f"msgpack extension type {code} is not accepted (arrays travel as tagged maps)")


def unpackb(data: bytes, max_bytes: int | None = None, max_array_elements: int | None = None) -> Any:
    """A message back to Python and numpy values, refusing anything outside the format (`RequestError`).
    Arrays come back writable and owning their memory."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RequestError(f"expected a binary msgpack message, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise RequestError(
            f"the message is {len(data):,} bytes; the limit is {max_bytes:,} ({max_bytes / (1 << 20):g} MiB)"
        )
    try:
        # strict_map_key: map keys are str or bytes only; raw=False: str arrives as str, bin as bytes.
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except RequestError:
        raise
    except Exception as e:  # any failure to parse untrusted bytes is the sender's fault
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise RequestError(f"the message is not valid msgpack ({detail})") from None
    return _restore(obj, "", 0, max_array_elements)


def _child(path: str, key: Any) -> str:
    return f"{key}" if not path else f"{path}[{key!r}]"


def _restore(obj: Any, path: str, depth: int, max_elements: int | None) -> Any:
    if depth > MAX_DEPTH:
        raise RequestError(f"{path or 'the message'}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        if ARRAY_TAG in obj:
            return _array(obj, path or "the message", max_elements)
        if SCALAR_TAG in obj:
            return _scalar(obj, path or "the message")
        return {k: _restore(v, _child(path, k), depth + 1, max_elements) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, f"{path}[{i}]", depth + 1, max_elements) for i, v in enumerate(obj)]
    return obj


def _dtype(d: dict, path: str) -> np.dtype:
    name = d.get(DTYPE)
    if name not in DTYPES:
        raise RequestError(
            f"{path}: dtype {name!r} is not accepted; accepted: {', '.join(DTYPES)} "
            "(bool, uint8, int32, int64, float16, float32, float64, little-endian)"
        )
    return DTYPES[name]


def _array(d: dict, path: str, max_elements: int | None) -> np.ndarray:
    dtype = _dtype(d, path)
    shape, data = d.get(SHAPE), d.get(DATA)
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise RequestError(f"{path}: shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}")
    n = math.prod(shape)  # Python ints: no overflow for a hostile shape
    if max_elements is not None and n > max_elements:
        raise RequestError(f"{path}: shape {tuple(shape)} has {n:,} elements; the limit is {max_elements:,}")
    if not isinstance(data, bytes):
        raise RequestError(f"{path}: data must be bytes, got {type(data).__name__}")
    if len(data) != n * dtype.itemsize:
        raise RequestError(
            f"{path}: {len(data):,} bytes of data for shape {tuple(shape)} {dtype.name} "
            f"(expected {n * dtype.itemsize:,} = {n:,} x {dtype.itemsize})"
        )
    out = np.empty(shape, dtype=dtype.newbyteorder("="))
    out.reshape(-1)[:] = np.frombuffer(data, dtype=dtype)  # a copy: the policy may write into its input
    return out


def _scalar(d: dict, path: str) -> np.generic:
    dtype = _dtype(d, path)
    value = d.get(DATA)
    if not isinstance(value, bool | int | float):
        raise RequestError(f"{path}: scalar data must be a number, got {type(value).__name__}")
    try:
        return dtype.type(value)
    except (OverflowError, ValueError, TypeError) as e:
        raise RequestError(f"{path}: {value!r} is not a {dtype.name} ({e})") from None


__all__ = ["BAD_REQUEST", "DTYPES", "PROTOCOL", "PROTOCOL_VERSION", "RequestError", "packb", "unpackb"]

"""msgpack wire format with numpy arrays.

An ndarray travels as a tagged map ``{"__ndarray__": <raw bytes, C order>, "dtype": "<f4", "shape": [..]}``; numpy
scalars travel as plain numbers. Decoding accepts only plain numeric/bool dtypes (never ``object``), checks that the
byte count matches dtype x shape, and reports the path of the offending field (``observation.rgb_obs.cam``).
Any msgpack implementation can produce these maps, so non-Python clients need no custom ext type.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

NDARRAY_TAG = "__ndarray__"
MAX_NDIM = 8
MAX_DEPTH = 32  # nesting of maps and lists; a request is about three deep
# little-endian / byte-order-free numeric dtypes only
ALLOWED_DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})


class WireError(ValueError):
    """A message that cannot be decoded; ``field`` is the dotted path of the problem."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot send ndarray of dtype {obj.dtype} (only bool/int/uint/float)")
        arr = np.ascontiguousarray(obj)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return {NDARRAY_TAG: arr.tobytes(), "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch.Tensor, without importing torch
        return _encode_default(obj.detach().cpu().numpy())
    raise TypeError(f"cannot serialise object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _decode_array(d: dict, path: str) -> np.ndarray:
    extra = set(d) - {NDARRAY_TAG, "dtype", "shape"}
    if extra:
        raise WireError(path, f"ndarray map has unexpected keys {sorted(extra)}")
    data, dtype, shape = d[NDARRAY_TAG], d.get("dtype"), d.get("shape")
    if not isinstance(data, bytes):
        raise WireError(path, "ndarray data must be msgpack bin")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise WireError(path, f"ndarray dtype {dtype!r} not allowed (plain little-endian bool/int/uint/float only)")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise WireError(path, f"ndarray shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}")
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize  # Python ints: numpy's int64 product wraps around for absurd shapes
    if expected != len(data):
        raise WireError(path, f"ndarray of dtype {dtype} and shape {shape} needs {expected} bytes, got {len(data)}")
    try:
        return np.frombuffer(data, dtype=dt).reshape(shape).copy()  # writable copy, native layout
    except ValueError as e:  # an empty array with dimensions numpy cannot index
        raise WireError(path, f"ndarray shape {shape} is not usable ({e})") from None


def _walk(obj: Any, path: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:  # msgpack itself nests deeper than Python's recursion allows here
        raise WireError(path or "message", f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, dict):
        if NDARRAY_TAG in obj:
            return _decode_array(obj, path)
        return {k: _walk(v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(obj)]
    return obj


def unpackb(data: bytes, what: str = "message") -> Any:
    """Decode a message; raises :class:`WireError` naming the field (``what`` if the bytes are not msgpack)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises ValueError/FormatError/StackError/ExtraData/UnicodeDecodeError/...
        raise WireError(what, f"not a valid msgpack message ({type(e).__name__}: {e})") from None
    return _walk(obj, "")

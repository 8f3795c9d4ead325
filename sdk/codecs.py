"""Codecs for one tensor on the wire, chosen per route by the packager where they cut bytes.

Every codec turns one array into exactly one frame, so the wire keeps its rule of one raw frame per
tensor entry (a frame over 2 MiB travels in parts, joined again on receipt: sdk/wire.py). The header entry's dtype and shape always describe the tensor the receiver gets
back (the subset for `channels`, float32 for a float32 tensor sent as fp16), so a receiver's
checks against its plan do not change. Frames are in the host's byte order (little-endian on
every supported device), C order:

    codec     frame                                                      params on the wire
    dense     the n elements                                             {}
    channels  the elements of x.take(channels, axis)                     {"axis": a}
    bitmap    mask: np.packbits(bits != 0), zero-padded to a multiple    {"nnz": k}
              of 8 bytes (ceil(n / 64) * 8 bytes); then the k non-zero
              elements in order (so they start 8-byte aligned)
    fp16      n float16                                                  {}
    int8      c float32 scales; if affine, c float32 offsets; then n    {"mode": "affine" | "symmetric",
              uint8 (affine) or int8 (symmetric) codes                    "axis": a}  (no axis: c = 1)

`channels` sends no indices: both ends know them from the plan. `bitmap`, `fp16` and `int8` fall
back to dense by themselves, and say so by naming "dense" as the codec actually used: `bitmap`
when the mask and values would not be smaller than the dense bytes, `fp16` and `int8` for
non-float tensors, for empty ones, when their frame would not be smaller, and when the tensor holds
values they cannot carry (fp16: a finite value beyond +-65504; int8: inf or nan). So a sender can
call `encode` unconditionally with its route's codec.

Exactness: dense, channels and bitmap are bit-exact (bitmap keeps -0.0 and every nan payload);
fp16 is exact on float16-representable values and otherwise has a relative error of at most
2**-11 (absolute at most 2**-25 below 2**-14, the float16 subnormal range); int8 errs by at most
scale_c / 2 per channel c, plus float32 rounding of the result, with scale_c = (max_c - min_c) / 255
(affine: min_c, and so zero after a ReLU, decodes exactly) or max_c |x| / 127 (symmetric).

`decode` validates every field and byte count before it allocates or reads anything, caps the
decoded tensor at MAX_DECODED_BYTES, and raises WireError for anything malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import WireError

KINDS = ("dense", "channels", "bitmap", "fp16", "int8")
DTYPES = frozenset({"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
                    "uint32", "int64", "uint64", "bool"})
MAX_DECODED_BYTES = 1 << 30
MAX_NDIM = 16
_SOURCE_KEYS = {"dense": set(), "channels": {"axis", "channels"}, "bitmap": set(), "fp16": set(),
                "int8": {"axis", "mode"}}
_FP16_FROM = frozenset({"float32", "float64"})
_INT8_FROM = frozenset({"float16", "float32", "float64"})
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_MODES = ("affine", "symmetric")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT8_MAX_ABS = _FLOAT32_MAX / 4  # |offset| + 255 * scale stays finite in float32, with room to spare
_FLOAT16_FINITE = 65519.0  # float16 rounds anything below 65520 to a finite value (its max is 65504)


@dataclass(frozen=True)
class Encoded:
    """One tensor ready for the wire: its header entry's codec, params, dtype, shape, and its frame."""

    codec: str
    params: dict[str, Any]
    dtype: str
    shape: tuple[int, ...]
    frame: memoryview

    @property
    def nbytes(self) -> int:
        return self.frame.nbytes


def encode(kind: str, params: Mapping[str, Any] | None, array: np.ndarray) -> Encoded:
    """Encode one tensor with codec `kind` and its plan params, or as dense where that codec does not pay."""
    x = _native(array)
    p = check_params(kind, params, x.dtype.name, x.shape)
    if kind == "channels":
        return _encode_channels(x, p)
    if kind == "dense" or x.size == 0:
        return _dense(x)
    return _ENCODERS[kind](x, p)


def decode(codec: str, params: Any, dtype: Any, shape: Any, frame: Any) -> np.ndarray:
    """The tensor a header entry (codec, params, dtype, shape) and its frame describe; WireError if malformed.

    dense and channels give a read-only view on the frame (no copy); the others a new array.
    """
    if not isinstance(codec, str) or codec not in _DECODERS:
        raise WireError(f"unknown codec {codec!r}; this agent knows {', '.join(KINDS)} (update the sender or this agent)")
    if not isinstance(params, Mapping):
        raise WireError(f"{codec}: codec params must be a map")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"dtype {dtype!r} is not allowed")
    shape = _shape(shape)
    item = np.dtype(dtype).itemsize
    span = 1
    for d in shape:
        span *= max(d, 1)
    if span * item > MAX_DECODED_BYTES:
        raise WireError(f"a {dtype}{list(shape)} tensor exceeds the {MAX_DECODED_BYTES}-byte limit")
    count = 1
    for d in shape:
        count *= d
    try:
        buf = memoryview(frame)
        if buf.ndim != 1 or buf.itemsize != 1:
            buf = buf.cast("B")
    except (TypeError, ValueError):
        buf = None
    if buf is None or not buf.c_contiguous:
        raise WireError(f"{codec}: the frame is not a contiguous byte buffer")
    out = _DECODERS[codec](buf, params, np.dtype(dtype), shape, count)
    if dtype == "bool" and out.size and out.view(np.uint8).max() > 1:
        raise WireError(f"{codec}: a bool tensor holds bytes other than 0 and 1")
    return out


def wire_bytes(kind: str, params: Mapping[str, Any] | None, array: np.ndarray) -> int:
    """Frame bytes `encode` sends for this array (header params, a few bytes, not counted).

    Exact, except that the fallbacks for fp16 overflow and non-finite int8 input (dense) are not seen.
    """
    x = np.asarray(array)
    nonzero = None
    if kind == "bitmap" and x.size:
        nonzero = int(np.count_nonzero(_flat(_native(x)).view(_UINT[x.itemsize])))
    return frame_bytes(kind, params, x.dtype.name, x.shape, nonzero)


def frame_bytes(kind: str, params: Mapping[str, Any] | None, dtype: str, shape: Sequence[int],
                nonzero: float | None = None) -> int:
    """Frame bytes of a dtype[shape] tensor under `kind`, for the packager's cost model.

    `nonzero` is the (expected) number of non-zero elements, used by bitmap; None means all.
    """
    p = check_params(kind, params, dtype, shape)
    item = np.dtype(dtype).itemsize
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    dense = n * item
    if kind == "channels":
        return dense // shape[p["axis"]] * len(p["channels"]) if shape[p["axis"]] else 0
    if kind == "dense" or n == 0:
        return dense
    if kind == "bitmap":
        k = n if nonzero is None else min(n, max(0, int(np.ceil(nonzero))))
        return min(dense, _mask_bytes(n) + k * item)
    if kind == "fp16":
        return 2 * n if dtype in _FP16_FROM else dense
    if dtype not in _INT8_FROM:
        return dense
    return min(dense, _int8_bytes(n, _int8_channels(p, shape), p["mode"]))


def roundtrip(kind: str, params: Mapping[str, Any] | None, array: np.ndarray) -> np.ndarray:
    """What the receiver gets for `array` (for in-process delivery and fidelity reports), without a wire."""
    if kind in ("dense", "bitmap"):  # exact: no need to touch the data
        check_params(kind, params)
        return np.asarray(array)
    e = encode(kind, params, array)
    return decode(e.codec, e.params, e.dtype, e.shape, e.frame)


def check_params(kind: str, params: Mapping[str, Any] | None, dtype: str | None = None,
                 shape: Sequence[int] | None = None) -> dict[str, Any]:
    """A route's codec params, checked (against dtype and shape when given); ValueError names the problem."""
    if kind not in _SOURCE_KEYS:
        raise ValueError(f"unknown codec {kind!r}; use one of {', '.join(KINDS)}")
    p = dict(params or {})
    extra = set(p) - _SOURCE_KEYS[kind]
    if extra:
        raise ValueError(f"codec {kind!r} takes no parameter {', '.join(sorted(extra))} "
                         f"(it takes {', '.join(sorted(_SOURCE_KEYS[kind])) or 'none'})")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} cannot travel on the wire; use one of {', '.join(sorted(DTYPES))}")
    ndim = None if shape is None else len(shape)
    if kind == "channels":
        if "axis" not in p or "channels" not in p:
            raise ValueError("codec 'channels' needs params {'axis': int, 'channels': [int, ...]}")
        p["axis"] = _axis(p["axis"], ndim)
        ch = p["channels"]
        if isinstance(ch, (str, bytes)) or not isinstance(ch, (Sequence, np.ndarray)) or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in ch):
            raise ValueError(f"channels must be a list of ints, not {ch!r}")
        p["channels"] = tuple(int(c) for c in ch)
        if len(set(p["channels"])) != len(p["channels"]) or any(c < 0 for c in p["channels"]):
            raise ValueError("channels must be distinct non-negative indices")
        if shape is not None and p["channels"] and max(p["channels"]) >= shape[p["axis"]]:
            raise ValueError(f"channel {max(p['channels'])} is out of range for axis {p['axis']} "
                             f"of size {shape[p['axis']]}")
    if kind == "int8":
        p.setdefault("mode", "affine")
        if p["mode"] not in _MODES:
            raise ValueError(f"int8 mode must be 'affine' or 'symmetric', not {p['mode']!r}")
        if "axis" not in p:  # per channel of NCHW by default; per tensor where there is no axis 1
            p["axis"] = 1 if ndim is None or ndim >= 2 else None
        if p["axis"] is not None:
            p["axis"] = _axis(p["axis"], ndim)
    return p


# --- encoders -------------------------------------------------------------------------------


def _dense(x: np.ndarray) -> Encoded:
    return Encoded("dense", {}, x.dtype.name, tuple(x.shape), _frame(x))


def _encode_channels(x: np.ndarray, p: dict) -> Encoded:
    axis, ch = p["axis"], p["channels"]
    lo = ch[0] if ch else 0
    if ch == tuple(range(lo, lo + len(ch))):  # a run of channels: a slice copies faster than take
        sub = np.ascontiguousarray(x[(slice(None),) * axis + (slice(lo, lo + len(ch)),)])
    else:
        sub = np.take(x, np.asarray(ch, dtype=np.intp), axis=axis)
    return Encoded("channels", {"axis": axis}, x.dtype.name, tuple(sub.shape), _frame(sub))


def _encode_bitmap(x: np.ndarray, p: dict) -> Encoded:
    flat = _flat(x)
    n, item = flat.size, flat.itemsize
    bits = flat.view(_UINT[item]) != 0  # on the bits: -0.0 and nan survive exactly
    nnz = int(np.count_nonzero(bits))
    mask = _mask_bytes(n)
    if mask + nnz * item >= n * item:
        return _dense(x)
    out = np.empty(mask + nnz * item, dtype=np.uint8)
    packed = np.packbits(bits)
    out[:packed.size] = packed
    out[packed.size:mask] = 0
    # a gather by index beats boolean indexing, whose branch on every element mispredicts at 50 % zeros
    np.take(flat, np.flatnonzero(bits), out=out[mask:].view(flat.dtype))
    return Encoded("bitmap", {"nnz": nnz}, x.dtype.name, tuple(x.shape), memoryview(out))


def _encode_fp16(x: np.ndarray, p: dict) -> Encoded:
    if x.dtype.name not in _FP16_FROM:
        return _dense(x)
    with np.errstate(over="ignore"):
        h = np.asarray(x, dtype=np.float16, order="C")
    special = (h.view(np.uint16) & 0x7C00) == 0x7C00  # inf or nan (on the bits: numpy's isfinite on float16 is slow)
    if special.any() and np.count_nonzero(special) != np.count_nonzero(~np.isfinite(x)):
        return _dense(x)  # a finite value beyond float16's range would arrive as inf
    return Encoded("fp16", {}, x.dtype.name, tuple(x.shape), _frame(h))


def _encode_int8(x: np.ndarray, p: dict) -> Encoded:
    if x.dtype.name not in _INT8_FROM:
        return _dense(x)
    mode, axis, n = p["mode"], p["axis"], x.size
    pre, c, post = _split(x.shape, axis)
    size = _int8_bytes(n, c, mode)
    if size >= x.nbytes:
        return _dense(x)
    x3 = _flat(x).reshape(pre, c, post)
    lo = x3.min(axis=(0, 2)).astype(np.float64)
    hi = x3.max(axis=(0, 2)).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or max(-lo.min(), hi.max()) > _INT8_MAX_ABS:
        return _dense(x)  # inf or nan, or values whose decoding could overflow float32
    if mode == "symmetric":
        off = np.zeros(c, dtype=np.float32)
        scale = (np.maximum(-lo, hi) / 127).astype(np.float32)
    else:
        off = lo.astype(np.float32)
        scale = ((hi - lo) / 255).astype(np.float32)
    scale[scale == 0] = 1  # a constant channel (or one narrower than float32 resolves) decodes to its offset
    out = np.empty(size, dtype=np.uint8)
    out[:4 * c].view(np.float32)[:] = scale
    head = 4 * c
    if mode == "affine":
        out[head:head + 4 * c].view(np.float32)[:] = off
        head += 4 * c
    t = np.subtract(x3, off[None, :, None], dtype=np.float32)
    np.divide(t, scale[None, :, None], out=t)
    np.rint(t, out=t)
    lo_q, hi_q, qtype = (0, 255, np.uint8) if mode == "affine" else (-127, 127, np.int8)
    np.clip(t, lo_q, hi_q, out=t)
    np.copyto(out[head:].view(qtype).reshape(pre, c, post), t, casting="unsafe")
    wire = {"mode": mode} if axis is None else {"mode": mode, "axis": axis}
    return Encoded("int8", wire, x.dtype.name, tuple(x.shape), memoryview(out))


_ENCODERS = {"bitmap": _encode_bitmap, "fp16": _encode_fp16, "int8": _encode_int8}


# --- decoders: everything checked before it is used ------------------------------------------


def _decode_dense(buf: memoryview, params: Mapping, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    _wire_keys("dense", params, set())
    _length("dense", buf, count * dtype.itemsize, dtype, shape)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def _decode_channels(buf: memoryview, params: Mapping, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    _wire_keys("channels", params, {"axis"}, {"axis"})
    _wire_axis("channels", params["axis"], len(shape))
    _length("channels", buf, count * dtype.itemsize, dtype, shape)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def _decode_bitmap(buf: memoryview, params: Mapping, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    _wire_keys("bitmap", params, {"nnz"}, {"nnz"})
    nnz = params["nnz"]
    if not _is_int(nnz) or not 0 <= nnz <= count:
        raise WireError(f"bitmap: nnz must be an int from 0 to {count} (the element count), not {nnz!r}")
    mask = _mask_bytes(count)
    _length("bitmap", buf, mask + nnz * dtype.itemsize, dtype, shape)
    raw = np.frombuffer(buf, dtype=np.uint8, count=mask)
    used, tail = divmod(count, 8)
    if raw[used + (tail > 0):].any() or (tail and raw[used] & (0xFF >> tail)):
        raise WireError("bitmap: mask bits past the last element are set")
    bits = np.unpackbits(raw[:used + (tail > 0)], count=count).view(bool)
    if np.count_nonzero(bits) != nnz:
        raise WireError(f"bitmap: the mask marks {np.count_nonzero(bits)} elements but {nnz} values were sent")
    out = np.zeros(count, dtype=dtype)
    out[np.flatnonzero(bits)] = np.frombuffer(buf, dtype=dtype, count=nnz, offset=mask)
    return out.reshape(shape)


def _decode_fp16(buf: memoryview, params: Mapping, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    _wire_keys("fp16", params, set())
    if dtype.name not in _FP16_FROM:
        raise WireError(f"fp16 carries float32 or float64 tensors, not {dtype.name}")
    _length("fp16", buf, 2 * count, dtype, shape)
    return np.frombuffer(buf, dtype=np.float16, count=count).astype(dtype).reshape(shape)


def _decode_int8(buf: memoryview, params: Mapping, dtype: np.dtype, shape: tuple, count: int) -> np.ndarray:
    _wire_keys("int8", params, {"mode", "axis"}, {"mode"})
    mode, axis = params["mode"], params.get("axis")
    if mode not in _MODES:
        raise WireError(f"int8: mode must be 'affine' or 'symmetric', not {mode!r}")
    if dtype.name not in _INT8_FROM:
        raise WireError(f"int8 carries float tensors, not {dtype.name}")
    if axis is not None:
        _wire_axis("int8", axis, len(shape))
    pre, c, post = _split(shape, axis)
    _length("int8", buf, _int8_bytes(count, c, mode), dtype, shape)
    head = 4 * c
    scale = np.frombuffer(buf, dtype=np.float32, count=c)
    off = np.frombuffer(buf, dtype=np.float32, count=c, offset=head) if mode == "affine" else np.zeros(1, np.float32)
    with np.errstate(all="ignore"):  # nan and inf fail the test below; overflow is what it looks for
        off64, span = off.astype(np.float64), scale.astype(np.float64) * (255 if mode == "affine" else 127)
        if dtype == np.float16:  # decoded in float32, then cast: the values, from off to off + span
            # (symmetric: -span to span), must stay within float16's range
            top, limit = np.maximum(np.abs(off64), np.abs(off64 + span)), _FLOAT16_FINITE
        else:
            top, limit = np.abs(off64) + span, _FLOAT32_MAX
        if c and not ((scale >= 0).all() and (top <= limit).all()):
            raise WireError(f"int8: scales must be non-negative and scales and offsets finite, within {dtype.name}'s range")
    q = np.frombuffer(buf, dtype=np.int8 if mode == "symmetric" else np.uint8, count=count,
                      offset=head * (2 if mode == "affine" else 1)).reshape(pre, c, post)
    out = np.empty((pre, c, post), dtype=np.float32)
    np.multiply(q, scale[None, :, None], out=out)
    if mode == "affine":
        out += off[None, :, None]
    return (out if dtype == np.float32 else out.astype(dtype)).reshape(shape)


_DECODERS = {"dense": _decode_dense, "channels": _decode_channels, "bitmap": _decode_bitmap,
             "fp16": _decode_fp16, "int8": _decode_int8}


# --- helpers ----------------------------------------------------------------------------------


def _native(array: Any) -> np.ndarray:
    x = np.asarray(array)
    if x.dtype.name not in DTYPES:
        raise ValueError(f"dtype {x.dtype.name} cannot travel on the wire; use one of {', '.join(sorted(DTYPES))}")
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def _flat(x: np.ndarray) -> np.ndarray:
    """x as a 1-d C-contiguous array: a view where it already is one."""
    return np.ascontiguousarray(x).reshape(-1)


def _frame(x: np.ndarray) -> memoryview:
    return memoryview(_flat(x)).cast("B") if x.size else memoryview(b"")


def _mask_bytes(n: int) -> int:
    return (n + 63) // 64 * 8


def _int8_bytes(n: int, c: int, mode: str) -> int:
    return 4 * c * (2 if mode == "affine" else 1) + n


def _int8_channels(p: dict, shape: Sequence[int]) -> int:
    return 1 if p["axis"] is None else int(shape[p["axis"]])


def _split(shape: Sequence[int], axis: int | None) -> tuple[int, int, int]:
    if axis is None:
        n = 1
        for d in shape:
            n *= d
        return 1, 1, n
    pre = post = 1
    for d in shape[:axis]:
        pre *= d
    for d in shape[axis + 1:]:
        post *= d
    return pre, int(shape[axis]), post


def _axis(a: Any, ndim: int | None) -> int:
    if not _is_int(a):
        raise ValueError(f"axis must be an int, not {a!r}")
    if ndim is None:
        return int(a)
    if not -ndim <= a < ndim:
        raise ValueError(f"axis {a} is out of range for a {ndim}-d tensor")
    return int(a) % ndim


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
            _is_int(d) and 0 <= d < (1 << 40) for d in shape):
        raise WireError(f"shape must be a list of at most {MAX_NDIM} non-negative ints")
    return tuple(int(d) for d in shape)


def _wire_keys(codec: str, params: Mapping, allowed: set, required: set = frozenset()) -> None:
    keys = set(params)
    if not keys <= allowed or not required <= keys:
        raise WireError(f"{codec}: codec params must have keys {sorted(required)} (optional "
                        f"{sorted(allowed - required)}), got {sorted(map(repr, keys))}")


def _wire_axis(codec: str, axis: Any, ndim: int) -> None:
    if not _is_int(axis) or not 0 <= axis < ndim:
        raise WireError(f"{codec}: axis {axis!r} is out of range for a {ndim}-d tensor")


def _length(codec: str, buf: memoryview, need: int, dtype: np.dtype, shape: tuple) -> None:
    if buf.nbytes != need:
        raise WireError(f"{codec}: frame is {buf.nbytes} bytes, a {dtype.name}{list(shape)} tensor needs {need}")


__all__ = ["DTYPES", "Encoded", "KINDS", "MAX_DECODED_BYTES", "check_params", "decode", "encode",
           "frame_bytes", "roundtrip", "wire_bytes"]

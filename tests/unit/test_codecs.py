"""Wire codecs on bytes: round trips, exactness and error bounds, fallbacks to dense, and a decoder
that answers every malformed or hostile frame with WireError and nothing else."""

from __future__ import annotations

import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepart import codecs
from edgepart.errors import WireError
from edgepart.codecs import decode, encode, frame_bytes, roundtrip, wire_bytes

pytestmark = pytest.mark.timeout(60)

RNG = np.random.default_rng(20240604)
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (5, 3), (1, 8, 5, 5), (2, 16, 7, 9), (1, 3, 33, 65)]
ALL = [("dense", {}), ("bitmap", {}), ("fp16", {}), ("int8", {}), ("int8", {"mode": "symmetric"}),
       ("int8", {"axis": None}), ("int8", {"axis": 0, "mode": "symmetric"})]


def relu(shape, zeros=0.5, dtype=np.float32):
    """A post-ReLU-like tensor with about `zeros` of its elements exactly zero."""
    x = np.abs(RNG.standard_normal(shape)).astype(dtype) + dtype(0.01)
    return np.where(RNG.random(shape) < zeros, dtype(0), x).astype(dtype)


def wire(e: codecs.Encoded) -> np.ndarray:
    """Decode as a receiver would: params through msgpack, the frame as received bytes."""
    params = msgpack.unpackb(msgpack.packb(e.params, use_bin_type=True), raw=False)
    shape = msgpack.unpackb(msgpack.packb(list(e.shape)))
    return decode(e.codec, params, e.dtype, shape, bytes(e.frame))


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def variants(x: np.ndarray):
    """The same values as C-contiguous, Fortran-ordered, transposed-back and strided arrays."""
    yield x
    if x.ndim >= 2:
        yield np.asfortranarray(x)
        yield np.ascontiguousarray(x.T).T
    if x.size:
        big = np.zeros((2,) + x.shape, dtype=x.dtype)
        big[1] = x
        yield big[1]
        yield np.repeat(x[..., None], 2, axis=-1)[..., 1] if x.ndim else x


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.95])
def test_exact_codecs_round_trip_bit_for_bit(shape, zeros):
    x = relu(shape, zeros)
    for v in variants(x):
        for kind in ("dense", "bitmap"):
            e = encode(kind, {}, v)
            y = wire(e)
            assert y.dtype == x.dtype and y.shape == x.shape and bits(y) == bits(x), (kind, v.strides)
            assert e.nbytes == wire_bytes(kind, {}, v)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lossy_codecs_round_trip_every_shape_and_layout(shape):
    x = relu(shape, 0.5)
    for v in variants(x):
        for kind, params in ALL[2:]:
            if params.get("axis") == 0 and not shape:
                continue  # a 0-d tensor has no axis 0 (the default axis falls back to one scale)
            y = wire(encode(kind, params, v))
            assert y.shape == x.shape and y.dtype == x.dtype
            assert np.allclose(y, x, rtol=2.0 ** -10, atol=x.max(initial=0) / 200), (kind, params, v.strides)


@pytest.mark.parametrize("dtype", sorted(codecs.DTYPES))
def test_dense_and_bitmap_carry_every_dtype(dtype):
    x = (RNG.random((4, 6, 5)) < 0.2).astype(dtype) * (RNG.integers(1, 100, (4, 6, 5))).astype(dtype)
    for kind in ("dense", "bitmap"):
        e = encode(kind, {}, x)
        assert e.codec == kind  # 80 % zeros: the mask pays even for one-byte elements
        y = wire(e)
        assert y.dtype == x.dtype and bits(y) == bits(x)


def test_bitmap_keeps_negative_zero_and_nan_payloads_exactly():
    x = np.zeros(1000, np.float32)
    x[::7] = -0.0
    x[3] = np.nan
    x[5] = np.float32(np.frombuffer(np.uint32(0x7FC00123).tobytes(), np.float32)[0])
    x[11] = -np.inf
    e = encode("bitmap", {}, x)
    assert e.codec == "bitmap"
    assert bits(wire(e)) == bits(x)


def test_dense_is_zero_copy_and_decodes_as_a_view():
    x = RNG.standard_normal((4, 256)).astype(np.float32)
    e = encode("dense", {}, x)
    assert np.shares_memory(np.frombuffer(e.frame, np.float32), x)
    frame = bytearray(e.frame)
    y = decode(e.codec, e.params, e.dtype, e.shape, frame)
    assert np.shares_memory(y, np.frombuffer(frame, np.uint8)) and (y == x).all()


def test_big_endian_input_travels_in_native_order():
    x = np.arange(12, dtype=">f4").reshape(3, 4)
    for kind, params in ALL:
        y = wire(encode(kind, params, x))
        assert y.dtype == np.float32 and np.allclose(y, x, atol=11 / 127 / 2 + 1e-6), kind


# --- channels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [[2, 3, 4], [5, 0, 3], [7], [], list(range(8))], ids=str)
@pytest.mark.parametrize("axis", [1, -3, 3])
def test_channels_sends_exactly_the_subset(channels, axis):
    x = relu((2, 8, 5, 8))
    for v in variants(x):
        e = encode("channels", {"axis": axis, "channels": channels}, v)
        want = np.take(x, channels, axis=axis)
        assert e.codec == "channels" and e.shape == want.shape and e.params == {"axis": axis % 4}
        assert e.nbytes == want.nbytes == wire_bytes("channels", {"axis": axis, "channels": channels}, v)
        assert bits(wire(e)) == bits(want)


def test_channels_from_a_plan_route_tuple_params():
    # Plan.Codec freezes lists into tuples; the agent passes dict(route.codec.params).
    params = dict((("axis", 1), ("channels", (1, 3))))
    e = encode("channels", params, np.arange(24, dtype=np.float32).reshape(2, 4, 3))
    assert e.shape == (2, 2, 3) and wire(e)[1, 1, 2] == 3 * 3 + 2 + 12


@pytest.mark.parametrize("params", [{}, {"axis": 1}, {"channels": [0]}, {"axis": 4, "channels": [0]},
                                    {"axis": 1, "channels": [8]}, {"axis": 1, "channels": [1, 1]},
                                    {"axis": 1, "channels": [-1]}, {"axis": 1, "channels": "01"},
                                    {"axis": True, "channels": [0]}, {"axis": 1, "channels": [0.5]},
                                    {"axis": 1, "channels": [0], "extra": 1}])
def test_bad_channel_params_are_refused_at_the_sender(params):
    with pytest.raises(ValueError):
        encode("channels", params, np.zeros((1, 8, 2, 2), np.float32))


def test_unknown_codec_or_param_or_dtype_is_refused_at_the_sender():
    x = np.zeros(4, np.float32)
    for kind, params, arr in [("zstd", {}, x), ("fp16", {"axis": 1}, x), ("int8", {"mode": "log"}, x),
                              ("int8", {"axis": 2}, np.zeros((2, 2), np.float32)),
                              ("dense", {}, np.zeros(2, np.complex64)), ("dense", {}, np.array(["a"]))]:
        with pytest.raises(ValueError):
            encode(kind, params, arr)


# --- bitmap fallback -------------------------------------------------------------------------------


def test_bitmap_falls_back_to_dense_when_it_would_not_save_bytes():
    dense = RNG.standard_normal((1, 64, 28, 28)).astype(np.float32)
    e = encode("bitmap", {}, dense)
    assert e.codec == "dense" and e.nbytes == dense.nbytes and e.params == {}
    sparse = relu((1, 64, 28, 28), 0.9)
    e = encode("bitmap", {}, sparse)
    assert e.codec == "bitmap" and e.nbytes < 0.15 * sparse.nbytes


def test_bitmap_break_even_is_exact():
    n = 64 * 32  # float32: the mask costs n / 8 bytes = the bytes of n / 32 values
    x = np.ones(n, np.float32)
    x[: n // 32] = 0  # mask + values == dense: not smaller, so dense
    assert encode("bitmap", {}, x).codec == "dense"
    x[n // 32] = 0  # one more zero: 4 bytes smaller
    e = encode("bitmap", {}, x)
    assert e.codec == "bitmap" and e.nbytes == x.nbytes - 4
    assert frame_bytes("bitmap", {}, "float32", (n,), nonzero=n - n // 32 - 1) == e.nbytes
    assert frame_bytes("bitmap", {}, "float32", (n,)) == x.nbytes


def test_bitmap_of_all_zeros_is_just_the_mask():
    x = np.zeros((3, 100), np.float32)
    e = encode("bitmap", {}, x)
    assert e.codec == "bitmap" and e.nbytes == 40 and e.params == {"nnz": 0}
    assert bits(wire(e)) == bits(x)


# --- fp16 and int8: bounds and fallbacks ----------------------------------------------------------------


def test_fp16_is_exact_on_float16_values_and_within_its_bound_otherwise():
    exact = RNG.standard_normal((3, 50, 7)).astype(np.float16).astype(np.float32)
    e = encode("fp16", {}, exact)
    assert e.codec == "fp16" and e.nbytes == exact.nbytes // 2 and bits(wire(e)) == bits(exact)
    x = (RNG.standard_normal(100_000) * np.exp(RNG.uniform(-20, 10, 100_000))).astype(np.float32)
    x = np.clip(x, -60000, 60000)
    y = wire(encode("fp16", {}, x))
    assert y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - x)
    assert (err <= np.maximum(np.abs(x) * 2.0 ** -11, 2.0 ** -25)).all()


def test_fp16_keeps_inf_and_nan_but_falls_back_to_dense_on_overflow():
    x = np.array([1.0, np.inf, -np.inf, np.nan, 65504.0], np.float32)
    e = encode("fp16", {}, x)
    assert e.codec == "fp16"
    np.testing.assert_array_equal(wire(e), x)
    x[0] = 70000.0
    e = encode("fp16", {}, x)
    assert e.codec == "dense" and bits(wire(e)) == bits(x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fp16_of_float64_comes_back_float64(dtype):
    x = RNG.standard_normal((4, 4)).astype(dtype)
    e = encode("fp16", {}, x)
    assert e.codec == "fp16" and wire(e).dtype == dtype


@pytest.mark.parametrize("shape", [(1, 8, 5, 5), (2, 16, 7, 9), (64, 3), (4, 200), (1000,), ()], ids=str)
@pytest.mark.parametrize("mode", ["affine", "symmetric"])
@pytest.mark.parametrize("zeros", [0.0, 0.6])
def test_int8_error_is_within_half_a_step_per_channel(shape, mode, zeros):
    x = relu(shape, zeros) * np.float32(3) - (np.float32(1) if mode == "symmetric" else np.float32(0))
    e = encode("int8", {"mode": mode}, x)
    if e.codec == "dense":  # too few elements per channel for the scales to pay
        assert frame_bytes("int8", {"mode": mode}, "float32", shape) == x.nbytes and bits(wire(e)) == bits(x)
        return
    assert e.nbytes == wire_bytes("int8", {"mode": mode}, x) < x.nbytes
    y = wire(e)
    axis = e.params.get("axis")
    red = tuple(i for i in range(x.ndim) if i != axis)
    lo, hi = x.min(axis=red, keepdims=True), x.max(axis=red, keepdims=True)
    step = (hi - lo) / 255 if mode == "affine" else np.maximum(-lo, hi) / 127
    slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(lo), np.abs(hi))
    assert (np.abs(y - x) <= step / 2 + slack).all()
    if mode == "affine" and zeros:  # the channel minimum, zero after a ReLU, is exact
        assert (y[x == 0] == 0).all()


def test_int8_handles_constant_channels_and_keeps_per_channel_scales_independent():
    x = np.ones((1, 4, 64, 64), np.float32)
    x[0, 1] = 0
    x[0, 2] = -5
    x[0, 3] = np.linspace(0, 1000, 64 * 64).reshape(64, 64)
    y = wire(encode("int8", {}, x))
    np.testing.assert_array_equal(y[0, :3], x[0, :3])
    assert np.abs(y[0, 3] - x[0, 3]).max() <= 1000 / 255 / 2 + 1e-3


def test_int8_falls_back_to_dense_for_non_finite_non_float_and_tiny_tensors():
    x = relu((1, 4, 16, 16))
    x[0, 2, 3, 3] = np.nan
    assert encode("int8", {}, x).codec == "dense"
    x[0, 2, 3, 3] = np.inf
    assert encode("int8", {}, x).codec == "dense"
    assert encode("int8", {}, np.arange(1000, dtype=np.int32)).codec == "dense"
    assert encode("fp16", {}, np.arange(1000, dtype=np.int32)).codec == "dense"
    assert encode("int8", {}, np.ones((1, 100), np.float32)).codec == "dense"  # scales cost more than codes
    for big in (np.array([3e38, -3e38] * 1000), np.array([3e38, -3e38] * 1000, np.float32), np.full(1000, 1e300)):
        assert encode("int8", {"axis": None}, big).codec == "dense"  # decoding could overflow float32


def test_float16_input_quantises_and_decodes_to_float16():
    x = relu((1, 8, 32, 32)).astype(np.float16)
    e = encode("int8", {}, x)
    assert e.codec == "int8" and wire(e).dtype == np.float16


# --- the helpers for the packager and in-process delivery ------------------------------------------------


@pytest.mark.parametrize("kind,params", ALL + [("channels", {"axis": 1, "channels": [0, 2]})])
def test_wire_bytes_and_frame_bytes_match_what_encode_sends(kind, params):
    for shape in [(1, 4, 9, 9), (2, 3, 40), (1, 64, 28, 28)]:
        x = relu(shape, 0.7)
        e = encode(kind, params, x)
        assert wire_bytes(kind, params, x) == e.nbytes
        nonzero = np.count_nonzero(x)
        assert frame_bytes(kind, params, "float32", shape, nonzero=nonzero) == e.nbytes


@pytest.mark.parametrize("kind,params", ALL + [("channels", {"axis": 0, "channels": [1]})])
def test_roundtrip_is_what_the_receiver_gets(kind, params):
    x = relu((3, 16, 20), 0.5)
    np.testing.assert_array_equal(roundtrip(kind, params, x), wire(encode(kind, params, x)))


def test_encoded_params_fit_the_wire_header_limits():
    # sdk/wire.py unpacks headers with max_array_len=64 and short strings: codec params stay tiny.
    for kind, params in ALL + [("channels", {"axis": 1, "channels": list(range(0, 1000, 2))})]:
        e = encode(kind, params, relu((1, 1000, 4, 4), 0.9))
        packed = msgpack.packb(e.params, use_bin_type=True)
        assert len(packed) < 32
        msgpack.unpackb(packed, raw=False, strict_map_key=True, max_array_len=64, max_map_len=64, max_str_len=2048)


# --- the decoder: every malformed input is a WireError ------------------------------------------------


def valid(kind="bitmap", params=None, shape=(2, 8, 6, 6), zeros=0.8):
    e = encode(kind, params or {}, relu(shape, zeros))
    assert e.codec == kind
    return e


@pytest.mark.parametrize("case", [
    "unknown codec", "params not a map", "unknown key", "missing nnz", "nnz bool", "nnz negative", "nnz too big",
    "bad dtype", "dtype object", "shape negative", "shape float", "shape too deep", "shape huge", "shape not list",
    "frame short", "frame long", "frame not buffer", "mask count", "padding bits", "padding bytes",
    "fp16 on int", "int8 on int", "int8 mode", "int8 axis", "int8 axis bool", "int8 nan scale", "int8 negative scale",
    "int8 inf offset", "int8 missing axis shifts layout", "channels no axis", "channels axis range", "bool bytes",
    "shape beyond limit", "empty with huge dim",
])
def test_decoder_refuses(case):
    e = valid()
    codec, params, dtype, shape, frame = e.codec, dict(e.params), e.dtype, list(e.shape), bytearray(e.frame)
    if case == "unknown codec":
        codec = "zstd"
    elif case == "params not a map":
        params = [1]
    elif case == "unknown key":
        params["x"] = 1
    elif case == "missing nnz":
        params = {}
    elif case == "nnz bool":
        params["nnz"] = True
    elif case == "nnz negative":
        params["nnz"] = -1
    elif case == "nnz too big":
        params["nnz"] = 10 ** 30
    elif case == "bad dtype":
        dtype = "complex64"
    elif case == "dtype object":
        dtype = np.float32
    elif case == "shape negative":
        shape[0] = -2
    elif case == "shape float":
        shape[0] = 2.0
    elif case == "shape too deep":
        shape = [1] * 17
    elif case == "shape huge":
        shape = [1 << 40]
    elif case == "shape not list":
        shape = "2,8"
    elif case == "frame short":
        frame = frame[:-1]
    elif case == "frame long":
        frame += b"\0"
    elif case == "frame not buffer":
        frame = [1, 2, 3]
    elif case == "mask count":
        frame[0] ^= 0x80 if frame[0] & 0x80 == 0 else 0x40 if frame[0] & 0x40 == 0 else 0x20
    elif case == "padding bits":
        shape, frame = [5, 5], bytearray(encode("bitmap", {}, np.zeros((5, 5), np.float32)).frame)
        params = {"nnz": 0}
        frame[3] = 0x01  # bit 31 > 25 elements
    elif case == "padding bytes":
        shape, params = [5, 5], {"nnz": 0}
        frame = bytearray(8)
        frame[7] = 0x80
    elif case == "bool bytes":
        codec, params, dtype, shape, frame = "dense", {}, "bool", [4], bytearray(b"\0\1\2\0")
    elif case == "shape beyond limit":
        codec, params, shape, frame = "dense", {}, [1 << 28, 2], bytearray()
    elif case == "empty with huge dim":
        codec, params, shape, frame = "dense", {}, [0, 1 << 39, 1 << 39], bytearray()
    elif case.startswith("fp16") or case.startswith("int8") or case.startswith("channels"):
        if case.startswith("fp16"):
            e = valid("fp16")
        elif case.startswith("channels"):
            e = encode("channels", {"axis": 1, "channels": [1, 2]}, relu((2, 8, 3)))
        else:
            e = valid("int8")
        codec, params, dtype, shape, frame = e.codec, dict(e.params), e.dtype, list(e.shape), bytearray(e.frame)
        if case in ("fp16 on int", "int8 on int"):
            dtype = "int16"
        elif case == "int8 mode":
            params["mode"] = "log"
        elif case == "int8 axis":
            params["axis"] = 4
        elif case == "int8 axis bool":
            params["axis"] = True
        elif case == "int8 nan scale":
            frame[:4] = np.float32(np.nan).tobytes()
        elif case == "int8 negative scale":
            frame[:4] = np.float32(-1).tobytes()
        elif case == "int8 inf offset":
            frame[4 * 8:4 * 8 + 4] = np.float32(np.inf).tobytes()
        elif case == "int8 missing axis shifts layout":
            del params["axis"]
        elif case == "channels no axis":
            params = {}
        elif case == "channels axis range":
            params["axis"] = 3
    with pytest.raises(WireError):
        decode(codec, params, dtype, shape, frame)


def test_decoder_refuses_a_non_contiguous_buffer():
    e = valid("fp16")
    strided = memoryview(np.frombuffer(bytes(e.frame) * 2, np.uint8)[::2])
    with pytest.raises(WireError):
        decode(e.codec, e.params, e.dtype, e.shape, strided)


def _mutations(e: codecs.Encoded, rng: np.random.Generator):
    """Damaged versions of a valid message: flipped bits, cut or grown frames, nudged params and shapes."""
    frame = bytes(e.frame)
    for _ in range(80):
        f, params, shape = bytearray(frame), dict(e.params), list(e.shape)
        what = rng.integers(6)
        if what == 0 and f:
            for i in rng.integers(0, len(f), rng.integers(1, 8)):
                f[i] ^= 1 << int(rng.integers(8))
        elif what == 1:
            f = f[: rng.integers(0, len(f) + 1)]
        elif what == 2:
            f += bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
        elif what == 3 and params:
            k = list(params)[rng.integers(len(params))]
            params[k] = [rng.integers(-3, 3) + (params[k] if isinstance(params[k], int) else 0), None, "affine",
                         "symmetric", 1.5, [1], {}, True, -1, 1 << 62][rng.integers(10)]
        elif what == 4 and shape:
            i = rng.integers(len(shape))
            shape[i] = int(max(0, shape[i] + rng.integers(-2, 3)))
        else:
            shape = shape[::-1] if rng.integers(2) else shape + [1]
        yield e.codec, params, e.dtype, shape, bytes(f)


def test_decoder_on_thousands_of_damaged_messages_raises_only_wire_error():
    rng = np.random.default_rng(7)
    messages = [encode(k, p, relu(s, z)) for k, p in ALL for s in [(1, 8, 6, 6), (3, 20), (130,)] for z in (0.0, 0.9)]
    messages += [encode("channels", {"axis": 1, "channels": [3, 1]}, relu(s)) for s in [(1, 8, 6, 6), (3, 20)]]
    n = ok = 0
    tracemalloc.start()
    try:
        for e in messages:
            for codec, params, dtype, shape, frame in _mutations(e, rng):
                n += 1
                try:
                    y = decode(codec, params, dtype, shape, frame)
                except WireError:
                    continue
                ok += 1
                assert isinstance(y, np.ndarray) and y.shape == tuple(shape) and y.dtype == dtype
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n >= 2000 and 0 < ok < n
    assert peak < 8 << 20


_keys = st.sampled_from(["nnz", "axis", "mode", "channels", "x", ""])
_values = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.integers(-3, 300),
                    st.floats(allow_nan=True), st.text(max_size=12), st.sampled_from(["affine", "symmetric"]),
                    st.lists(st.integers(-2, 10), max_size=4), st.binary(max_size=8))


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    codec=st.one_of(st.sampled_from(codecs.KINDS), st.text(max_size=6), st.lists(st.integers(), max_size=1), st.none()),
    params=st.one_of(st.dictionaries(_keys, _values, max_size=3), st.lists(st.integers(), max_size=2), st.none()),
    dtype=st.one_of(st.sampled_from(sorted(codecs.DTYPES)), st.sampled_from(["complex64", "object", "<f4", "float128"]),
                    st.integers(), st.none()),
    shape=st.one_of(st.lists(st.one_of(st.integers(0, 40), st.integers(-5, 1 << 45), st.booleans(), st.floats()),
                             max_size=18), st.tuples(st.integers(0, 9), st.integers(0, 9)), st.text(max_size=3)),
    frame=st.one_of(st.binary(max_size=3000), st.integers(), st.none()),
)
def test_decoder_fuzz_only_wire_error(codec, params, dtype, shape, frame):
    tracemalloc.start()
    try:
        try:
            y = decode(codec, params, dtype, shape, frame)
        except WireError:
            return
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(y, np.ndarray) and y.shape == tuple(shape)
    assert peak < (1 << 20) + 80 * len(frame)


_VALID = [encode(k, p, relu(s, z)) for k, p in ALL + [("channels", {"axis": 1, "channels": [2, 0]})]
          for s in [(1, 8, 6, 6), (3, 20)] for z in (0.0, 0.9)]


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    which=st.integers(0, len(_VALID) - 1),
    key=st.sampled_from(["nnz", "axis", "mode", "x"]),
    value=st.one_of(st.none(), _values),
    cut=st.integers(-80, 80),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), max_size=6),
    shape_edit=st.one_of(st.none(), st.tuples(st.integers(0, 5), st.integers(-3, 3))),
)
def test_decoder_fuzz_on_damaged_valid_messages(which, key, value, cut, flips, shape_edit):
    e = _VALID[which]
    params, shape, frame = dict(e.params), list(e.shape), bytearray(e.frame)
    if value is not None:
        params[key] = value
    frame = frame[:len(frame) + cut] if cut < 0 else frame + bytes(cut)
    for at, bit in flips:
        if frame:
            frame[at % len(frame)] ^= 1 << bit
    if shape_edit is not None and shape:
        i, d = shape_edit
        shape[i % len(shape)] = max(0, shape[i % len(shape)] + d)
    try:
        y = decode(e.codec, params, e.dtype, shape, bytes(frame))
    except WireError:
        return
    assert y.shape == tuple(shape) and y.dtype == e.dtype

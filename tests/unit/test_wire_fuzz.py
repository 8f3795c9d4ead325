"""The wire fuzzer (issue 15, "Fuzzing and soak"): `edgepart.wire.decode` and `arrays` on messages of
any shape, and the codec decoders on near-valid frames of every kind. Decoding any bytes either
gives back a valid value or raises WireError: never another exception, never a hang, never an
allocation past the documented limits (docs/agents.md, "The wire"); a damaged valid message never
decodes into a tensor whose bytes disagree with its dtype and shape.

Reproducible on any machine: derandomized, no example database. EDGEPART_FUZZ_EXAMPLES=N runs N
examples per property instead of the few hundred of CI (the generators: tests/unit/wirefuzz.py).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from datetime import timedelta

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgepart import codecs
from edgepart.errors import WireError
from edgepart.wire import MAX_FRAMES, MAX_HEADER_BYTES, MAX_NAME, PROTOCOL_VERSION, Header, Status, decode

import wirefuzz
from wirefuzz import EXAMPLES, OFFLINE, ROUTES, Mutator, apply, check, messages, mutated, packb, scalars, structures, valid

pytestmark = pytest.mark.timeout(max(300, EXAMPLES // 5))  # (a larger EDGEPART_FUZZ_EXAMPLES run takes longer)


def fuzz(n: int) -> settings:
    """n examples (EDGEPART_FUZZ_EXAMPLES overrides), derandomized, no database; a 5 s deadline per
    example catches a hang without failing a slow, shared CPU."""
    return settings(max_examples=EXAMPLES or n, deadline=timedelta(seconds=5), derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def traced(fn):
    """fn()'s value (or its exception) and the peak of memory allocated meanwhile (numpy's included)."""
    tracemalloc.start()
    try:
        try:
            return fn(), tracemalloc.get_traced_memory()[1]
        except BaseException as e:  # noqa: BLE001 - handed back, with the peak
            return e, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def in_budget(frames, peak: int) -> None:
    """What decoding may allocate: a constant, plus 64 times the bytes received (a bitmap's mask
    bit per element decodes to an element of at most 8 bytes; docs/agents.md, "The wire")."""
    received = sum(len(f) for f in frames if isinstance(f, (bytes, bytearray)))
    assert peak <= (1 << 20) + 80 * received, f"{peak} bytes allocated decoding {received} bytes"


# -- whole messages ---------------------------------------------------------------------------------------

@fuzz(300)
@given(frames=messages(OFFLINE))
@example(frames=[])
@example(frames=[b""])
@example(frames=[b"\xc1"])
@example(frames=[packb({"v": PROTOCOL_VERSION, "k": "tensor", "p": "0123456789abcdef", "s": "@caller", "ts": [["x", "bool", [2], "dense", {}]]}),
                 b"\x01\x02"])
def test_any_message_decodes_or_raises_wire_error(frames):
    got, peak = traced(lambda: check(frames))
    if isinstance(got, BaseException):
        raise got
    assert got in ("header", "tensor", "ok")
    in_budget(frames, peak)


@fuzz(150)
@given(head=structures(40), frames=st.lists(st.binary(max_size=64), max_size=3))
def test_msgpack_of_any_shape_as_a_header(head, frames):
    try:
        raw = packb(head)
    except (OverflowError, ValueError, TypeError):
        return
    assert check([raw, *frames]) in ("header", "tensor", "ok")


@fuzz(300)
@given(frames=mutated(OFFLINE))
@example(frames=apply(valid(OFFLINE, ("bitmap", {}), 0, 1, 100.0), ("param", "nnz", 1 << 63)))
@example(frames=apply(valid(OFFLINE, ("int8", {}), 0, 1, 100.0), ("swapentry", 1, 3)))  # dtype <-> codec
@example(frames=apply(valid(OFFLINE, ("dense", {}), 0, 1, 100.0), ("swapkeys", "ts", "c")))
def test_a_damaged_valid_message_never_decodes_to_a_tensor_of_the_wrong_size(frames):
    got, peak = traced(lambda: check(frames))  # check() asserts each tensor's bytes = shape x itemsize
    if isinstance(got, BaseException):
        raise got
    in_budget(frames, peak)


_STRIDED = memoryview(np.zeros(2 * 256, np.uint8)[::2])


@fuzz(200)
@given(frames=mutated(OFFLINE), how=st.lists(st.sampled_from(["bytes", "bytearray", "memoryview", "zmq", "strided",
                                                               "float-view", "str", "int"]), min_size=1, max_size=4))
@example(frames=valid(OFFLINE, ("dense", {}), 0, 1, 100.0), how=["bytes", "strided"])  # once a BufferError
@example(frames=valid(OFFLINE, ("dense", {}), 0, 1, 100.0), how=["float-view", "bytes"])
def test_frames_of_any_buffer_type(frames, how):
    """In-process callers hand decode other objects than bytes: any buffer, or none, is WireError or valid."""
    out = []
    for i, f in enumerate(frames):
        kind = how[i % len(how)]
        if kind == "bytearray":
            f = bytearray(f)
        elif kind == "memoryview":
            f = memoryview(f)
        elif kind == "zmq":
            f = zmq.Frame(f)
        elif kind == "strided":  # the same bytes, not contiguous
            f = memoryview(np.repeat(np.frombuffer(f, np.uint8), 2)[::2]) if f else _STRIDED[:0]
        elif kind == "float-view" and len(f) % 4 == 0:  # a typed buffer: items of 4 bytes
            f = memoryview(np.frombuffer(f, np.float32))
        elif kind == "str":
            f = f.decode("latin-1")
        elif kind == "int":
            f = len(f)
        out.append(f)
    check(out)


def test_every_truncation_and_every_bit_flip_of_a_header():
    """Exhaustive where it is cheap: every prefix of every route's header, and every single bit flipped."""
    n = 0
    for route in ROUTES:
        frames = valid(OFFLINE, route, 1, 12345, 250.0)
        head = frames[0]
        outcomes = set()
        for cut in range(len(head) + 1):
            outcomes.add(check([head[:cut], *frames[1:]]))
            n += 1
        assert outcomes >= {"header", "ok"}, (route, outcomes)  # only the whole header decodes (or more)
        for i in range(len(head)):
            for bit in range(8):
                b = bytearray(head)
                b[i] ^= 1 << bit
                check([bytes(b), *frames[1:]])
                n += 1
    assert n > 5000


def test_the_fast_generator_keeps_the_property_and_reaches_every_outcome():
    """Mutator (the benchmark's generator) on 4,000 messages: the property holds, and its messages
    are refused in the header, refused in a tensor, and accepted, each many times."""
    m = Mutator(seed=15)
    seen = {"header": 0, "tensor": 0, "ok": 0}
    for _ in range(4000):
        seen[check(m.next(OFFLINE))] += 1
    assert min(seen.values()) >= 100, seen


def test_the_documented_limits():
    good = valid(OFFLINE, ("dense", {}), 0, 1, 100.0)
    d = msgpack.unpackb(good[0])
    with pytest.raises(WireError, match="header too large"):
        decode([packb({**d, "m": "x" * MAX_HEADER_BYTES}), good[1]])
    with pytest.raises(WireError, match="too many frames"):
        decode([good[0]] + [b""] * MAX_FRAMES)
    for shape in ([1 << 30, 2], [1 << 39, 0, 1 << 39], [2] * 16 + [1 << 20]):
        h = packb({**d, "ts": [["x", "float32", shape, "dense", {}]]})
        assert check([h, b""]) in ("header", "tensor")  # over 1 GiB, or more than 16 dimensions: refused
    long = packb({**d, "ts": [["x", "float32", [1] * 17, "dense", {}]]})
    assert check([long, good[1]]) == "header"


# -- the codec decoders -----------------------------------------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
f32 = st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 1.0, -1.0, F32_MAX, F32_MAX / 255, F32_MAX / 127,
                                                      F32_MAX / 510, float("nan"), float("inf"), 1e-45]))


@st.composite
def codec_cases(draw):
    """(codec, params, dtype, shape, frame) near a valid one: the frame length right or nearly so,
    its parts drawn (bitmap masks with as many bits as nnz or not, int8 scales and offsets at and
    beyond float32's range), params right or wrong."""
    kind = draw(st.sampled_from(codecs.KINDS))
    dtype = draw(st.sampled_from(["float32", "float64", "float16"]) if kind in ("fp16", "int8") and draw(st.booleans())
                 else st.sampled_from(sorted(codecs.DTYPES)))
    shape = draw(st.lists(st.integers(0, 9), max_size=4))
    ndim, n, item = len(shape), math.prod(shape), np.dtype(dtype).itemsize
    rng = np.random.default_rng(draw(st.integers(0, 1 << 32)))
    params: dict = {}
    if kind == "dense":
        frame = rng.bytes(n * item)
    elif kind == "channels":
        params["axis"] = draw(st.integers(-1, ndim))
        frame = rng.bytes(n * item)
    elif kind == "fp16":
        frame = rng.bytes(2 * n)
    elif kind == "bitmap":
        nnz = draw(st.integers(0, n))
        bits = np.zeros((n + 63) // 64 * 64, bool)
        bits[rng.permutation(n)[:nnz]] = True
        mask = np.packbits(bits)
        if len(mask) and draw(st.integers(0, 3)) == 0:  # bits past the last element, or one bit more or fewer
            mask[rng.integers(len(mask))] ^= np.uint8(1 << int(rng.integers(8)))
        values = rng.bytes(nnz * item) if draw(st.booleans()) else b"\x00" * (nnz * item)
        params["nnz"] = draw(st.one_of(st.just(nnz), st.integers(-2, n + 2)))
        frame = mask.tobytes() + values
    else:
        params["mode"] = draw(st.sampled_from(["affine", "affine", "symmetric", "log"]))
        axis = draw(st.one_of(st.none(), st.integers(-1, ndim)))
        if axis is not None or draw(st.booleans()):
            params["axis"] = axis
        c = shape[axis] if axis is not None and 0 <= axis < ndim else 1
        scales = draw(st.lists(f32, min_size=c, max_size=c))
        offsets = draw(st.lists(f32, min_size=c, max_size=c)) if params["mode"] != "symmetric" else []
        frame = np.asarray(scales + offsets, np.float32).tobytes() + rng.bytes(n)
    cut = draw(st.sampled_from([0, 0, 0, 0, -1, 1, -4]))
    frame = frame[:len(frame) + cut] if cut < 0 else frame + b"\x00" * cut
    if draw(st.integers(0, 7)) == 0:
        params[draw(st.sampled_from(["nnz", "axis", "mode", "x"]))] = draw(scalars)
    return kind, params, dtype, shape, frame


@fuzz(400)
@given(case=codec_cases())
@example(case=("int8", {"mode": "affine", "axis": None}, "float32", [3],
               np.asarray([F32_MAX / 255, 0.0], np.float32).tobytes() + b"\xff\x00\x80"))
@example(case=("int8", {"mode": "affine", "axis": None}, "float32", [1],
               np.asarray([F32_MAX / 510, F32_MAX / 2], np.float32).tobytes() + b"\xff"))
@example(case=("int8", {"mode": "affine"}, "float16", [], b"\x00\x00\x00\x00\xff\xff\x7f\x7f_"))  # once inf
@example(case=("bitmap", {"nnz": 0}, "float64", [0], b""))
@example(case=("channels", {"axis": 0}, "bool", [2], b"\x00\x02"))
def test_codec_decoders_on_near_valid_frames(case):
    kind, params, dtype, shape, frame = case
    got, peak = traced(lambda: codecs.decode(kind, params, dtype, shape, frame))
    if isinstance(got, WireError):
        return
    if isinstance(got, BaseException):
        raise got
    y, n = got, math.prod(shape)
    assert isinstance(y, np.ndarray) and y.shape == tuple(shape) and y.dtype == np.dtype(dtype)
    assert y.nbytes == n * np.dtype(dtype).itemsize
    assert peak <= (1 << 20) + 80 * len(frame)
    if dtype == "bool":
        assert y.view(np.uint8).max(initial=0) <= 1
    if kind in ("dense", "channels"):
        assert y.tobytes() == frame  # bit for bit
    elif kind == "fp16":
        np.testing.assert_array_equal(y, np.frombuffer(frame, np.float16).astype(dtype).reshape(shape))
    elif kind == "bitmap":
        assert np.count_nonzero(y.reshape(-1).view(_uint(y.itemsize))) <= params["nnz"]
    else:  # int8: the decoder refuses what would overflow (docs/agents.md, "The wire"; sdk/codecs.py)
        assert np.isfinite(y).all(), (params, y)


def test_int8_float16_tensors_of_the_whole_float16_range_still_decode():
    """The float16 bound on int8 frames (the finding above) refuses overflow only: tensors that use all
    of float16's range, negative offsets included, decode as before."""
    rng = np.random.default_rng(3)
    for lo, hi in [(-65504, 65504), (-60000, -1000), (0, 65504), (-1, 1)]:
        x = rng.uniform(lo, hi, (2, 3, 5, 5)).astype(np.float16)
        x.flat[:2] = lo, hi
        for params in ({}, {"mode": "symmetric"}, {"axis": None}):
            e = codecs.encode("int8", params, x)
            assert e.codec == "int8"
            y = codecs.decode(e.codec, e.params, e.dtype, e.shape, bytes(e.frame))
            assert np.isfinite(y).all() and np.allclose(y.astype(np.float64), x, atol=(hi - lo) / 255 + 64)


def _uint(itemsize: int):
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize]


@fuzz(200)
@given(route=st.sampled_from(ROUTES), seed=st.integers(0, 3), ops=st.lists(wirefuzz.ops, min_size=1, max_size=3))
def test_codec_payloads_damaged_inside_whole_messages(route, seed, ops):
    """A valid message of every codec route, damaged: the codec's decoder, reached through `arrays`,
    keeps the property (check() asserts each tensor's size)."""
    frames = valid(OFFLINE, route, seed, 1, 100.0)
    for op in ops:
        frames = apply(frames, op)
    check(frames)


def test_valid_messages_of_every_route_decode():
    for route in ROUTES:
        for seed in range(4):
            assert check(valid(OFFLINE, route, seed, 1, 100.0)) == "ok", route
    h = Header("ping", OFFLINE.plan_id, "@prober").encode()
    assert check([h]) == "ok"


# -- an agent's status, in `hello` and `pong` replies ---------------------------------------------------------

_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                     lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(
                         st.sampled_from(["ready", "missing", "threads", "from", "rt", "prov", "x"]), c, max_size=6)),
                     max_leaves=12)


@fuzz(300)
@given(message=st.one_of(st.text(max_size=4 * MAX_NAME), _json.map(json.dumps),
                         st.builds(lambda n, c: c * n, st.integers(1, 4 * MAX_NAME), st.sampled_from(["[", "{\"a\":", "[{\"b\":"]))))
@example(message="[" * 2000)  # once a RecursionError out of the JSON parser
@example(message='{"ready": true, "threads": 1' + "0" * 5000 + "}")
def test_a_status_of_any_text_is_a_status_or_none(message):
    """A reply's message is parsed by whoever receives a `hello` or `pong` (links, `edgepart discover`):
    any text the wire lets through gives a Status or None, nothing else."""
    got = Status.decode(message[: 4 * MAX_NAME])
    assert got is None or (isinstance(got, Status) and isinstance(got.ready, bool) and got.threads >= 0
                           and all(isinstance(x, str) for x in got.missing + got.runtimes + got.providers))

"""The message layer (sdk/wire.py) on bytes: what `tensor_frames` sends is what `decode` + `arrays`
give back, bit for bit, on every dtype and layout (the dense fast path and the codec path alike),
and a damaged message raises WireError and nothing else."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from edgepart.codecs import DTYPES
from edgepart.errors import WireError
from edgepart.plan import Codec
from edgepart.wire import PART_BYTES, PROTOCOL_VERSION, Header, arrays, decode, tensor_frames

pytestmark = pytest.mark.timeout(60)

RNG = np.random.default_rng(11)
H = Header("tensor", "0123456789abcdef", "device-a", request_id=7, client=b"@caller:x", ttl_ms=500.0)


def as_received(frames: list) -> list[bytes]:
    return [bytes(f) for f in frames]


def layouts(x: np.ndarray):
    yield "c", x
    if x.ndim >= 2:
        yield "fortran", np.asfortranarray(x)
    if x.size:
        yield "strided", np.repeat(x[..., None], 2, axis=-1)[..., 1] if x.ndim else x
        if x.dtype.itemsize > 1:
            yield "big-endian", x.astype(x.dtype.newbyteorder(">"))


def sample(dtype: str, shape: tuple) -> np.ndarray:
    if dtype == "bool":
        return RNG.random(shape) < 0.5
    return (RNG.standard_normal(shape) * 50).astype(dtype)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (1, 8, 5, 5), (2, 0, 3)], ids=str)
def test_every_dtype_and_layout_round_trips_bit_for_bit(dtype, shape):
    for name, x in layouts(sample(dtype, shape)):
        h, payload = decode(as_received(tensor_frames(H, {"t": x, "u": x})))
        got = arrays(h, payload)
        assert (h.request_id, h.client, h.sender, h.ttl_ms) == (7, b"@caller:x", "device-a", 500.0)
        for k in ("t", "u"):
            assert got[k].dtype == np.dtype(dtype) and got[k].shape == shape, name
            assert np.ascontiguousarray(got[k]).tobytes() == np.ascontiguousarray(x).astype(dtype).tobytes(), name


def test_dense_frames_are_the_arrays_own_memory_and_decode_as_views():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = tensor_frames(H, {"x": x})
    assert np.shares_memory(np.frombuffer(frames[1], np.float32), x)
    h, payload = decode(frames)
    y = arrays(h, payload)["x"]
    assert np.shares_memory(y, x)


def test_codec_routes_still_go_through_their_codec():
    x = np.maximum(RNG.standard_normal((1, 16, 8, 8)).astype(np.float32), 0)
    frames = tensor_frames(H, {"x": x, "y": x}, {"x": Codec("fp16"), "y": Codec("bitmap")})
    h, payload = decode(as_received(frames))
    assert [t.codec for t in h.tensors] == ["fp16", "bitmap"]
    got = arrays(h, payload)
    assert np.array_equal(got["y"], x) and np.allclose(got["x"], x, rtol=1e-3)


@pytest.mark.parametrize("cut", [-1, +1, -100])
def test_a_dense_frame_of_the_wrong_size_is_refused(cut):
    x = np.ones((4, 25), np.float32)
    frames = as_received(tensor_frames(H, {"x": x}))
    frames[1] = frames[1][:cut] if cut < 0 else frames[1] + b"\0" * cut
    h, payload = decode(frames)
    with pytest.raises(WireError, match="needs 400"):
        arrays(h, payload)


def test_a_bool_frame_with_other_bytes_is_refused():
    frames = as_received(tensor_frames(H, {"b": np.ones(8, bool)}))
    frames[1] = bytes([1, 0, 2, 1, 0, 0, 1, 1])
    with pytest.raises(WireError):
        arrays(*decode(frames))


def test_thousands_of_damaged_messages_raise_only_wire_error():
    rng = np.random.default_rng(3)
    good = as_received(tensor_frames(H, {"x": sample("float32", (2, 3, 4)), "i": sample("int64", (5,))}))
    head = msgpack.unpackb(good[0])
    n = refused = 0
    for _ in range(3000):
        h, frames = dict(head), list(good)
        what = rng.integers(5)
        if what == 0:  # flip bits in the header bytes
            b = bytearray(frames[0])
            for i in rng.integers(0, len(b), rng.integers(1, 6)):
                b[i] ^= 1 << int(rng.integers(8))
            frames[0] = bytes(b)
        elif what == 1:  # a tensor entry's field replaced
            ts = [list(t) for t in h["ts"]]
            t = ts[rng.integers(len(ts))]
            t[rng.integers(5)] = [None, -1, 1 << 62, "x", "float128", [2, -3], [1] * 20, {"a": 1}, True, 2.5][rng.integers(10)]
            h["ts"] = ts
            frames[0] = msgpack.packb(h, use_bin_type=True)
        elif what == 2:  # a frame cut or grown
            k = 1 + rng.integers(2)
            frames[k] = frames[k][: rng.integers(0, len(frames[k]) + 1)] + bytes(rng.integers(0, 3))
        elif what == 3:  # frames missing or added
            frames = frames[: rng.integers(1, 3)] if rng.integers(2) else frames + [b"\0" * 8]
        else:  # a header field of the wrong type
            h[["v", "k", "p", "s", "r", "c", "ttl", "ts"][rng.integers(8)]] = [None, -5, "x", b"\xff" * 300, [1], 1e12][rng.integers(6)]
            frames[0] = msgpack.packb(h, use_bin_type=True)
        n += 1
        try:
            hh, payload = decode(frames)
            out = arrays(hh, payload)
        except WireError:
            refused += 1
            continue
        for t in hh.tensors:
            assert out[t.name].shape == t.shape and out[t.name].dtype == np.dtype(t.dtype)
    assert n == 3000 and 0 < refused < n


@pytest.mark.parametrize("shape", [[0, 1 << 39], [1 << 20, 1 << 20]])
def test_a_dense_tensor_past_the_size_limit_is_refused_by_the_fast_path_too(shape):
    h = msgpack.packb({"v": PROTOCOL_VERSION, "k": "tensor", "p": "0123456789abcdef", "s": "device-a",
                       "ts": [["x", "float32", shape, "dense", {}]]}, use_bin_type=True)
    with pytest.raises(WireError, match="limit"):
        arrays(*decode([h, b""]))


# -- parts: a tensor bigger than PART_BYTES travels in several frames ("Parts" in sdk/wire.py) -------

def test_a_big_tensor_travels_in_parts_and_comes_back_whole():
    big = RNG.standard_normal((1, 5 * PART_BYTES // 4 + 3)).astype(np.float32)  # 5 parts and 12 bytes
    small = np.arange(6, dtype=np.int64)
    edge = np.zeros(PART_BYTES, np.uint8)  # exactly one part: not split
    frames = tensor_frames(H, {"big": big, "small": small, "edge": edge, "fp16": big}, {"fp16": Codec("fp16")})
    sizes = [len(memoryview(f).cast("B")) for f in frames[1:]]
    # big: 6 frames, none over a part; small and edge one each; the fp16 copy (half the bytes) 3
    assert len(frames) == 1 + 6 + 1 + 1 + 3 and max(sizes) == PART_BYTES
    assert msgpack.unpackb(frames[0])["fp"] == [6, 1, 1, 3]
    h, payload = decode(as_received(frames))
    assert len(payload) == 4
    got = arrays(h, payload)
    assert got["big"].tobytes() == big.tobytes() and got["small"].tobytes() == small.tobytes()
    assert got["edge"].shape == edge.shape and got["fp16"].tobytes() == big.astype(np.float16).astype(np.float32).tobytes()
    # a message with no tensor over a part says nothing of parts (the common case, unchanged)
    assert "fp" not in msgpack.unpackb(tensor_frames(H, {"small": small, "edge": edge})[0])


@pytest.mark.parametrize("fp", [[6], [6, 1, 1], [3, 3, 1, 1], [0, 7, 1, 1], [6, 1, 1, True], "6,1,1,1", [6, 1, 1, 1.0],
                                [6, 1, 1, 2], [5, 2, 1, 1]], ids=str)
def test_parts_that_do_not_add_up_are_refused(fp):
    big = np.ones((1, 5 * PART_BYTES // 4 + 3), np.float32)
    frames = tensor_frames(H, {"big": big, "a": np.ones(2), "b": np.ones(2), "c": np.ones(2)})
    d = msgpack.unpackb(frames[0])
    assert d["fp"] == [6, 1, 1, 1]
    d["fp"] = fp
    with pytest.raises(WireError):
        arrays(*decode([msgpack.packb(d), *as_received(frames[1:])]))

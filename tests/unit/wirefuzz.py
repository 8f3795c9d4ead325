"""Fuzzed wire messages, shared by tests/unit/test_wire_fuzz.py, tests/e2e/test_fuzz_agent.py and
bench/bench_fuzz.py.

- `check(frames)`: the property every message must keep (docs/agents.md, "The wire"): `decode`, then
  `arrays` for a tensor message, either give back validated values or raise WireError, and every
  decoded tensor's bytes agree with its dtype and shape, within the payload limit.
- hypothesis strategies: msgpack structures of any shape, header maps whose fields are right or
  wrong, tensor entries with codec payloads of the right or a wrong length, and valid messages
  damaged by bit flips, cuts, dropped, doubled or swapped frames, and header fields replaced,
  removed or swapped.
- `Mutator`: the same kinds of message from a seeded generator, fast enough for the long runs of
  the benchmark.

A `Target` is what a forger knows of the agent it sends to: the plan id, a tensor it takes, who may
send it (docs/agents.md, "The wire": the plan's routes), and the client id to put in requests.
"""

from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np
from hypothesis import strategies as st

from edgepart import codecs
from edgepart.errors import WireError
from edgepart.wire import KINDS, MAX_FRAMES, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, Header, arrays, decode

# How many examples each property test runs (and the e2e test's seconds): larger runs by environment.
EXAMPLES = int(os.environ.get("EDGEPART_FUZZ_EXAMPLES", "0") or 0)
DTYPES = sorted(codecs.DTYPES)
HEADER_KEYS = ("v", "k", "p", "s", "r", "c", "ts", "ttl", "m")
# the codec routes a valid message may use (params as the packager gives them)
ROUTES = [("dense", {}), ("bitmap", {}), ("fp16", {}), ("int8", {}), ("int8", {"mode": "symmetric"}),
          ("int8", {"axis": None}), ("channels", {"axis": 1, "channels": [0, 2]})]


@dataclass(frozen=True)
class Target:
    plan_id: str
    name: str  # a tensor this agent takes
    sender: str  # who may send it ("@caller" for a model input)
    dtype: str
    shape: tuple[int, ...]
    client: bytes = b"fuzzer"

    @staticmethod
    def of(plan, device: str, client: bytes = b"fuzzer") -> "Target":
        """The first tensor `device` takes in `plan`, and its legitimate sender."""
        route = next(r for r in plan.routes if r.dst == device)
        spec = next(i for s in plan.steps for i in s.inputs if i.name == route.tensor)
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
        return Target(plan.plan_id, route.tensor, route.src, spec.dtype, shape, client)


OFFLINE = Target("0123456789abcdef", "x", "@caller", "float32", (1, 4, 8, 8))


# -- the property --------------------------------------------------------------------------------------

def check(frames: Sequence[Any]) -> str:
    """"header" or "tensor" (refused there with WireError) or "ok"; any other exception propagates.

    For an accepted message: its fields are within the wire's limits, and every tensor `arrays`
    gives back has the header entry's dtype and shape and exactly that many bytes."""
    try:
        h, payload = decode(frames)
    except WireError:
        return "header"
    assert h.kind in KINDS and isinstance(h.plan_id, str) and len(h.plan_id) <= 64
    assert isinstance(h.request_id, int) and 0 <= h.request_id < 1 << 63
    assert isinstance(h.client, bytes) and len(h.client) <= 255
    assert 0 <= h.ttl_ms <= 600_000 and len(frames) <= MAX_FRAMES
    if h.kind != "tensor":
        assert len(payload) == len(frames) - 1
        return "ok"
    # one buffer per tensor, a tensor's parts joined (sdk/wire.py, "Parts")
    assert len(h.tensors) == len(payload) <= len(frames) - 1 and len({t.name for t in h.tensors}) == len(h.tensors)
    try:
        out = arrays(h, payload)
    except WireError:
        return "tensor"
    assert set(out) == {t.name for t in h.tensors}
    for t in h.tensors:
        a = out[t.name]
        assert isinstance(a, np.ndarray), (t, type(a))
        assert a.shape == t.shape and a.dtype == np.dtype(t.dtype), (t, a.dtype, a.shape)
        assert a.nbytes == math.prod(t.shape) * np.dtype(t.dtype).itemsize <= MAX_PAYLOAD_BYTES, (t, a.nbytes)
    return "ok"


# -- valid messages ------------------------------------------------------------------------------------

def sample(t: Target, seed: int, zeros: float = 0.6) -> np.ndarray:
    """A post-ReLU-like tensor of the target's dtype and shape (zeros so that bitmap pays)."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(t.shape)) * 3
    x[rng.random(t.shape) < zeros] = 0
    return x.astype(t.dtype)


def valid(t: Target, route: tuple[str, dict], seed: int, rid: int, ttl: float) -> list[bytes]:
    """A well-formed tensor message to the target: one tensor, encoded with the route's codec."""
    kind, params = route
    e = codecs.encode(kind, params, sample(t, seed))
    h = Header("tensor", t.plan_id, t.sender, request_id=rid, client=t.client, ttl_ms=ttl)
    return [h.encode([[t.name, e.dtype, list(e.shape), e.codec, e.params]]), bytes(e.frame)]


def codec_frame_bytes(kind: str, params: Any, dtype: str, shape: Sequence[int]) -> int | None:
    """The frame length the decoder expects for this entry, where it can be computed (else None)."""
    try:
        n = math.prod(shape)
        item = np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return None
    if kind in ("dense", "channels"):
        return n * item
    if kind == "fp16":
        return 2 * n
    if kind == "bitmap":
        nnz = params.get("nnz") if isinstance(params, dict) else None
        return (n + 63) // 64 * 8 + (nnz if isinstance(nnz, int) and 0 <= nnz <= n else 0) * item
    if kind == "int8":
        axis = params.get("axis") if isinstance(params, dict) else None
        c = shape[axis] if isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < len(shape) else 1
        return 4 * c * (1 if isinstance(params, dict) and params.get("mode") == "symmetric" else 2) + n
    return None


# -- hypothesis strategies -------------------------------------------------------------------------------

INT_EDGES = [0, 1, -1, 7, 255, 256, 1 << 31, (1 << 40) - 1, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -(1 << 63)]
FLOAT_EDGES = [0.0, -0.0, 0.5, 300.0, 600_000.0, 600_000.1, 1e308, float("nan"), float("inf"), -float("inf"),
               float(np.finfo(np.float32).max), 65504.0, 5e-324]
TEXT_EDGES = ["", "tensor", "ping", "hello", "pong", "error", "dense", "bitmap", "fp16", "int8", "channels",
              "affine", "symmetric", "float32", "bool", "float128", "object", "<f4", "\x00", "é" * 40,
              "p" * 65, "n" * 513, "m" * 2049, "@caller"]
# msgpack that packb does not make: a timestamp (ext -1) of a bad length, the never-used byte, a
# str of invalid UTF-8, a map of 2^32-1 entries announced with none there, deep nesting
RAW_EDGES = [b"\xd4\xff\x00", b"\xc7\x03\xff\x00\x00\x00", b"\xc1", b"\xa2\xff\xfe", b"\xdf\xff\xff\xff\xff",
             b"\x91" * 5000, b"\x81\xa1v" * 3000 + b"\x01", b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1), st.sampled_from(INT_EDGES), st.integers(-3, 300),
    st.floats(), st.sampled_from(FLOAT_EDGES),
    st.text(max_size=12), st.sampled_from(TEXT_EDGES),
    st.binary(max_size=24), st.sampled_from([b"", b"\xff" * 256, b"c" * 300]),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(-(1 << 40), 1 << 40), st.integers(0, 999_999_999)),
)
keys = st.one_of(st.sampled_from(HEADER_KEYS), st.text(max_size=4), st.binary(max_size=4), st.integers(-2, 2))


@functools.lru_cache(maxsize=None)  # (strategies made once: hypothesis validates each new one, slowly)
def structures(max_leaves: int = 24) -> st.SearchStrategy:
    """msgpack values of any shape: scalars, lists and maps nested a few levels, any key types."""
    return st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=6), st.dictionaries(keys, c, max_size=6)),
                        max_leaves=max_leaves)


def packb(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


@functools.lru_cache(maxsize=None)
def shapes(t: Target) -> st.SearchStrategy:
    wrong = st.one_of(st.lists(st.integers(0, 9), max_size=5), st.lists(st.sampled_from(INT_EDGES), max_size=3),
                      st.lists(st.integers(0, 2), min_size=17, max_size=18), structures(4))
    return st.one_of(st.just(list(t.shape)), st.just(list(t.shape)), wrong)


@functools.lru_cache(maxsize=None)
def params_for(kind: str, ndim: int) -> st.SearchStrategy:
    right = {
        "dense": st.just({}),
        "fp16": st.just({}),
        "channels": st.fixed_dictionaries({"axis": st.integers(-1, ndim)}),
        "bitmap": st.fixed_dictionaries({"nnz": st.one_of(st.integers(0, 64), st.sampled_from(INT_EDGES))}),
        "int8": st.fixed_dictionaries({"mode": st.sampled_from(["affine", "symmetric", "log"])},
                                      optional={"axis": st.one_of(st.none(), st.integers(-1, ndim))}),
    }.get(kind, st.just({}))
    return st.one_of(right, right, right, st.dictionaries(st.sampled_from(["nnz", "axis", "mode", "channels", "x"]),
                                                        scalars, max_size=3), structures(4))


def pick(draw, *choices: st.SearchStrategy) -> Any:
    """A value of one of the strategies, chosen evenly (as st.one_of, without making a new strategy)."""
    return draw(choices[draw(st.integers(0, len(choices) - 1))])


@st.composite
def entries(draw, t: Target) -> tuple[list, bytes]:
    """One tensor entry [name, dtype, shape, codec, params] and its frame; each part right or wrong,
    the frame of the length the decoder expects (random or zero bytes) or of another length."""
    name = pick(draw, st.just(t.name), st.just(t.name), st.text(max_size=8), st.sampled_from(TEXT_EDGES), scalars)
    dtype = pick(draw, st.just(t.dtype), st.sampled_from(DTYPES), st.sampled_from(TEXT_EDGES), scalars)
    shape = draw(shapes(t))
    codec = pick(draw, st.sampled_from(codecs.KINDS), st.sampled_from(codecs.KINDS), st.sampled_from(TEXT_EDGES), scalars)
    params = draw(params_for(codec if isinstance(codec, str) else "", len(shape) if isinstance(shape, list) else 2))
    entry = [name, dtype, shape, codec, params]
    if draw(st.integers(0, 9)) == 0:  # a malformed entry: fields missing, extra, or not a list at all
        entry = pick(draw, st.just(entry[: draw(st.integers(0, 4))]), st.just(entry + [None]), structures(6))
    need = codec_frame_bytes(codec, params, dtype, shape) if isinstance(shape, list) and isinstance(dtype, str) and dtype in codecs.DTYPES \
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 20 for d in shape) else None
    if need is not None and need <= 1 << 16 and draw(st.booleans()):
        fill = draw(st.sampled_from(["zeros", "ones", "random"]))
        if fill == "random":  # (from a drawn seed: hypothesis draws long byte strings slowly)
            frame = np.random.default_rng(draw(st.integers(0, (1 << 32) - 1))).bytes(need)
        else:
            frame = (b"\x00" if fill == "zeros" else b"\x01") * need
        frame = frame[: max(0, need + draw(st.sampled_from([0, 0, 0, -1, 1, -8])))] + b"\x00" * max(0, draw(st.sampled_from([0, 0, 1])))
    else:
        frame = draw(st.binary(max_size=512))
    return entry, frame


@functools.lru_cache(maxsize=None)
def _fields(t: Target, kind: str | None) -> tuple:
    """Each header field's strategy: right six times in eight, else any scalar or structure."""
    rights = (("v", st.just(PROTOCOL_VERSION)), ("k", st.sampled_from(sorted(KINDS)) if kind is None else st.just(kind)),
              ("p", st.just(t.plan_id)), ("s", st.sampled_from([t.sender, "@caller", "dev0", "dev1"])),
              ("r", st.integers(0, (1 << 63) - 1)), ("c", st.sampled_from([t.client, b"", b"other"])),
              ("ttl", st.floats(0, 2000)), ("m", st.text(max_size=40)))
    return tuple((k, st.one_of(*[right] * 6, scalars, structures(4))) for k, right in rights)


@st.composite
def header_maps(draw, t: Target, kind: str | None = None) -> dict:
    """A header map: each field absent, right, or any msgpack value; sometimes extra keys."""
    d: dict = {}
    for k, field in _fields(t, kind):
        if draw(st.integers(0, 15)):  # mostly present
            d[k] = draw(field)
    if draw(st.integers(0, 5)) == 0:
        d.update(draw(st.dictionaries(keys, scalars, max_size=3)))
    return d


@st.composite
def forged(draw, t: Target) -> list[bytes]:
    """A header map (fields right or wrong) with tensor entries and frames to match, or not."""
    d = draw(header_maps(t))
    ents = draw(st.lists(entries(t), min_size=0, max_size=3))
    if draw(st.integers(0, 5)) or "ts" not in d:
        d["ts"] = [e for e, _ in ents]
    frames = [f for _, f in ents]
    n = draw(st.sampled_from([0, 0, 0, 0, -1, 1]))  # a frame too few or too many
    frames = frames[:n] if n < 0 else frames + [b"\x00" * 4] * n
    try:
        head = packb(d)
    except (OverflowError, ValueError, TypeError):
        head = b"\xc1"  # (a value msgpack will not pack: the never-used byte instead)
    return [head, *frames]


ops = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("flip"), st.just(0), st.integers(0, 1 << 20), st.integers(0, 7)),  # the header, more often
    st.tuples(st.just("cut"), st.integers(0, 3), st.integers(0, 1 << 20)),
    st.tuples(st.just("grow"), st.integers(0, 3), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("dup"), st.integers(0, 3)),
    st.tuples(st.just("swap"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("set"), st.sampled_from(HEADER_KEYS), scalars),
    st.tuples(st.just("del"), st.sampled_from(HEADER_KEYS)),
    st.tuples(st.just("swapkeys"), st.sampled_from(HEADER_KEYS), st.sampled_from(HEADER_KEYS)),
    st.tuples(st.just("entry"), st.integers(0, 4), st.one_of(scalars, structures(4))),
    st.tuples(st.just("swapentry"), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.just("param"), st.sampled_from(["nnz", "axis", "mode", "x"]), scalars),
    st.tuples(st.just("twice"),),
)


def apply(frames: list[bytes], op: tuple) -> list[bytes]:
    """One mutation of a message (see `ops`): on its bytes, its frames, or its header's fields."""
    frames = list(frames)
    what = op[0]
    if what in ("flip", "cut", "grow", "drop", "dup") and frames:
        i = op[1] % len(frames)
        if what == "flip" and frames[i]:
            b = bytearray(frames[i])
            b[op[2] % len(b)] ^= 1 << op[3]
            frames[i] = bytes(b)
        elif what == "cut":
            frames[i] = frames[i][: op[2] % (len(frames[i]) + 1)]
        elif what == "grow":
            frames[i] = frames[i] + op[2]
        elif what == "drop":
            del frames[i]
        elif what == "dup":
            frames.insert(i, frames[i])
        return frames
    if what == "swap" and len(frames) > 1:
        i, j = op[1] % len(frames), op[2] % len(frames)
        frames[i], frames[j] = frames[j], frames[i]
        return frames
    try:
        d = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - a header already damaged beyond reading: field edits do not apply
        return frames
    if not isinstance(d, dict):
        return frames
    ts = d.get("ts")
    e = ts[0] if isinstance(ts, list) and ts and isinstance(ts[0], list) else None
    if what == "set":
        d[op[1]] = op[2]
    elif what == "del":
        d.pop(op[1], None)
    elif what == "swapkeys":
        a, b = d.get(op[1]), d.get(op[2])
        d[op[1]], d[op[2]] = b, a
    elif what == "entry" and e is not None and e:
        e[op[1] % len(e)] = op[2]
    elif what == "swapentry" and e is not None and e:
        i, j = op[1] % len(e), op[2] % len(e)
        e[i], e[j] = e[j], e[i]
    elif what == "param" and e is not None and len(e) == 5 and isinstance(e[4], dict):
        e[4][op[1]] = op[2]
    elif what == "twice" and isinstance(ts, list) and ts:
        ts.append(list(ts[0]) if isinstance(ts[0], list) else ts[0])
        frames.append(frames[1] if len(frames) > 1 else b"")
    else:
        return frames
    try:
        frames[0] = packb(d)
    except (OverflowError, ValueError, TypeError):
        pass
    return frames


@st.composite
def mutated(draw, t: Target) -> list[bytes]:
    """A valid message to the target (any codec route) with one to four mutations applied."""
    route = draw(st.sampled_from(ROUTES))
    frames = valid(t, route, draw(st.integers(0, 3)), draw(st.integers(1, 1 << 40)), draw(st.floats(1, 2000)))
    for op in draw(st.lists(ops, min_size=1, max_size=4)):
        frames = apply(frames, op)
    return frames


def messages(t: Target) -> st.SearchStrategy:
    """Every kind of fuzzed message, as a list of frames (bytes)."""
    return st.one_of(
        st.lists(st.binary(max_size=300), max_size=4),  # raw bytes
        st.lists(st.sampled_from(RAW_EDGES), min_size=1, max_size=3),
        st.lists(structures().map(packb), min_size=1, max_size=3),  # msgpack, any shape
        forged(t),
        mutated(t),
        mutated(t),
    )


# -- the fast generator ------------------------------------------------------------------------------------

class Mutator:
    """Fuzzed messages from a seeded generator: the kinds `messages` draws, at a rate that suits runs
    of 100,000 messages. `next(target)` gives one message (a list of bytes frames)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)
        self._valid: dict[tuple, list[bytes]] = {}

    def _pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def scalar(self) -> Any:
        r = self.r
        k = r.randrange(9)
        if k == 0:
            return None
        if k == 1:
            return r.random() < 0.5
        if k == 2:
            return self._pick(INT_EDGES)
        if k == 3:
            return r.randrange(-1000, 1000)
        if k == 4:
            return self._pick(FLOAT_EDGES)
        if k == 5:
            return r.gauss(0, 1) * 10 ** r.randrange(6)
        if k == 6:
            return self._pick(TEXT_EDGES)
        if k == 7:
            return r.randbytes(r.randrange(20))
        return msgpack.ExtType(r.randrange(128), r.randbytes(r.randrange(9)))

    def structure(self, depth: int = 0) -> Any:
        k = self.r.randrange(4) if depth < 3 else 0
        if k <= 1:
            return self.scalar()
        n = self.r.randrange(6)
        if k == 2:
            return [self.structure(depth + 1) for _ in range(n)]
        return {self._pick(HEADER_KEYS + ("x", "", 1)) if self.r.randrange(3) else self.scalar_key(): self.structure(depth + 1)
                for _ in range(n)}

    def scalar_key(self) -> Any:
        v = self.scalar()
        return v if isinstance(v, (str, bytes, int, float, bool, type(None))) else "k"

    def valid(self, t: Target) -> list[bytes]:
        route, seed = self.r.randrange(len(ROUTES)), self.r.randrange(4)
        key = (t, route, seed)
        frames = self._valid.get(key)
        if frames is None:
            frames = self._valid[key] = valid(t, ROUTES[route], seed, 1, 1000.0)
        d = msgpack.unpackb(frames[0], raw=False)
        d["r"] = self.r.randrange(1, 1 << 40)
        d["ttl"] = self.r.uniform(1, 2000)
        return [packb(d), *frames[1:]]

    def op(self) -> tuple:
        r = self.r
        k = r.randrange(15)
        if k <= 2:
            return ("flip", 0 if k == 0 else r.randrange(4), r.randrange(1 << 20), r.randrange(8))
        if k == 3:
            return ("cut", r.randrange(4), r.randrange(1 << 20))
        if k == 4:
            return ("grow", r.randrange(4), r.randbytes(r.randrange(1, 17)))
        if k == 5:
            return (self._pick(["drop", "dup"]), r.randrange(4))
        if k == 6:
            return ("swap", r.randrange(4), r.randrange(4))
        if k == 7:
            return ("set", self._pick(HEADER_KEYS), self.scalar())
        if k == 8:
            return ("del", self._pick(HEADER_KEYS))
        if k == 9:
            return ("swapkeys", self._pick(HEADER_KEYS), self._pick(HEADER_KEYS))
        if k == 10:
            return ("entry", r.randrange(5), self.scalar() if r.randrange(2) else self.structure(2))
        if k == 11:
            return ("swapentry", r.randrange(5), r.randrange(5))
        if k == 12:
            return ("param", self._pick(["nnz", "axis", "mode", "x"]), self.scalar())
        if k == 13:
            return ("twice",)
        return ("flip", 1, r.randrange(1 << 20), r.randrange(8))  # the payload

    def next(self, t: Target) -> list[bytes]:
        r = self.r
        k = r.randrange(10)
        if k == 0:  # raw bytes
            return [r.randbytes(r.randrange(300)) for _ in range(r.randrange(4))]
        if k == 1:  # msgpack of any shape
            try:
                return [packb(self.structure()) for _ in range(r.randrange(1, 3))]
            except (OverflowError, ValueError, TypeError):
                return [b"\xc1"]
        if k == 2:  # a header of right and wrong fields, any tensor entries
            d = {key: (self.scalar() if r.randrange(8) == 0 else right) for key, right in (
                ("v", 1), ("k", self._pick(sorted(KINDS))), ("p", t.plan_id), ("s", t.sender),
                ("r", r.randrange(1, 1 << 40)), ("c", t.client), ("ttl", r.uniform(0, 2000)))
                if r.randrange(16)}
            ts, frames = [], []
            for _ in range(r.randrange(3)):
                kind = self._pick(codecs.KINDS) if r.randrange(4) else self.scalar()
                shape = list(t.shape) if r.randrange(3) else [r.randrange(9) for _ in range(r.randrange(5))]
                dtype = t.dtype if r.randrange(3) else (self._pick(DTYPES) if r.randrange(2) else self.scalar())
                params = {} if r.randrange(2) else {self._pick(["nnz", "axis", "mode"]): self.scalar()}
                ts.append([t.name if r.randrange(3) else self.scalar(), dtype, shape, kind, params])
                need = codec_frame_bytes(kind, params, dtype, shape) if isinstance(dtype, str) and dtype in codecs.DTYPES else None
                n = need + r.randrange(-1, 2) * r.randrange(2) if need is not None and r.randrange(2) else r.randrange(600)
                frames.append(r.randbytes(max(n, 0)))
            d["ts"] = ts if r.randrange(6) else self.structure(1)
            try:
                return [packb(d), *frames]
            except (OverflowError, ValueError, TypeError):
                return [b"\xc1", *frames]
        frames = self.valid(t)  # a valid message with one to three mutations
        for _ in range(1 + (r.randrange(4) == 0) + (r.randrange(8) == 0)):
            frames = apply(frames, self.op())
        return frames

"""The wire format: a ZeroMQ multipart message, frame 0 a msgpack header, then raw buffers.

    [header: msgpack map] [buffer of tensor 0] [buffer of tensor 1] ...

Arrays never go inside msgpack (measured 2-2.7x slower at 10 MB); they travel as raw frames sent
with `copy=False` and are read back with `np.frombuffer`; a route's codec (sdk/codecs.py: static
channel subset, bitmap-sparse, fp16, int8) may encode a tensor into its one frame. Nothing is
ever pickled. One message
carries every tensor a step sends to one destination, so a cut that several tensors cross costs
one message, not several. Every header field is validated before use — kind, sizes, dtype
whitelist, shape x itemsize == payload bytes — and a bad message raises WireError, which the agent
logs and drops.

Header keys (short, since a header rides on every request):

    v    protocol version (int)            k    kind: tensor | error | ping | pong | hello
    p    plan id (str)                     s    sender's role (device name or "@caller")
    r    request id (int, >= 0)            c    client id (bytes) the results go back to
    ts   tensors: a list, one per tensor, of [name, dtype, shape, codec, codec params]
    fp   frames per tensor (a list of ints, one per tensor), when a tensor travels in parts
    ttl  milliseconds left before the request's deadline (float)
    src  the request's source, in a plan with sources (str; docs/priority.md, "Plans with sources")
    age  milliseconds since the request was made, when this message left (float; with src)
    m    message (str): an error's text; in `hello` and `pong` replies an agent's Status (JSON)

Parts. A tensor's frame bigger than PART_BYTES travels as consecutive frames of PART_BYTES (the
last shorter), and `fp` says how many frames each tensor has; the receiver joins them (one copy).
ZeroMQ's heartbeat timer is reset by each whole frame a peer receives, not by the bytes of one on
its way, so a frame longer on the link than the heartbeat timeout once took a live link down (11 MB
on 20 Mbit/s shared by two flows: docs/agents.md, "Links and liveness"); a part crosses a link of
2 Mbit/s within the timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import msgpack
import numpy as np

from . import codecs as tcodecs  # (not `codecs`: that is a stdlib module)
from .errors import DeadlineRefused, PeerError, WireError
from .plan import Codec

PROTOCOL_VERSION = 2  # 2: tensors in parts (`fp`)
KINDS = frozenset({"tensor", "error", "ping", "pong", "hello"})
# an `error` message that starts with this says the request's deadline is out of reach (an agent
# refused it at once: docs/priority.md, "Admission"); the caller raises DeadlineRefused, not PeerError
DEADLINE_MARK = "deadline: "


def error_of(message: str) -> tuple[type[PeerError], str]:
    """What a caller raises for an agent's `error` message, and its text without the mark."""
    if message.startswith(DEADLINE_MARK):
        return DeadlineRefused, message[len(DEADLINE_MARK):]
    return PeerError, message
DTYPES = tcodecs.DTYPES
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = tcodecs.MAX_DECODED_BYTES
MAX_NDIM = 16
MAX_NAME = 512
MAX_TENSORS = 64  # per message
PART_BYTES = 2 << 20  # a tensor's frame bigger than this travels in parts of this size ("Parts" above)
MAX_PARTS = -(-MAX_PAYLOAD_BYTES // PART_BYTES)  # of one tensor
MAX_FRAMES = 1 + 4 * MAX_PARTS  # header + tensors' frames (parts included): 4 GiB of tensors at most
MAX_TTL_MS = 600_000.0  # no request may hold an agent's memory for more than 10 minutes


@dataclass(frozen=True)
class TensorHeader:
    """One tensor of a message: its name, element type, shape, and how its frame is encoded."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    codec: str = "dense"
    codec_params: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> list:
        return [self.name, self.dtype, list(self.shape), self.codec, self.codec_params]


@dataclass(frozen=True)
class Header:
    kind: str
    plan_id: str
    sender: str
    request_id: int = 0
    client: bytes = b""
    tensors: tuple[TensorHeader, ...] = ()
    ttl_ms: float = 0.0
    message: str = ""
    version: int = PROTOCOL_VERSION
    source: str = ""
    age_ms: float = 0.0

    def encode(self, tensors: list | None = None, parts: list[int] | None = None) -> bytes:
        """The msgpack header; `tensors` are ready-made wire entries to put in place of `self.tensors`,
        `parts` the number of frames of each (the `fp` key: "Parts" above), when one has more than one."""
        d: dict[str, Any] = {"v": self.version, "k": self.kind, "p": self.plan_id, "s": self.sender}
        if self.request_id:
            d["r"] = self.request_id
        if self.client:
            d["c"] = self.client
        if tensors is None and self.tensors:
            tensors = [t.encode() for t in self.tensors]
        if tensors:
            d["ts"] = tensors
        if parts:
            d["fp"] = parts
        if self.ttl_ms:
            d["ttl"] = float(self.ttl_ms)
        if self.message:
            d["m"] = self.message
        if self.source:
            d["src"] = self.source
            d["age"] = float(self.age_ms)
        return msgpack.packb(d, use_bin_type=True)


@dataclass(frozen=True)
class Status:
    """What an agent says of itself in its `hello` and `pong` replies: whether it is linked to every
    peer it sends to (a session sends nothing until all are: docs/agents.md, "Ready"), who is still
    missing, the threads it runs with and why, the runtimes of its steps (onnx, tflite) and the
    onnxruntime providers it uses, fastest first."""

    ready: bool
    missing: tuple[str, ...] = ()
    threads: int = 0
    threads_from: str = ""
    runtimes: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    key: str = ""  # its public link key (Z85): a session on its local socket checks it (docs/agents.md, "On one host")
    # in a plan with sources: the work queued there, in the order it will be served, as
    # (weight, ms it waited there, work ms) per task; peers choose among their alternatives with it
    # (docs/priority.md)
    queue: tuple[tuple[float, float, float], ...] = ()
    # ... and its steps' times as it measured them (ms, by step name), for the cost of sending it work
    steps: tuple[tuple[str, float], ...] = ()

    MAX_QUEUE = 40  # entries said; the rest is summed into the last (it fits the message)
    MAX_STEPS = 16  # step times said (the first ones); more are left out

    def encode(self) -> str:
        d = {"ready": self.ready, "missing": list(self.missing), "threads": self.threads, "from": self.threads_from,
             "rt": list(self.runtimes), "prov": list(self.providers), **({"key": self.key} if self.key else {})}
        if self.queue:
            q = [list(t) for t in self.queue[: self.MAX_QUEUE]]
            q[-1][2] += sum(t[2] for t in self.queue[self.MAX_QUEUE:])
            d["q"] = [[round(w, 3), round(a, 2), round(m, 3)] for w, a, m in q]
        if self.steps:
            d["st"] = {n[:64]: round(ms, 3) for n, ms in self.steps[: self.MAX_STEPS]}
        text = json.dumps(d, separators=(",", ":"))
        while len(text) > 4 * MAX_NAME and d["missing"]:  # many missing peers: name fewer
            d["missing"] = d["missing"][: len(d["missing"]) // 2]
            text = json.dumps(d, separators=(",", ":"))
        for k in ("st", "q"):  # still too long (long names): say less of the rest, never cut the text
            if len(text) > 4 * MAX_NAME:
                d.pop(k, None)
                text = json.dumps(d, separators=(",", ":"))
        return text[: 4 * MAX_NAME]

    @staticmethod
    def decode(message: str) -> "Status | None":
        """The status in a reply's message; None where there is none or it is malformed."""
        try:
            d = json.loads(message) if message else None
        except (ValueError, RecursionError):  # malformed, or nested deeper than the parser goes
            return None
        if not isinstance(d, dict) or not isinstance(d.get("ready"), bool):
            return None
        missing, threads, src = d.get("missing", []), d.get("threads", 0), d.get("from", "")
        rt, prov, key = d.get("rt", []), d.get("prov", []), d.get("key", "")
        if (not all(isinstance(x, list) and all(isinstance(m, str) for m in x) for x in (missing, rt, prov))
                or not isinstance(threads, int) or isinstance(threads, bool) or not isinstance(src, str)
                or not isinstance(key, str)):
            return None
        q = d.get("q", [])
        if not (isinstance(q, list) and len(q) <= Status.MAX_QUEUE and all(
                isinstance(t, list) and len(t) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1e9 for x in t) for t in q)):
            q = []  # malformed: said nothing of its queue
        st = d.get("st", {})
        if not (isinstance(st, dict) and len(st) <= Status.MAX_STEPS and all(
                isinstance(n, str) and len(n) <= 64 and isinstance(x, (int, float)) and not isinstance(x, bool)
                and 0 <= x < 1e9 for n, x in st.items())):
            st = {}  # malformed: said nothing of its steps
        return Status(d["ready"], tuple(missing), max(threads, 0), src, tuple(rt), tuple(prov), key[:64],
                      tuple((float(w), float(a), float(m)) for w, a, m in q), tuple((n, float(x)) for n, x in st.items()))


def tensor_frames(header: Header, arrays: dict[str, np.ndarray], codecs: dict[str, Codec] | None = None) -> list:
    """[header, frame, ...]: each tensor encoded by its route's codec (dense when none); a dense
    frame is the array's own memory, not a copy. (`header` is sent as a tensor message.)"""
    entries, bufs = [], []
    for name, array in arrays.items():
        c = codecs.get(name) if codecs else None
        if (c is None or (c.kind == "dense" and not c.params)) and (dt := _plain(array)):
            # the common case, kept short (it runs on every message, often with cold caches): what
            # codecs.encode does for dense, for an array that needs no conversion
            entries.append([name, dt, list(array.shape), "dense", {}])
            bufs.append(memoryview(array.reshape(-1)).cast("B"))
            continue
        e = tcodecs.encode(c.kind, dict(c.params), array) if c is not None else tcodecs.encode("dense", None, array)
        entries.append([name, e.dtype, list(e.shape), e.codec, e.params])
        bufs.append(e.frame)
    h = header if header.kind == "tensor" else replace(header, kind="tensor")
    if not any(b.nbytes > PART_BYTES for b in bufs):  # (each frame is a 1-D byte memoryview: sdk/codecs.py)
        return [h.encode(entries), *bufs]
    frames, parts = [], []
    for b in bufs:
        cut = [b[i:i + PART_BYTES] for i in range(0, b.nbytes, PART_BYTES)] or [b]
        frames += cut
        parts.append(len(cut))
    return [h.encode(entries, parts), *frames]


_WIRE_NAMES: dict[np.dtype, str] = {}  # native dtype -> its wire name ("" if not a wire dtype)


def _plain(a: Any) -> str:
    """The wire dtype name of a non-empty C-contiguous ndarray in native byte order of a wire
    dtype, else "". (numpy builds `dtype.name` anew on each call, slowly: it is cached here.)"""
    if type(a) is not np.ndarray or a.size == 0 or not a.flags.c_contiguous:
        return ""
    dt = a.dtype
    name = _WIRE_NAMES.get(dt)
    if name is None:
        name = _WIRE_NAMES[dt] = dt.name if dt.isnative and dt.name in DTYPES else ""
    return name


def roundtrip(arrays: dict[str, np.ndarray], codecs: dict[str, Codec] | None) -> dict[str, np.ndarray]:
    """What a receiver gets for `arrays` sent with `codecs`, without a wire (in-process routes)."""
    if not codecs:
        return arrays
    return {n: tcodecs.roundtrip(c.kind, dict(c.params), a) if (c := codecs.get(n)) is not None else a
            for n, a in arrays.items()}


def decode(frames: Sequence[Any]) -> tuple[Header, list[memoryview]]:
    """Parse and validate a message; raise WireError on anything malformed."""
    if not frames:
        raise WireError("empty message")
    if len(frames) > MAX_FRAMES:
        raise WireError(f"too many frames ({len(frames)} > {MAX_FRAMES})")
    raw = _buf(frames[0])
    if raw.nbytes > MAX_HEADER_BYTES:  # (bytes, not items: an in-process caller may hand a typed buffer)
        raise WireError(f"header too large ({raw.nbytes} bytes)")
    try:
        d = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_NAME,
                            max_str_len=4 * MAX_NAME, max_array_len=MAX_NDIM * 4, max_map_len=64)
    except Exception as e:  # msgpack raises many types for garbage
        raise WireError(f"header is not msgpack ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise WireError("header is not a map")
    version = d.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise WireError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    kind = d.get("k")
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    plan_id, sender = _str(d, "p", 64), _str(d, "s", MAX_NAME)
    request_id, client, ttl_ms = _int(d, "r"), _bytes(d, "c"), _float(d, "ttl")
    message = _str(d, "m", 4 * MAX_NAME) if "m" in d else ""
    source, age_ms = _str(d, "src", MAX_NAME), _float(d, "age")
    payload = [_buf(f) for f in frames[1:]]
    tensors: tuple[TensorHeader, ...] = ()
    if kind == "tensor":
        ts = d.get("ts")
        if "fp" in d and isinstance(ts, list):
            payload = _joined(payload, d["fp"], len(ts))
        if not isinstance(ts, list) or not ts or len(ts) != len(payload) or len(ts) > MAX_TENSORS:
            raise WireError(f"a tensor message needs one 'ts' entry per payload frame, at most {MAX_TENSORS} "
                            f"({len(payload)} frames)")
        tensors = tuple(_tensor_header(t) for t in ts)
        if len({t.name for t in tensors}) != len(tensors):
            raise WireError("a tensor name appears twice in one message")
    return Header(kind, plan_id, sender, request_id, client, tensors, ttl_ms, message, PROTOCOL_VERSION, source,
                  age_ms), payload


def _joined(payload: list[memoryview], fp: Any, n: int) -> list[memoryview]:
    """Each tensor's frame, its parts joined ("Parts" above); WireError unless `fp` gives each of the
    `n` tensors 1 to MAX_PARTS frames, adding up to the payload's, and no tensor is over the limit."""
    if (not isinstance(fp, list) or len(fp) != n or not all(type(k) is int and 1 <= k <= MAX_PARTS for k in fp)
            or sum(fp) != len(payload)):
        raise WireError(f"'fp' must give each of the {n} tensors its number of frames, adding up to the "
                        f"{len(payload)} payload frames")
    out, i = [], 0
    for k in fp:
        if k == 1:
            out.append(payload[i])
        else:
            part = payload[i:i + k]
            if sum(p.nbytes for p in part) > MAX_PAYLOAD_BYTES:
                raise WireError(f"a tensor of {k} parts is over {MAX_PAYLOAD_BYTES} bytes")
            out.append(memoryview(b"".join(part)))
        i += k
    return out


def _tensor_header(t: Any) -> TensorHeader:
    if not isinstance(t, list) or len(t) != 5:
        raise WireError("a tensor entry must be [name, dtype, shape, codec, params]")
    name, dtype, shape, codec, params = t
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise WireError("tensor name must be a non-empty string")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"dtype {dtype!r} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x < (1 << 40) for x in shape
    ):
        raise WireError("shape must be a list of at most 16 non-negative ints")
    if not isinstance(codec, str) or len(codec) > 32 or not isinstance(params, dict):
        raise WireError("codec must be a short string and its params a map")
    return TensorHeader(name, dtype, tuple(shape), codec, params)


def arrays(h: Header, payload: list[memoryview]) -> dict[str, np.ndarray]:
    """The arrays of a tensor message, by name, decoded and validated (dense: a view, no copy)."""
    out = {}
    for t, buf in zip(h.tensors, payload):
        if (t.codec == "dense" and not t.codec_params and t.dtype != "bool" and buf.ndim == 1 and buf.itemsize == 1
                and buf.c_contiguous):
            # the common case, kept short: codecs.decode's checks for a dense frame (the header's
            # dtype and shape were checked by decode; bool needs its values checked, so it goes there;
            # so does a strided buffer an in-process caller may hand over, which the codec path refuses)
            dt = np.dtype(t.dtype)
            count = 1
            for d in t.shape:
                count *= d
            if 0 < count * dt.itemsize <= tcodecs.MAX_DECODED_BYTES:  # (else the codec path says why)
                if buf.nbytes != count * dt.itemsize:
                    raise WireError(f"dense: frame is {buf.nbytes} bytes, a {t.dtype}{list(t.shape)} tensor needs {count * dt.itemsize}")
                out[t.name] = np.frombuffer(buf, dtype=dt, count=count).reshape(t.shape)
                continue
            out[t.name] = tcodecs.decode(t.codec, t.codec_params, t.dtype, t.shape, buf)
        else:
            out[t.name] = tcodecs.decode(t.codec, t.codec_params, t.dtype, t.shape, buf)
    return out


def _buf(f: Any) -> memoryview:
    if isinstance(f, (bytes, bytearray, memoryview)):
        return memoryview(f)
    b = getattr(f, "buffer", None)  # zmq.Frame
    if b is None:
        raise WireError("frame is not a buffer")
    return memoryview(b)


def _str(d: dict, k: str, limit: int) -> str:
    v = d.get(k, "")
    if not isinstance(v, str) or len(v) > limit:
        raise WireError(f"field {k!r} must be a string of at most {limit} characters")
    return v


def _int(d: dict, k: str) -> int:
    v = d.get(k, 0)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < (1 << 63):
        raise WireError(f"field {k!r} must be a non-negative int")
    return v


def _float(d: dict, k: str) -> float:
    v = d.get(k, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= MAX_TTL_MS):
        raise WireError(f"field {k!r} must be a number from 0 to {MAX_TTL_MS:.0f}")
    return float(v)


def _bytes(d: dict, k: str) -> bytes:
    v = d.get(k, b"")
    if not isinstance(v, bytes) or len(v) > 255:
        raise WireError(f"field {k!r} must be at most 255 bytes")
    return v


ZERO_COPY_MIN_BYTES = 512 * 1024


def zero_copy_pays(frames: list) -> bool:
    """Zero-copy sends hand buffer ownership to libzmq and back through pyzmq's garbage-collector
    thread, which costs a thread wake-up per message; below this size a memcpy is cheaper."""
    return sum(len(f) if not isinstance(f, memoryview) else f.nbytes for f in frames) >= ZERO_COPY_MIN_BYTES

"""Sync requests run in the caller's thread beside an embedded entry (`AgentCore.direct`).

A caller (InferenceSession.run) computes this device's one step itself and sends its outputs from
a socket taken from a per-destination pool; on a 2-device plan it also receives the next device's
answer on that socket. The pool, the sends and receives that never wait past a deadline, a dead
peer, a stopped agent or a closed session live here, in one object the agent holds when its plan's
hints name its device the entry and its one step the entry step (edgepart.plan.Hints). The app's
client reaches it through the in-process registry (edgepart.agent.net.inproc.DirectPath), never by
importing this module.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import zmq

from edgepart.errors import DeadlineExceeded, PeerError, WireError
from edgepart.plan import CALLER, Codec, Step
from edgepart.wire import Header, arrays, decode, roundtrip, tensor_frames, zero_copy_pays

from ..net import inproc
from ..net.link import Links, secure_client, tune
from .executor import Executor

log = logging.getLogger("edgepart")

DIRECT_POLL_MS = 20  # a caller's thread waiting to send directly rechecks its peer and deadline this often


@dataclass(eq=False)
class _Direct:
    """A socket to one destination for caller threads (DirectRuns.run). A caller takes one
    from its destination's pool and holds its lock until it gives it back: the socket is the
    caller's alone for a send and, where the answer comes back to it, the receive."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    endpoint: str = ""
    sock: zmq.Socket | None = None
    identity: bytes = b""
    rcvtimeo: int = -1  # the socket's ZMQ_RCVTIMEO now
    abort: threading.Event | None = None  # the current caller's: set, it stops waiting


class DirectRuns:
    """The requests that callers' threads run beside this agent, on sockets of their own: the pools of
    those sockets (per destination), and the run itself. Any thread; `close()` once the agent stops."""

    def __init__(self, step: Step, *, executor: Executor, links: Links, ctx: zmq.Context, plan_id: str,
                 device: str, codecs: Mapping[str, dict[str, Codec]]):
        self.step = step  # this device's one step, which only the caller feeds
        self.executor, self.links, self.ctx = executor, links, ctx
        self.plan_id, self.device, self.codecs = plan_id, device, codecs
        # per destination, the free sockets; each is used only under its own lock; None once closed
        self._pools: dict[str, list[_Direct]] | None = {}
        self._all: list[_Direct] = []
        self._lock = threading.Lock()  # the pools only: held for a list operation
        self.runs = 0  # requests a caller's thread ran here; counted without a lock
        self.answers = 0  # ... whose next device's answer came back to that thread
        # ids of requests whose answer comes back to a direct socket: one sequence for the agent,
        # since sessions' own ids start at 1 each and the pooled sockets pass from one to another
        self._ids = itertools.count(1)

    @property
    def sockets(self) -> int:
        """How many direct sockets were made (at most one per concurrent caller and destination)."""
        return len(self._all)

    def run(self, client: bytes, rid: int, feeds: dict[str, np.ndarray], deadline: float,
            reply_from: str | None = None, expect: frozenset[str] = frozenset(),
            abort: threading.Event | None = None) -> dict[str, np.ndarray]:
        """Run `step` in the calling thread (a sync `InferenceSession.run` beside this agent) and
        send its outputs to the devices that need them from this thread: no hand-off to the data
        thread on the way. Returns the outputs for the caller: this step's own and, when
        `reply_from` is the one device this step sends to (and the only other one that answers the
        caller), that device's answer too — all of `expect`, its outputs for the caller — received
        in this thread on the socket the request left on: no hand-off to the client's thread on the
        way back either. `abort` set (the session closed) ends the wait. Raises PeerError."""
        step = self.step
        if self._pools is None:
            raise PeerError(f"agent {self.device} was stopped")
        _, by_dst = self.executor.compute(step, feeds)
        back = by_dst.pop(CALLER, {})
        back = dict(roundtrip(back, self.codecs.get(CALLER))) if back else {}
        self.runs += 1
        if reply_from is not None and set(by_dst) != {reply_from}:
            reply_from = None
        for dst, arrs in by_dst.items():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"request {rid} passed its deadline while {self.device} computed {step.name}")
            if (a := inproc.agent(self.plan_id, dst)) is not None:
                a.deliver_local(self.device, (client, rid), roundtrip(arrs, self.codecs.get(dst)), left * 1e3)
                continue
            ep = self.links.endpoint_up(dst)
            if ep is None:
                raise PeerError(f"{dst} is not reachable now (it stopped answering)")
            d = self._take(dst, ep)
            try:
                answer_here = dst == reply_from
                wire = next(self._ids) if answer_here else rid
                frames = tensor_frames(Header("tensor", self.plan_id, self.device, request_id=wire,
                                              client=d.identity if answer_here else client, ttl_ms=left * 1e3),
                                       arrs, self.codecs.get(dst))
                d.abort = abort
                self._send(d, dst, ep, frames, deadline)
                if answer_here:
                    back.update(self._receive(d, dst, ep, wire, deadline, expect))
                    self.answers += 1
            finally:
                self._give_back(dst, d)
        return back

    def _take(self, dst: str, ep: str) -> _Direct:
        """A free direct socket to `dst`'s live endpoint, locked for the caller (made on first use,
        remade when the peer came back on a new endpoint)."""
        with self._lock:
            if self._pools is None:
                raise PeerError(f"agent {self.device} was stopped")
            free = self._pools.setdefault(dst, [])
            if free:
                d = free.pop()
            else:
                d = _Direct()
                self._all.append(d)
            d.lock.acquire()  # free, so only close() might hold it, and it waits outside _lock
        try:
            if d.sock is None or d.endpoint != ep:
                if d.sock is not None:
                    d.sock.close(0)
                    d.sock = None
                d.identity = f"{self.device}:direct:{secrets.token_hex(4)}".encode()
                sock = self.ctx.socket(zmq.DEALER)
                secure_client(sock, self.links.keys, dst)  # the peer's key pinned (docs/agents.md, "Encryption")
                sock.setsockopt(zmq.IDENTITY, d.identity)
                tune(sock)
                sock.setsockopt(zmq.IMMEDIATE, 1)  # only on a live connection: a dead peer refuses
                sock.connect(ep)
                d.sock, d.endpoint = sock, ep
        except BaseException:
            self._give_back(dst, d)
            raise
        return d

    def _give_back(self, dst: str, d: _Direct) -> None:
        d.lock.release()
        with self._lock:
            if self._pools is not None:
                self._pools.setdefault(dst, []).append(d)

    def _wait(self, d: _Direct, dst: str, ep: str, deadline: float, event: int, doing: str) -> None:
        """Wait for `event` on a direct socket, one slice at most (none for event 0); raise once this
        agent stopped, the request's deadline passed or the peer's link went down (so never a hang)."""
        if self._pools is None:
            raise PeerError(f"agent {self.device} was stopped")
        if d.abort is not None and d.abort.is_set():
            raise PeerError("the session was closed")
        left_ms = (deadline - time.monotonic()) * 1e3
        if left_ms <= 0:
            raise DeadlineExceeded(f"{dst} did not {doing} before the request's deadline")
        if self.links.endpoint_up(dst) != ep:
            raise PeerError(f"{dst} stopped answering while {self.device} waited for it to {doing}")
        if event:
            d.sock.poll(min(DIRECT_POLL_MS, max(1, int(left_ms))), event)

    def _send(self, d: _Direct, dst: str, ep: str, frames: list, deadline: float) -> None:
        copy = not zero_copy_pays(frames)
        while True:
            try:
                d.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
                return
            except zmq.Again:
                self._wait(d, dst, ep, deadline, zmq.POLLOUT, f"take {self.device}'s outputs")

    def _receive(self, d: _Direct, dst: str, ep: str, rid: int, deadline: float,
                        expect: frozenset[str]) -> dict[str, np.ndarray]:
        """`dst`'s answer to request `rid` (every tensor of `expect`, in one message or several), on
        the direct socket the request left on. A late answer to an earlier request that gave up on
        this socket is skipped."""
        got: dict[str, np.ndarray] = {}
        while True:
            # a blocking receive, as a bare pipe's, in slices of at most DIRECT_POLL_MS (cheaper than
            # a poll, which builds a poller each time), checking stop, deadline and link in between
            left_ms = (deadline - time.monotonic()) * 1e3
            if (slice_ms := min(DIRECT_POLL_MS, max(1, int(left_ms)))) != d.rcvtimeo:
                d.sock.setsockopt(zmq.RCVTIMEO, slice_ms)
                d.rcvtimeo = slice_ms
            try:
                frames = d.sock.recv_multipart(copy=False)
            except zmq.Again:
                self._wait(d, dst, ep, deadline, 0, f"answer request {rid}")
                continue
            try:
                h, payload = decode(frames)
                if h.plan_id != self.plan_id or h.request_id != rid or h.kind not in ("tensor", "error"):
                    log.debug("skipped a %s message for request %s from %s on a direct socket", h.kind, h.request_id, dst)
                    continue
                if h.kind == "error":
                    raise PeerError(h.message)
                got.update(arrays(h, payload))
            except WireError as e:
                raise PeerError(f"{dst} sent a malformed answer to request {rid}: {e}") from None
            if expect <= got.keys():
                return got

    def close(self) -> None:
        """Close every direct socket; a caller still waiting leaves within one poll slice."""
        with self._lock:
            self._pools, entries = None, list(self._all)
        for d in entries:
            with d.lock:  # a caller in its wait loop leaves within one poll slice
                if d.sock is not None:
                    d.sock.close(0)
                    d.sock = None

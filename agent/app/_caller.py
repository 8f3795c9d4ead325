"""A sync request sent and answered on the calling thread's own sockets (`ClusterClient.run`).

The plain deployment — every device an `edgepart run`, the app in its own process — would
otherwise hand each request to the client's I/O thread and its answer back to the caller: two
thread wake-ups on a core that the first device's agent often shares. A bare pipe has neither. So a
sync `run()` takes a set of sockets from a pool (one DEALER per device it feeds or hears from,
with an identity of its own), sends the inputs from the calling thread and receives the answers
there, as a bare pipe does (docs/agents.md, "Requests and deadlines"). The client's links stay the
judge of liveness: between receive slices the caller checks that every device it waits on is still
up at the endpoint it sent to, the deadline, and whether the session was closed; so it never hangs.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import zmq

from edgepart.errors import DeadlineExceeded, PeerError, WireError
from edgepart.plan import CALLER, Codec
from edgepart.wire import Header, arrays, decode, error_of, tensor_frames, zero_copy_pays

from ..net.link import Links, secure_client, tune

log = logging.getLogger("edgepart")

SLICE_MS = 20  # a caller waiting on its sockets rechecks links, deadline and close this often


@dataclass(eq=False)
class _Sockets:
    """One caller's sockets, a DEALER per device role, all with one identity; held by one caller
    at a time (its lock) from take() to give_back()."""

    identity: bytes
    lock: threading.Lock = field(default_factory=threading.Lock)
    socks: dict[str, tuple[str, zmq.Socket]] = field(default_factory=dict)  # role -> (endpoint, socket)


class CallerPath:
    """The pool of callers' sockets of one client, and the request that runs on them."""

    def __init__(self, ctx: zmq.Context, links: Links, plan_id: str, roles: set[str], inputs_by_dst: Mapping[str, list[str]],
                 answer_names: Mapping[str, frozenset[str]], codecs: Mapping[str, dict[str, Codec]], source: str = ""):
        self.ctx, self.links, self.plan_id = ctx, links, plan_id
        self.source = source  # the requests' source, in a plan with sources (docs/priority.md)
        self.inputs_by_dst = dict(inputs_by_dst)
        self.answer_names = dict(answer_names)
        self.codecs = codecs
        # every device, not only those fed or answering: any of them may fail the request, and its
        # error comes back to this caller's identity only on a link that identity has with it
        self.roles = sorted(roles)
        self._free: list[_Sockets] | None = []
        self._all: list[_Sockets] = []
        self._lock = threading.Lock()  # the pool only
        self.runs = 0  # requests sent from callers' threads (a diagnostic: counted without a lock)

    def run(self, rid: int, feeds: Mapping[str, np.ndarray], deadline: float, closed: threading.Event,
            dsts: Iterable[str] | None = None, answering: Iterable[str] | None = None,
            born: float = 0.0) -> dict[str, np.ndarray]:
        """Send request `rid`'s inputs from this thread and gather every device's answer here.
        `dsts` / `answering`: the devices this request goes to and hears from, where the plan has
        alternatives (agent/net/choose.py picked them); all of them otherwise."""
        dsts = list(self.inputs_by_dst) if dsts is None else list(dsts)
        answering = list(self.answer_names) if answering is None else list(answering)
        s = self._take()
        try:
            eps = self._connect(s)
            # a device answers on the link our identity has with it: every answering socket must be
            # connected (with IMMEDIATE, writable means connected) before anything is sent
            for role in answering:
                self._wait(s, role, eps, deadline, closed, zmq.POLLOUT, "take the request")
            for dst in dsts:
                names = self.inputs_by_dst[dst]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"request {rid} passed its deadline before it was sent")
                h = Header("tensor", self.plan_id, CALLER, request_id=rid, client=s.identity, ttl_ms=left * 1e3,
                           source=self.source, age_ms=(time.monotonic() - born) * 1e3 if self.source else 0.0)
                frames = tensor_frames(h, {n: feeds[n] for n in names}, self.codecs.get(dst))
                self._send(s, dst, eps, frames, deadline, closed)
            self.runs += 1
            return self._receive(s, rid, eps, deadline, closed, answering)
        finally:
            self._give_back(s)

    def close(self) -> None:
        """Close every socket; a caller still waiting leaves within one slice (it sees `closed`)."""
        with self._lock:
            self._free, entries = None, list(self._all)
        for s in entries:
            with s.lock:
                for _, sock in s.socks.values():
                    sock.close(0)
                s.socks.clear()

    # -- internals ---------------------------------------------------------------------------------
    def _take(self) -> _Sockets:
        with self._lock:
            if self._free is None:
                raise PeerError("the session is closed")
            if self._free:
                s = self._free.pop()
            else:
                s = _Sockets(f"{CALLER}:run:{secrets.token_hex(6)}".encode())
                self._all.append(s)
            s.lock.acquire()
        return s

    def _give_back(self, s: _Sockets) -> None:
        s.lock.release()
        with self._lock:
            if self._free is not None:
                self._free.append(s)

    def _connect(self, s: _Sockets) -> dict[str, str]:
        """Each role's live endpoint, with this caller's socket connected to it (made on first use,
        remade when the device came back on a new endpoint)."""
        eps = {}
        for role in self.roles:
            ep = self.links.endpoint_up(role)
            if ep is None:
                raise PeerError(f"{role} is not reachable now (it stopped answering); restart `edgepart run` "
                                f"there, the session reconnects by itself")
            have = s.socks.get(role)
            if have is None or have[0] != ep:
                if have is not None:
                    have[1].close(0)
                sock = self.ctx.socket(zmq.DEALER)
                secure_client(sock, self.links.keys, role, ep)  # the device's key pinned (docs/agents.md, "Encryption")
                sock.setsockopt(zmq.IDENTITY, s.identity)
                tune(sock)
                sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a live connection
                sock.connect(ep)
                s.socks[role] = (ep, sock)
            eps[role] = ep
        return eps

    def _check(self, role: str, eps: Mapping[str, str], deadline: float, closed: threading.Event, doing: str) -> float:
        """Raise if the session closed, the deadline passed or a device waited on went down; else
        the milliseconds left."""
        if closed.is_set():
            raise PeerError("the session was closed")
        left_ms = (deadline - time.monotonic()) * 1e3
        if left_ms <= 0:
            raise DeadlineExceeded(f"{role} did not {doing} before the request's deadline")
        for r, ep in eps.items():
            if self.links.endpoint_up(r) != ep:
                raise PeerError(f"{r} stopped answering while the request waited for {role} to {doing}; restart "
                                f"`edgepart run` there (the session reconnects by itself) and send it again.")
        return left_ms

    def _wait(self, s: _Sockets, role: str, eps: Mapping[str, str], deadline: float, closed: threading.Event,
              event: int, doing: str) -> None:
        sock = s.socks[role][1]
        while not sock.poll(0, event):
            left_ms = self._check(role, eps, deadline, closed, doing)
            sock.poll(min(SLICE_MS, max(1, int(left_ms))), event)

    def _send(self, s: _Sockets, dst: str, eps: Mapping[str, str], frames: list, deadline: float,
              closed: threading.Event) -> None:
        copy = not zero_copy_pays(frames)
        sock = s.socks[dst][1]
        while True:
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
                return
            except zmq.Again:
                self._wait(s, dst, eps, deadline, closed, zmq.POLLOUT, "take the inputs")

    def _receive(self, s: _Sockets, rid: int, eps: Mapping[str, str], deadline: float,
                 closed: threading.Event, answering: Iterable[str]) -> dict[str, np.ndarray]:
        """Every answering device's outputs for `rid` (a device may answer in several messages). A
        late answer to an earlier request that gave up on these sockets is skipped by its id."""
        got: dict[str, np.ndarray] = {}
        waiting = {r: set(self.answer_names[r]) for r in answering}
        # several of them may make one output (a group of alternatives that an agent picks from): done
        # once every output is in
        need = set().union(*waiting.values())
        poller = zmq.Poller()
        by_sock = {}
        for role, (_, sock) in s.socks.items():
            poller.register(sock, zmq.POLLIN)
            by_sock[sock] = role
        while waiting and not need <= got.keys():
            role = next(iter(waiting))
            left_ms = self._check(role, eps, deadline, closed, f"answer request {rid}")
            for sock, _ in poller.poll(min(SLICE_MS, max(1, int(left_ms)))):
                for _ in range(64):  # what is there, bounded
                    if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                        break
                    self._take_answer(by_sock[sock], sock.recv_multipart(copy=False), rid, got, waiting)
        return got

    def _take_answer(self, role: str, frames: list, rid: int, got: dict[str, np.ndarray],
                     waiting: dict[str, set[str]]) -> None:
        try:
            h, payload = decode(frames)
            if h.plan_id != self.plan_id or h.request_id != rid or h.kind not in ("tensor", "error"):
                log.debug("skipped a %s message for request %s from %s on a caller's socket", h.kind, h.request_id, role)
                return
            if h.kind == "error":
                cause, why = error_of(h.message)
                raise cause(why)
            arrs = arrays(h, payload)
        except WireError as e:
            raise PeerError(f"{role} sent a malformed answer to request {rid}: {e}") from None
        got.update(arrs)
        if role in waiting:
            waiting[role] -= arrs.keys()
            if not waiting[role]:
                del waiting[role]


__all__ = ["CallerPath"]

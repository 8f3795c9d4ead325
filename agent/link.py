"""Links to peers: one ZeroMQ DEALER per peer role, with hello, heartbeats and reconnection.

Every agent binds one ROUTER; whoever talks to it (another agent, or a client) connects a DEALER.
Replies (pong, hello, results for a client) go back on the ROUTER to the DEALER's identity, so a
client never has to be reachable itself. A peer is *up* once it answered `hello` with the same plan
id, and stays up while it answers pings. A restarted agent announces a new endpoint: it gets a
link of its own and takes over once up, while the dead one is forgotten after a while. Two live
agents of one role are reported, and the one that came up first keeps serving (no flapping).
Queues are bounded (high-water marks): a slow peer pushes back on its senders instead of growing
memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from edgepart.errors import WireError
from edgepart.wire import Header, decode, zero_copy_pays

log = logging.getLogger("edgepart")

HWM = 64  # messages queued per peer before senders wait
PING_INTERVAL_S = 0.5
DOWN_AFTER_S = 2.0
FORGET_AFTER_S = 30.0  # a discovered endpoint silent this long is closed (static peers are kept)


@dataclass
class Peer:
    endpoint: str
    sock: zmq.asyncio.Socket
    role: str = ""  # known after hello
    static: bool = False
    up: bool = False
    up_since: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = field(default=None, repr=False)


OnMessage = Callable[[Peer, Header, list], Awaitable[None] | None]


class Peers:
    """DEALER links by endpoint, addressed by role once `hello` told the role."""

    def __init__(self, ctx: zmq.asyncio.Context, identity: bytes, plan_id: str, me: str,
                 on_message: OnMessage, on_down: Callable[[str], None] | None = None):
        self.ctx, self.identity, self.plan_id, self.me = ctx, identity, plan_id, me
        self.on_message, self.on_down = on_message, on_down
        self.by_endpoint: dict[str, Peer] = {}
        self.role_changed = asyncio.Event()
        self._warned: set[str] = set()
        self._ping_task: asyncio.Task | None = None

    def start(self) -> None:
        self._ping_task = asyncio.ensure_future(self._pinger())

    def connect(self, endpoint: str, role: str = "", static: bool = False) -> Peer:
        """Connect (once) to `endpoint`; its role is confirmed by its `hello`."""
        if endpoint in self.by_endpoint:
            return self.by_endpoint[endpoint]
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, self.identity)
        s.setsockopt(zmq.SNDHWM, HWM)
        s.setsockopt(zmq.RCVHWM, HWM)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections: a dead peer blocks, not buffers
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        s.connect(endpoint)
        p = Peer(endpoint, s, role, static)
        p.task = asyncio.ensure_future(self._reader(p))
        self.by_endpoint[endpoint] = p
        asyncio.ensure_future(self._send_control(p, "hello"))
        return p

    def disconnect(self, endpoint: str) -> None:
        p = self.by_endpoint.pop(endpoint, None)
        if p is None:
            return
        if p.task:
            p.task.cancel()
        p.sock.close(linger=0)
        if p.up and p.role and self.on_down:
            self.on_down(p.role)

    def forget(self, endpoint: str) -> None:
        """Close a discovered link whose agent said goodbye (static peers stay)."""
        p = self.by_endpoint.get(endpoint)
        if p is not None and not p.static:
            self.disconnect(endpoint)

    def get(self, role: str) -> Peer | None:
        """The live link to `role`, if any; with duplicates, the one up the longest."""
        cands = [p for p in self.by_endpoint.values() if p.role == role and p.up]
        if len(cands) > 1:
            self._warn_once(f"dup:{role}", f"two live agents claim role {role!r} of plan {self.plan_id}: "
                            f"{', '.join(p.endpoint for p in cands)}; using the first, stop the other")
        return min(cands, key=lambda p: p.up_since) if cands else None

    def roles_up(self) -> set[str]:
        return {p.role for p in self.by_endpoint.values() if p.up and p.role}

    def send_nowait(self, role: str, frames: list) -> "asyncio.Future | None":
        """Queue `frames` for `role`: None when queued, else a future that completes when it is
        (the peer's queue is full). Raises ConnectionError when no live link to `role` exists."""
        p = self.get(role)
        if p is None:
            raise ConnectionError(f"no live link to {role}")
        fut = p.sock.send_multipart(frames, copy=not zero_copy_pays(frames))
        if fut.done():
            fut.result()
            return None
        return fut

    async def send(self, role: str, frames: list, timeout_s: float) -> None:
        """Send to `role`, waiting (backpressure) at most `timeout_s`; raises asyncio.TimeoutError."""
        p = self.get(role)
        if p is None:
            raise ConnectionError(f"no live link to {role}")
        fut = p.sock.send_multipart(frames, copy=not zero_copy_pays(frames))
        if not fut.done():  # the queue is full: wait (backpressure), but not past the deadline
            await asyncio.wait_for(fut, max(timeout_s, 0.001))
        else:
            fut.result()

    async def close(self) -> None:
        if self._ping_task:
            self._ping_task.cancel()
        for ep in list(self.by_endpoint):
            self.disconnect(ep)

    # -- internals ---------------------------------------------------------------------------------
    async def _send_control(self, p: Peer, kind: str) -> None:
        try:
            await asyncio.wait_for(p.sock.send(Header(kind, self.plan_id, self.me).encode()), PING_INTERVAL_S)
        except (asyncio.TimeoutError, zmq.ZMQError):
            pass  # not connected yet: the next ping or hello will try again

    async def _reader(self, p: Peer) -> None:
        while True:
            try:
                frames = await p.sock.recv_multipart(copy=False)
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                h, payload = decode(frames)
            except WireError as e:
                self._warn_once(p.endpoint, f"dropped a malformed message from {p.endpoint}: {e}")
                continue
            p.last_seen = time.monotonic()
            if h.kind == "hello":
                if h.plan_id != self.plan_id:
                    self._warn_once(p.endpoint, f"{p.endpoint} runs plan {h.plan_id}, this one {self.plan_id}: not talking to it")
                    continue
                if p.role and p.role != h.sender:
                    log.warning("%s says it is %r, discovery said %r", p.endpoint, h.sender, p.role)
                was_up, p.role, p.up = p.up, h.sender, True
                if not was_up:
                    p.up_since = time.monotonic()
                    log.info("link up: %s at %s", p.role, p.endpoint)
                    self.role_changed.set()
                continue
            if h.kind == "pong":
                if not p.up and h.plan_id == self.plan_id:
                    await self._send_control(p, "hello")
                continue
            if h.plan_id != self.plan_id:
                continue
            r = self.on_message(p, h, payload)
            if asyncio.iscoroutine(r):
                await r

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            now = time.monotonic()
            for p in list(self.by_endpoint.values()):
                if not p.static and not p.up and now - p.last_seen > FORGET_AFTER_S:
                    log.debug("forgetting %s at %s: silent for %.0f s", p.role or "peer", p.endpoint, now - p.last_seen)
                    self.disconnect(p.endpoint)
                    continue
                if p.up and now - p.last_seen > DOWN_AFTER_S:
                    p.up = False
                    log.warning("link down: %s at %s stopped answering", p.role, p.endpoint)
                    self.role_changed.set()
                    if self.on_down:
                        self.on_down(p.role)
                asyncio.ensure_future(self._send_control(p, "ping" if p.up else "hello"))

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)
        else:
            log.debug(msg)

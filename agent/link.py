"""Links to peers: one ZeroMQ DEALER per peer role, with hello, heartbeats and reconnection.

Every agent binds one ROUTER; whoever talks to it (another agent, or a client) connects a DEALER.
Replies (pong, hello, results for a client) go back on the ROUTER to the DEALER's identity, so a
client never has to be reachable itself. A peer is *up* once it answered `hello` with the same plan
id, and stays up while it answers pings; when a role's endpoint changes (the agent was restarted
on another port) the old DEALER is closed and a new one connected. Queues are bounded (high-water
marks): a slow peer pushes back on its senders instead of growing memory.
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
from edgepart.wire import Header, decode

log = logging.getLogger("edgepart")

HWM = 64  # messages queued per peer before senders wait
PING_INTERVAL_S = 0.5
DOWN_AFTER_S = 2.0


@dataclass
class Peer:
    endpoint: str
    sock: zmq.asyncio.Socket
    role: str = ""  # known after hello
    up: bool = False
    last_seen: float = 0.0
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

    def connect(self, endpoint: str, role: str = "") -> Peer:
        """Connect (once) to `endpoint`; a known role replaces that role's old endpoint."""
        if role:
            for ep, p in list(self.by_endpoint.items()):
                if p.role == role and ep != endpoint:
                    log.info("%s moved from %s to %s", role, ep, endpoint)
                    self.disconnect(ep)
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
        p = Peer(endpoint, s, role)
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

    def get(self, role: str) -> Peer | None:
        """The live link to `role`, if any (the most recently heard one when several)."""
        cands = [p for p in self.by_endpoint.values() if p.role == role and p.up]
        return max(cands, key=lambda p: p.last_seen) if cands else None

    def roles_up(self) -> set[str]:
        return {p.role for p in self.by_endpoint.values() if p.up and p.role}

    async def send(self, role: str, frames: list, timeout_s: float) -> None:
        """Send to `role`, waiting (backpressure) at most `timeout_s`; raises asyncio.TimeoutError."""
        p = self.get(role)
        if p is None:
            raise ConnectionError(f"no live link to {role}")
        fut = p.sock.send_multipart(frames, copy=False)
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

"""The caller's side of a cluster, async: find the agents of a plan, send inputs, gather outputs.

`InferenceSession` (edgepart.session) is its sync facade. Inputs go straight to every device that
needs them and outputs come straight back from the devices that make them (on the DEALER links
this client opened, so it need not be reachable itself). Every request has a deadline; a request
whose agent stops answering fails with PeerError at once, one past its deadline with
DeadlineExceeded — never a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import zmq
import zmq.asyncio

from edgepart.errors import DeadlineExceeded, PeerError, WireError
from edgepart.inputs import check_feeds
from edgepart.plan import CALLER, Plan
from edgepart.wire import Header, arrays, tensor_frames

from . import inproc
from .agent import parse_peer
from .discovery import Announcement, Discovery
from .link import Peers

log = logging.getLogger("edgepart")


@dataclass
class Pending:
    future: concurrent.futures.Future
    roles: set[str]
    timer: asyncio.TimerHandle
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class ClusterClient:
    def __init__(self, plan: Plan, *, interface: str | None = None, peers: tuple[str, ...] = (),
                 discover_timeout_s: float = 10.0):
        self.plan = plan
        self.interface = interface
        self.static_peers = tuple(parse_peer(p) for p in peers)
        self.discover_timeout_s = discover_timeout_s
        self.roles = set(plan.device_names())  # all of them: any one vanishing fails what is in flight
        self.outputs = [o.name for o in plan.outputs]
        self.pending: dict[int, Pending] = {}
        self._tasks: set[asyncio.Task] = set()
        self.inputs_by_dst: dict[str, list[str]] = {}
        for r in plan.routes_from(CALLER):
            self.inputs_by_dst.setdefault(r.dst, []).append(r.tensor)
        self._ids = itertools.count(1)
        self.identity = f"{CALLER}:{secrets.token_hex(6)}".encode()

    async def start(self) -> "ClusterClient":
        self.loop = asyncio.get_running_loop()
        self.ctx = zmq.asyncio.Context()
        self.peers = Peers(self.ctx, self.identity, self.plan.plan_id, CALLER, self._on_message, self._on_down)
        self.peers.start()
        for ep in self.static_peers:
            self.peers.connect(ep, static=True)
        self.discovery = Discovery(self.interface, self.plan.plan_id, self._on_discovered)
        await self.discovery.start()
        inproc.register_client(self.identity, self)
        if not await self.wait_ready(self.discover_timeout_s):
            missing = sorted(self.missing_roles())
            await self.close()
            raise PeerError(
                f"No agent answered for {', '.join(missing)} of plan {self.plan.plan_id} within "
                f"{self.discover_timeout_s:g} s. Start `edgepart run dist/<device>` on each device (same "
                f"plan id: package once, copy each bundle); pick the network with --interface; where "
                f"multicast is blocked, name the agents with --peer HOST:PORT."
            )
        return self

    def missing_roles(self) -> set[str]:
        return self.roles - self.peers.roles_up()

    async def wait_ready(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while self.missing_roles():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.peers.role_changed.clear()
            try:
                await asyncio.wait_for(self.peers.role_changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        return True

    async def close(self) -> None:
        inproc.unregister_client(self.identity)
        for rid in list(self.pending):
            self.on_error(rid, "the session was closed")
        for t in list(self._tasks):
            t.cancel()
        await self.discovery.close()
        await self.peers.close()
        self.ctx.destroy(linger=0)

    def submit(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> concurrent.futures.Future:
        """From any thread: check the inputs here (errors raise at once), send them from the loop.

        The future gives {output: array}, or raises PeerError / DeadlineExceeded. No task per
        request: the send runs as one loop callback, a timer enforces the deadline.
        """
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        check_feeds(self.plan.inputs, feeds)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._send_request, feeds, timeout_s, fut)
        return fut

    async def infer(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> dict[str, np.ndarray]:
        """All model outputs for one request, awaited from any event loop."""
        return await asyncio.wrap_future(self.submit(feeds, timeout_s))

    def _send_request(self, feeds: dict[str, np.ndarray], timeout_s: float, fut: concurrent.futures.Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        rid = next(self._ids)
        timer = self.loop.call_later(timeout_s, self._expire, rid, timeout_s)
        self.pending[rid] = Pending(fut, set(self.roles), timer)
        deadline = time.monotonic() + timeout_s
        ttl_ms = timeout_s * 1e3
        for dst, names in self.inputs_by_dst.items():
            arrs = {n: feeds[n] for n in names}
            if (local := inproc.agent(self.plan.plan_id, dst)) is not None:
                try:
                    local.deliver_local(CALLER, (self.identity, rid), arrs, ttl_ms)
                except WireError as e:
                    self.on_error(rid, f"{dst} rejected the inputs: {e}")
                    return
                continue
            h = Header("tensor", self.plan.plan_id, CALLER, request_id=rid, client=self.identity, ttl_ms=ttl_ms)
            try:
                sending = self.peers.send_nowait(dst, tensor_frames(h, arrs))
            except ConnectionError:
                self.on_error(rid, f"{dst} is not reachable now (it stopped answering); restart `edgepart run` "
                                   f"there, the session reconnects by itself", cause=PeerError)
                return
            if sending is not None:  # queue full: wait for room (backpressure) within the deadline
                t = asyncio.ensure_future(self._finish_send(rid, dst, sending, deadline))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def _finish_send(self, rid: int, dst: str, sending: asyncio.Future, deadline: float) -> None:
        try:
            await asyncio.wait_for(sending, max(deadline - time.monotonic(), 0.001))
        except (asyncio.TimeoutError, zmq.ZMQError):
            self.on_error(rid, f"{dst} did not take the inputs before the deadline", cause=DeadlineExceeded)

    def _expire(self, rid: int, timeout_s: float) -> None:
        p = self.pending.get(rid)
        if p is None:
            return
        missing = [o for o in self.outputs if o not in p.outputs]
        self.on_error(rid, f"request {rid} was not answered within {timeout_s:g} s (outputs still missing: "
                           f"{', '.join(missing)}). Raise timeout_s, or check the agents with `edgepart discover`.",
                      cause=DeadlineExceeded)

    def _on_message(self, peer, h: Header, payload: list) -> None:
        if h.kind == "error":
            self.on_error(h.request_id, h.message)
        elif h.kind == "tensor":
            try:
                got = arrays(h, payload)
            except WireError as e:
                self.on_error(h.request_id, f"{peer.role} sent a malformed result: {e}")
                return
            self.on_result(h.request_id, got)

    def on_result(self, rid: int, got: dict[str, np.ndarray]) -> None:
        p = self.pending.get(rid)
        if p is None:
            return  # a late answer to a request that already failed or timed out
        p.outputs.update((k, v) for k, v in got.items() if k in self.outputs)
        if len(p.outputs) == len(self.outputs):
            del self.pending[rid]
            p.timer.cancel()
            p.future.set_result(p.outputs)

    def on_error(self, rid: int, why: str, cause: type[PeerError] = PeerError) -> None:
        p = self.pending.pop(rid, None)
        if p is None:
            return
        p.timer.cancel()
        msg = why if cause is DeadlineExceeded else f"the cluster failed request {rid}: {why}"
        p.future.set_exception(cause(msg))

    def _on_down(self, role: str) -> None:
        for rid, p in list(self.pending.items()):
            if role in p.roles:
                self.on_error(rid, f"{role} stopped answering while request {rid} was in flight; restart "
                                   f"`edgepart run` there (the session reconnects by itself) and send it again.")

    def _on_discovered(self, ann: Announcement, present: bool) -> None:
        if not present:
            self.peers.forget(ann.endpoint)  # it said goodbye
        elif ann.role in self.roles:
            self.peers.connect(ann.endpoint, ann.role)

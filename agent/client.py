"""The caller's side of a cluster, async: find the agents of a plan, send inputs, gather outputs.

`InferenceSession` (edgepart.session) is its sync facade. Inputs go straight to every device that
needs them and outputs come straight back from the devices that make them (on the DEALER links
this client opened, so it need not be reachable itself). Every request has a deadline; a request
whose agent stops answering fails with PeerError at once, one past its deadline with
DeadlineExceeded — never a hang.
"""

from __future__ import annotations

import asyncio
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
    future: asyncio.Future
    roles: set[str]
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
        self._ids = itertools.count(1)
        self.identity = f"{CALLER}:{secrets.token_hex(6)}".encode()

    async def start(self) -> "ClusterClient":
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
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(PeerError("the session was closed"))
        self.pending.clear()
        await self.discovery.close()
        await self.peers.close()
        self.ctx.destroy(linger=0)

    async def infer(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> dict[str, np.ndarray]:
        """All model outputs for one request, or PeerError / DeadlineExceeded."""
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        check_feeds(self.plan.inputs, feeds)
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = Pending(fut, set(self.roles))
        deadline = time.monotonic() + timeout_s
        try:
            by_dst: dict[str, dict[str, np.ndarray]] = {}
            for r in self.plan.routes_from(CALLER):
                by_dst.setdefault(r.dst, {})[r.tensor] = feeds[r.tensor]
            for dst, arrs in by_dst.items():
                left = deadline - time.monotonic()
                if (local := inproc.agent(self.plan.plan_id, dst)) is not None:
                    try:
                        local.deliver_local(CALLER, (self.identity, rid), arrs, max(left, 0.001) * 1e3)
                    except WireError as e:
                        raise PeerError(f"{dst} rejected the inputs: {e}") from None
                    continue
                h = Header("tensor", self.plan.plan_id, CALLER, request_id=rid, client=self.identity,
                           ttl_ms=max(left, 0.001) * 1e3)
                try:
                    await self.peers.send(dst, tensor_frames(h, arrs), left)
                except ConnectionError:
                    raise PeerError(f"{dst} of plan {self.plan.plan_id} is not reachable now (it stopped answering); "
                                    f"restart `edgepart run` there, the session reconnects by itself.") from None
            try:
                return await asyncio.wait_for(asyncio.shield(fut), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise DeadlineExceeded(
                    f"request {rid} was not answered within {timeout_s:g} s (outputs still missing: "
                    f"{', '.join(o for o in self.outputs if o not in self.pending.get(rid, Pending(fut, set())).outputs)}). "
                    f"Raise timeout_s, or check the agents with `edgepart discover`."
                ) from None
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"request {rid}: the cluster did not take its inputs within {timeout_s:g} s") from None
        finally:
            self.pending.pop(rid, None)

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
        if p is None or p.future.done():
            return  # a late answer to a request that already failed or timed out
        p.outputs.update((k, v) for k, v in got.items() if k in self.outputs)
        if len(p.outputs) == len(self.outputs):
            p.future.set_result(dict(p.outputs))

    def on_error(self, rid: int, why: str) -> None:
        p = self.pending.get(rid)
        if p is not None and not p.future.done():
            p.future.set_exception(PeerError(f"the cluster failed request {rid}: {why}"))

    def _on_down(self, role: str) -> None:
        for rid, p in list(self.pending.items()):
            if role in p.roles and not p.future.done():
                p.future.set_exception(PeerError(
                    f"{role} stopped answering while request {rid} was in flight; restart `edgepart run` "
                    f"there (the session reconnects by itself) and send the request again."))

    def _on_discovered(self, ann: Announcement, present: bool) -> None:
        if not present:
            self.peers.forget(ann.endpoint)  # it said goodbye
        elif ann.role in self.roles:
            self.peers.connect(ann.endpoint, ann.role)

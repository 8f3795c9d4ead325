"""The agent: one device's bundle, served. Async core, thin sync facade.

    async with AgentCore(bundle) as core: ...        # inside an event loop
    with edgepart.Agent("dist/jetson-a") as agent:    # anywhere: runs its loop in a thread

The core binds a ZeroMQ ROUTER, announces itself over mDNS, links to the peers it sends to, and
feeds every valid tensor message to the executor. A malformed message is logged and dropped; the
agent keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from pathlib import Path

import numpy as np
import zmq
import zmq.asyncio

from edgepart import aio
from edgepart.bundle import Bundle, load_bundle
from edgepart.errors import PeerError, WireError
from edgepart.plan import CALLER
from edgepart.wire import Header, arrays, decode, tensor_frames, zero_copy_pays

from . import inproc
from .discovery import Announcement, Discovery
from .executor import Executor, Key
from .link import HWM, Peers

log = logging.getLogger("edgepart")


def parse_peer(text: str) -> str:
    """`host:port` or `tcp://host:port` -> `tcp://host:port`."""
    t = text[6:] if text.startswith("tcp://") else text
    host, sep, port = t.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerError(f"--peer {text!r} is not HOST:PORT (for example 192.168.1.20:5555).")
    return f"tcp://{host}:{port}"


class AgentCore:
    """The async agent. `await start()`, then it serves until `await stop()`."""

    def __init__(self, bundle: Bundle, *, interface: str | None = None, port: int = 0,
                 peers: tuple[str, ...] = (), threads: int = 0, announce: bool = True):
        self.bundle = bundle
        self.plan = bundle.plan
        self.device = bundle.device
        self.interface = interface
        self.port = port
        self.static_peers = tuple(parse_peer(p) for p in peers)
        self.threads = threads
        self.announce = announce
        self.endpoint = ""
        self.dropped = 0
        self._warned: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self.needed_roles = {r.dst for r in self.plan.routes_from(self.device) if r.dst != CALLER}

    async def start(self) -> "AgentCore":
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, HWM)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        host = self.interface or "0.0.0.0"
        try:
            if self.port:
                self.router.bind(f"tcp://{host}:{self.port}")
            else:
                self.port = self.router.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as e:
            self.ctx.destroy(linger=0)
            raise PeerError(f"cannot listen on {host}:{self.port or 'any'} ({e}). Pick another --port or --interface.") from None
        self.endpoint = f"tcp://{host}:{self.port}"
        self.executor = Executor(self.bundle, self._send, self._fail, self.threads)
        await asyncio.get_running_loop().run_in_executor(None, self.executor.load)
        self.peers = Peers(self.ctx, f"{self.device}:{secrets.token_hex(4)}".encode(), self.plan.plan_id,
                           self.device, self._on_peer_message)
        self.peers.start()
        for ep in self.static_peers:
            self.peers.connect(ep, static=True)
        self.discovery = Discovery(self.interface, self.plan.plan_id, self._on_discovered)
        await self.discovery.start()
        if self.announce:
            await self.discovery.announce(self.device, self.plan.plan_id, self.interface or "0.0.0.0", self.port)
        self._tasks = [asyncio.ensure_future(self._serve()), asyncio.ensure_future(self._housekeeping())]
        inproc.register_agent(self.plan.plan_id, self.device, self)
        log.info("agent %s of plan %s listening on %s", self.device, self.plan.plan_id, self.endpoint)
        return self

    async def stop(self) -> None:
        inproc.unregister_agent(self.plan.plan_id, self.device, self)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.discovery.close()
        await self.peers.close()
        self.executor.close()
        self.router.close(linger=0)
        self.ctx.destroy(linger=0)

    async def __aenter__(self) -> "AgentCore":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def missing_roles(self) -> set[str]:
        return self.needed_roles - self.peers.roles_up()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every peer this device sends to is linked; False on timeout."""
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

    # -- inbound ---------------------------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            if self.executor.full:
                self.executor.slot_free.clear()
                await self.executor.slot_free.wait()  # backpressure: leave messages in zmq's bounded queue
            frames = await self.router.recv_multipart(copy=False)
            ident = frames[0].bytes
            h = None
            try:
                h, payload = decode(frames[1:])
                await self._handle(ident, h, payload)
            except WireError as e:
                self._drop(ident, str(e))
                if h is not None and h.kind == "tensor" and h.client and h.plan_id == self.plan.plan_id:
                    # a well-addressed request with bad content: fail it now rather than at its deadline
                    self._fail((h.client, h.request_id), f"{self.device} rejected a message from {h.sender}: {e}")

    async def _handle(self, ident: bytes, h: Header, payload: list) -> None:
        if h.kind in ("ping", "hello"):
            kind = "pong" if h.kind == "ping" else "hello"
            if h.plan_id != self.plan.plan_id and h.kind == "hello":
                self._drop(ident, f"hello from plan {h.plan_id}, this agent runs {self.plan.plan_id}")
            await self._reply(ident, [Header(kind, self.plan.plan_id, self.device).encode()])
            return
        if h.plan_id != self.plan.plan_id:
            raise WireError(f"message of plan {h.plan_id!r}, this agent runs {self.plan.plan_id}")
        if h.kind != "tensor":
            raise WireError(f"unexpected {h.kind} message")
        for t in h.tensors:
            self._check(h.sender, t.name, t.dtype, t.shape)
        if h.ttl_ms <= 0:
            raise WireError("tensor message without a deadline (ttl)")
        self.executor.deliver((h.client, h.request_id), arrays(h, payload), h.ttl_ms)

    def _check(self, sender: str, name: str, dtype: str, shape: tuple) -> None:
        if not self.executor.accepts(name, sender):
            raise WireError(f"{sender!r} may not send {name!r} to {self.device}")
        spec = self.executor.input_specs.get(name)
        if spec is not None and (dtype != spec.dtype or len(shape) != len(spec.shape)):
            raise WireError(f"{name} is {dtype}{list(shape)}, the plan says {spec.dtype}{list(spec.shape)}")

    def deliver_local(self, sender: str, key: Key, arrs: dict[str, np.ndarray], ttl_ms: float) -> None:
        """Tensors from a part in this process (see inproc.py), checked like a message."""
        for name, a in arrs.items():
            self._check(sender, name, a.dtype.name, a.shape)
        self.executor.deliver(key, arrs, ttl_ms)

    def _drop(self, ident: bytes, why: str) -> None:
        self.dropped += 1
        key = ident[:32].hex()
        if key not in self._warned:
            self._warned.add(key)
            log.warning("dropped a message from %s: %s", ident[:32], why)
        else:
            log.debug("dropped a message from %s: %s", ident[:32], why)

    async def _on_peer_message(self, peer, h: Header, payload: list) -> None:
        pass  # peers only answer pings and hellos on our DEALERs; tensors arrive on the ROUTER

    def _on_discovered(self, ann: Announcement, present: bool) -> None:
        if not present:
            self.peers.forget(ann.endpoint)  # it said goodbye
        elif ann.role != self.device and ann.role in self.needed_roles:
            self.peers.connect(ann.endpoint, ann.role)

    # -- outbound --------------------------------------------------------------------------------
    def _send(self, dst: str, key: Key, arrs: dict[str, np.ndarray], deadline: float) -> "asyncio.Future | None":
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise PeerError("deadline passed")
        if dst == CALLER and (c := inproc.client(key[0])) is not None:
            c.on_result(key[1], arrs)
            return None
        if dst != CALLER and (a := inproc.agent(self.plan.plan_id, dst)) is not None:
            a.deliver_local(self.device, key, arrs, left_s * 1e3)
            return None
        h = Header("tensor", self.plan.plan_id, self.device, request_id=key[1], client=key[0], ttl_ms=left_s * 1e3)
        frames = tensor_frames(h, arrs)
        if dst == CALLER:
            return self._reply_nowait(key[0], frames)
        try:
            return self.peers.send_nowait(dst, frames)
        except ConnectionError:
            raise PeerError(f"{dst} is not reachable") from None

    def _reply_nowait(self, ident: bytes, frames: list) -> "asyncio.Future | None":
        """Send on the ROUTER to `ident`; a caller that went away is logged, not an error."""
        try:
            fut = self.router.send_multipart([ident, *frames], copy=not zero_copy_pays(frames))
        except zmq.ZMQError as e:
            log.debug("could not reply to %s: %s", ident[:32], e)
            return None
        if not fut.done():
            return fut
        if fut.exception() is not None:  # EHOSTUNREACH: the caller went away
            log.debug("could not reply to %s: %s", ident[:32], fut.exception())
        return None

    async def _reply(self, ident: bytes, frames: list) -> None:
        fut = self._reply_nowait(ident, frames)
        if fut is not None:
            try:
                await asyncio.wait_for(fut, 2.0)
            except (asyncio.TimeoutError, zmq.ZMQError):
                log.debug("reply to %s timed out", ident[:32])

    def _fail(self, key: Key, why: str) -> None:
        if (c := inproc.client(key[0])) is not None:
            c.on_error(key[1], why)
            return
        h = Header("error", self.plan.plan_id, self.device, request_id=key[1], client=key[0], message=why)
        self._reply_nowait(key[0], [h.encode()])

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.executor.expire()


class Agent:
    """A device's agent in this process: `Agent(bundle).start()` ... `.stop()`, or `with`.

    It runs on the process's shared background loop (edgepart.aio), beside any InferenceSession.
    """

    def __init__(self, bundle: Bundle | str | Path, *, interface: str | None = None, port: int = 0,
                 peers: tuple[str, ...] = (), threads: int = 0, announce: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self._kw = dict(interface=interface, port=port, peers=tuple(peers), threads=threads, announce=announce)
        self.core: AgentCore | None = None

    @property
    def endpoint(self) -> str:
        return self.core.endpoint if self.core else ""

    def start(self, timeout_s: float = 60.0) -> "Agent":
        if self.core is not None:
            return self
        aio.acquire()
        try:
            self.core = aio.call(AgentCore(self.bundle, **self._kw).start(), timeout_s)
        except concurrent.futures.TimeoutError:
            aio.release()
            raise PeerError(f"agent {self.bundle.device} did not start within {timeout_s:.0f} s") from None
        except BaseException:
            aio.release()
            raise
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """True once every peer this device sends to is linked."""
        if self.core is None:
            raise PeerError("the agent is not started")
        return aio.call(self.core.wait_ready(timeout_s), timeout_s + 5)

    def stop(self) -> None:
        if self.core is None:
            return
        core, self.core = self.core, None
        try:
            aio.call(core.stop(), 10)
        except Exception as e:  # stopping must not raise
            log.debug("agent stop: %s", e)
        aio.release()

    def __enter__(self) -> "Agent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

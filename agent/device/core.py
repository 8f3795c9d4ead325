"""The agent: one device's bundle, served.

    async with AgentCore(bundle) as core: ...        # inside an event loop
    with edgepart.Agent("dist/jetson-a") as agent:    # anywhere: on the shared background loop

Two planes. The control plane runs on asyncio: mDNS announce and browse (zeroconf), and telling the
data plane which peers exist. The data plane is one thread that owns the ZeroMQ sockets — a bound
ROUTER and a DEALER per peer — and the executor: it receives, validates, computes (onnxruntime
releases the GIL) and sends with no hand-off between threads on the way. A malformed message is
logged and dropped; the agent keeps serving. In a plan with sources the data plane runs one queued
step per turn and follows the queues of the helpers it may send to (docs/priority.md, "Agents").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import math
import queue
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from edgepart import aio
from edgepart.bundle import Bundle, load_bundle
from edgepart.errors import BundleError, PeerError, WireError
from edgepart.keys import Credentials, Keys
from edgepart.plan import CALLER
from edgepart.runtime import Providers, choose, session_threads, use_shared_pool
from edgepart.wire import Header, Status, arrays, decode, error_of, roundtrip, tensor_frames

from ..net import inproc
from ..net.discovery import Announcement, Discovery
from ..net.link import HWM, POLL_MS, REPORT_S, Links, Waker, WarnOnce, parse_peer, route_codecs, stop_io_thread, tune
from ..net.secure import Guard, who
from ._direct import DirectRuns
from .admission import MAX_HELD_MB, Admission, sole_upstream
from .executor import Executor, Key

log = logging.getLogger("edgepart")

def agent_credentials(bundle: Bundle, insecure: bool) -> Credentials:
    """This agent's keys (docs/agents.md, "Encryption"): its own keypair and its plan's public keys,
    or none under --insecure, which a bundle packaged --insecure requires."""
    if not bundle.keys.secure and not insecure:
        raise BundleError(f"The bundle {bundle.path} was packaged with --insecure: it holds no link keys. Start "
                          f"it with `edgepart run --insecure` (plaintext links, any process on the network may "
                          f"talk to it), or package again without --insecure.")
    if insecure:
        log.warning("agent %s runs --insecure: its links are plaintext and unauthenticated", bundle.device)
        return Credentials(None, Keys())
    return Credentials(bundle.device_keypair(), bundle.keys)


class AgentCore:
    """The agent. `await start()`, then it serves until `await stop()`."""

    def __init__(self, bundle: Bundle, *, interface: str | None = None, port: int = 0,
                 peers: tuple[str, ...] = (), threads: int = 0, announce: bool = True, shared_pool: bool = False,
                 providers: str | tuple[str, ...] | Providers = "auto", device_id: int = 0, fp16: bool = False,
                 insecure: bool = False, inflight_mb: int = MAX_HELD_MB):
        self.bundle = bundle
        self.inflight_mb = inflight_mb
        self.credentials = agent_credentials(bundle, insecure)
        self.shared_pool = shared_pool  # one onnxruntime pool for the process (only `edgepart run`: runtime.py)
        self.plan = bundle.plan
        self.device = bundle.device
        self.interface = interface
        self.port = port
        self.static_peers = tuple(parse_peer(p) for p in peers)
        # one budget for all of this device's sessions (docs/agents.md, "Threads")
        planned = next((d.threads for d in self.plan.devices if d.name == self.device), 0)
        self.threads, self.threads_from = session_threads(threads, planned)
        # what runs the ONNX steps; a provider asked for by name that this build lacks stops the
        # agent here, before it announces itself (docs/agents.md, "Execution providers"); one that is
        # there but does not start stops it in start(), when its sessions are made. A Providers value
        # (an app that chose already) is taken as it is.
        spec = next((d.providers for d in self.plan.devices if d.name == self.device), ())
        self.providers = providers if isinstance(providers, Providers) else choose(
            providers, spec, cache_dir=bundle.path / ".cache", threads=self.threads, device_id=device_id, fp16=fp16)
        self.runtimes = tuple(sorted({s.runtime for s in bundle.steps}))
        self.announce = announce
        self.endpoint = ""
        self.ipc = ""  # the local socket's path, for apps on this host
        self.dropped = 0
        self._warn_once = WarnOnce()
        self.needed_roles = {r.dst for r in self.plan.routes_from(self.device) if r.dst != CALLER}
        self.codecs = route_codecs(self.plan, self.device)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # deliveries from parts in this process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the requests a caller's thread in this process runs here (_direct.py): made in start() where
        # the plan's hints make this device the entry, with one step that only the caller feeds
        self.direct: DirectRuns | None = None
        # Answers relayed to a client in this process (see _on_answer): requests that enter the
        # cluster here go on as this agent's own, and the devices that answer the caller (all of
        # them among this agent's peers) answer on its links. Data thread only.
        others = {r.src for r in self.plan.routes_to(CALLER)} - {self.device}
        everyone_else = set(self.plan.device_names()) - {self.device}
        # only where nothing but the caller sends to this device (a tensor sent back here would
        # carry the relay's key, not the request's) and every other device is a peer (so any of
        # them can answer, or fail a request, to this agent's link identity)
        self.relays = (bool(others) and everyone_else <= self.needed_roles
                       and all(r.src == CALLER for r in self.plan.routes_to(self.device)))
        self._answering = frozenset(others)
        self._relay_out: dict[Key, int] = {}  # a client's request -> its id on the wire
        self._relay_in: dict[int, tuple[Key, float]] = {}  # id on the wire -> (the client's request, deadline)
        self._relay_deadlines: list[tuple[float, int]] = []  # a heap of (deadline, id on the wire)
        self._relay_ids = itertools.count(1)
        self.relayed = 0  # answers handed to a client in this process
        self.relayed_errors = 0  # ... and errors

    async def start(self) -> "AgentCore":
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        tune(self.router)
        self.router.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        self.guard = Guard(self.credentials, self.ctx, self.router, self.device)  # CURVE server, before bind
        host = self.interface or "0.0.0.0"
        try:
            if self.port:
                self.router.bind(f"tcp://{host}:{self.port}")
            else:
                self.port = self.router.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as e:
            self.guard.close()
            self.ctx.destroy(linger=0)
            raise PeerError(f"cannot listen on {host}:{self.port or 'any'} ({e}). Pick another --port or --interface.") from None
        self.endpoint = f"tcp://{host}:{self.port}"
        self.ipc = self.guard.bind_local(self.plan.plan_id, self.device)  # apps on this host (net/local.py)
        if self.shared_pool:
            use_shared_pool(self.threads)
        self.executor = Executor(self.bundle, self._send, self._fail, self.threads, self.providers,
                                 Admission(held_bytes=self.inflight_mb << 20,
                                           whole=sole_upstream(self.plan, self.device)))
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.executor.load)
        except BaseException:
            self.guard.close()
            self.ctx.destroy(linger=0)
            raise
        self.providers = self.executor.providers  # what the sessions really got, not what was asked
        self.waker = Waker()
        self.links = Links(self.ctx, f"{self.device}:{secrets.token_hex(4)}".encode(), self.plan.plan_id,
                           self.device, on_message=self._on_answer, keys=self.credentials)
        for ep in self.static_peers:
            self.links.post(self.waker, "connect", ep, static=True)
        # plans with sources: the helpers this device may send a source's work to say their queues
        self.links.watched = frozenset(d for g in self.plan.alternatives for d in g.devices
                                       if any(r.dst == d for r in self.plan.routes_from(self.device)))
        self.executor.figures = self.links.report
        hints = self.plan.hints
        if hints.entry == self.device and hints.entry_step:
            step = next(s for s in self.executor.steps if s.name == hints.entry_step)
            self.direct = DirectRuns(step, executor=self.executor, links=self.links, ctx=self.ctx,
                                     plan_id=self.plan.plan_id, device=self.device, codecs=self.codecs)
        self._thread = threading.Thread(target=self._data_plane, name=f"edgepart-{self.device}", daemon=True)
        self._thread.start()
        inproc.register_agent(self.plan.plan_id, self.device, self)
        self.discovery = Discovery(self.interface, self.plan.plan_id, self._on_discovered)
        await self.discovery.start()
        if self.announce:
            await self.discovery.announce(self.device, self.plan.plan_id, self.interface or "0.0.0.0", self.port,
                                          secure=self.credentials.secure, ipc=self.ipc)
        log.info("agent %s of plan %s listening on %s, %d thread(s) from %s, runtime %s, providers %s (%s)",
                 self.device, self.plan.plan_id, self.endpoint, self.threads, self.threads_from,
                 "+".join(self.runtimes), ", ".join(self.providers.short), self.providers.source)
        if self.plan.lanes:
            log.info("agent %s serves the sources %s, its queue by %s (docs/priority.md)", self.device,
                     ", ".join(self.plan.lanes.names), self.plan.lanes.rule)
        return self

    async def stop(self) -> None:
        inproc.unregister_agent(self.plan.plan_id, self.device, self)
        # senders see the registry gone within one poll slice; their sockets close once they left
        if self.direct is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.direct.close)
        await self.discovery.close()
        await asyncio.get_running_loop().run_in_executor(None, self.guard.close)
        await stop_io_thread(self._stop, self.waker, self._thread, self.ctx)

    async def __aenter__(self) -> "AgentCore":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def missing_roles(self) -> set[str]:
        return self.needed_roles - self.links.roles_up()

    def status(self) -> Status:
        """Whether this agent is linked to every peer it sends to, and its threads (any thread)."""
        missing = tuple(sorted(self.missing_roles()))
        key = self.credentials.me.public if self.credentials.secure else ""
        ex = self.executor
        queued, steps = (ex.queued(), ex.measured()) if ex.rule else ((), ())
        return Status(not missing, missing, self.threads, self.threads_from, self.runtimes, self.providers.short, key,
                      queued, steps)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every peer this device sends to is linked; False on timeout."""
        return await asyncio.get_running_loop().run_in_executor(None, self.links.wait_roles, self.needed_roles, timeout_s)

    def deliver_local(self, sender: str, key: Key, arrs: dict[str, np.ndarray], ttl_ms: float,
                      relay: bool = False, source: str = "", age_ms: float = 0.0) -> None:
        """Tensors from a part in this process (see inproc.py); any thread may call this. `relay`: the
        caller (a client in this process) sends this request's inputs here alone, so its answers
        may come back through this agent (where the plan allows: `relays`). `source`, `age_ms`: the
        request's (plans with sources)."""
        self.inbox.put((sender, key, arrs, ttl_ms, relay, source, age_ms))
        self.waker.wake()

    # -- control plane -----------------------------------------------------------------------------
    def _on_discovered(self, ann: Announcement, present: bool) -> None:
        if not present:
            self.links.post(self.waker, "forget", ann.endpoint)  # it said goodbye
        elif ann.role != self.device and ann.role in self.needed_roles:
            self.links.post(self.waker, "connect", ann.endpoint, ann.role)

    # -- data plane (its own thread) ---------------------------------------------------------------
    def _data_plane(self) -> None:
        poller = self.links.poller
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.waker.r, zmq.POLLIN)
        try:
            # plans with sources: while requests were here in the last second, back at least every
            # REPORT_S to ask the helpers for their queues; an idle agent asks nothing
            active_until = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if self.executor.requests:
                    active_until = now + 1.0
                active = self.links.watched and now < active_until
                # while some peer's queue is full, come back soon to retry (never block in a send);
                # while steps wait in the queue, only look at what came (one step per turn, below)
                ready = poller.poll(0 if self.executor.queue else 1 if self.links.outbox else
                                    min(POLL_MS, REPORT_S * 1e3) if active else POLL_MS)
                for sock, _ in ready:
                    if sock is self.router:
                        self._read_router()
                    elif sock == self.waker.r:
                        self.waker.drain()
                        self.links.run_commands()
                        self._read_inbox()
                    else:
                        self.links.handle(sock)
                if self.executor.queue:
                    self.executor.run_next()
                self.links.outbox.flush()
                if active:
                    self.links.ask_queues()
                self.executor.expire()
                self._expire_relays()
                self.links.sweep()
        except Exception:  # a bug here must not die silently: log it, the agent stops serving
            log.exception("agent %s: data plane crashed", self.device)
        finally:
            self.links.close()
            self.router.close(0)

    def _read_router(self) -> None:
        for _ in range(HWM):  # bounded: the links and the inbox get their turn
            if not self.router.get(zmq.EVENTS) & zmq.POLLIN:  # (cheaper than a recv that raises Again)
                return
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes
            h = None
            try:
                h, payload = decode(frames[1:])
                try:
                    sender = self._sender_of(frames[1], h)
                except WireError as e:  # a key speaking for another: answer that connection alone
                    self._drop(ident, str(e))
                    self._reply(ident, [Header("error", self.plan.plan_id, self.device, request_id=h.request_id,
                                               client=h.client, message=f"{self.device} refused a message: {e}").encode()],
                                time.monotonic() + 5.0)
                    continue
                self._handle(ident, h, payload, sender)
            except WireError as e:
                self._drop(ident, str(e))
                if h is not None and h.kind == "tensor" and h.client and h.plan_id == self.plan.plan_id:
                    # a well-addressed request with bad content: fail it now rather than at its deadline
                    self._fail((h.client, h.request_id), f"{self.device} rejected a message from {h.sender}: {e}")
            except Exception as e:  # a bug must cost one message, never the data plane
                log.exception("agent %s: a message from %s could not be handled", self.device, ident[:32])
                self._drop(ident, f"{type(e).__name__}: {e}")

    def _read_inbox(self) -> None:
        while True:
            try:
                sender, key, arrs, ttl_ms, relay, source, age_ms = self.inbox.get_nowait()
            except queue.Empty:
                return
            try:
                for name, a in arrs.items():
                    self._check(sender, name, a.dtype.name, a.shape)
                src, nbytes = self._local_sender(sender, key), sum(a.nbytes for a in arrs.values())
                if (why := self.executor.refusal(key, src, nbytes)) is not None:
                    self._refuse(key, why)
                    continue
                if relay and self.relays and key not in self._relay_out:
                    wire, deadline = next(self._relay_ids), time.monotonic() + ttl_ms / 1e3
                    self._relay_out[key], self._relay_in[wire] = wire, (key, deadline)
                    heapq.heappush(self._relay_deadlines, (deadline, wire))
                self.executor.deliver(key, arrs, ttl_ms, src, nbytes, source, age_ms)
            except WireError as e:
                self._fail(key, f"{self.device} rejected the inputs: {e}")

    def _sender_of(self, frame: zmq.Frame, h: Header) -> str:
        """Who sent `h`, the name its requests are bounded by (docs/agents.md, "Admission"): the
        device or app the connection's key belongs to, which must be the one the header names (a
        device's key speaks for that device, or for an app on it, never for another device); a
        process on this host's local socket, by its pid; under --insecure, the name it gives."""
        if not self.credentials.secure:
            return self._local_sender(h.sender, (h.client, 0))
        try:
            name, kind = who(frame.get("User-Id"))
        except zmq.ZMQError:  # (every connection has one: the ZAP handler named it)
            raise WireError("a message on a connection the ZAP handler did not name") from None
        if kind == "local":  # a process of this user on this host (agent/net/local.py): it could read the keys
            return f"app pid {name}" if h.sender == CALLER else h.sender
        device = kind == "device"
        if h.kind == "tensor" and h.sender not in ((name, CALLER) if device else (CALLER,)):  # (pings: "@discover")
            raise WireError(f"a message sent with {'device' if device else 'app'} {name}'s key says it comes from {h.sender!r}")
        return name if device and h.sender == name else f"app {name}"

    @staticmethod
    def _local_sender(sender: str, key: Key) -> str:
        """The name a sender without a key is bounded by: a device's, or one per caller's session."""
        return sender if sender != CALLER else f"app {key[0].decode('ascii', 'replace')}"

    def _refuse(self, key: Key, why: str) -> None:
        """Turn away a message for `key` (admission.py): a request it would start, or the one it belongs to."""
        why = f"{self.device} is busy: {why}"
        if key in self.executor.requests:
            self.executor.fail_request(key, why)
        else:
            self._fail(key, why)

    def _handle(self, ident: bytes, h: Header, payload: list, sender: str) -> None:
        if h.kind in ("ping", "hello"):
            if h.plan_id != self.plan.plan_id and h.kind == "hello":
                self._drop(ident, f"hello from plan {h.plan_id}, this agent runs {self.plan.plan_id}")
            reply = Header("pong" if h.kind == "ping" else "hello", self.plan.plan_id, self.device,
                           message=self.status().encode())
            self._reply(ident, [reply.encode()], time.monotonic() + 1.0)
            return
        if h.plan_id != self.plan.plan_id:
            raise WireError(f"message of plan {h.plan_id!r}, this agent runs {self.plan.plan_id}")
        if h.kind != "tensor":
            raise WireError(f"unexpected {h.kind} message")
        for t in h.tensors:
            self._check(h.sender, t.name, t.dtype, t.shape)
        if h.ttl_ms <= 0:
            raise WireError("tensor message without a deadline (ttl)")
        key = (h.client, h.request_id)
        # what its tensors take once decoded, as the header declares them (wire.py checks they do)
        nbytes = sum(math.prod(t.shape) * np.dtype(t.dtype).itemsize for t in h.tensors)
        if (why := self.executor.refusal(key, sender, nbytes)) is not None:
            # never stop reading (that would stall the requests already held, and heartbeats):
            # turn requests away instead; the caller keeps fewer in flight
            self._refuse(key, why)
            return
        self.executor.deliver(key, arrays(h, payload), h.ttl_ms, sender, nbytes, h.source, h.age_ms)

    def _check(self, sender: str, name: str, dtype: str, shape: tuple) -> None:
        if not self.executor.accepts(name, sender):
            raise WireError(f"{sender!r} may not send {name!r} to {self.device}")
        spec = self.executor.input_specs.get(name)
        if spec is not None and (dtype != spec.dtype or len(shape) != len(spec.shape)):
            raise WireError(f"{name} is {dtype}{list(shape)}, the plan says {spec.dtype}{list(spec.shape)}")

    def _drop(self, ident: bytes, why: str) -> None:
        self.dropped += 1
        self._warn_once(ident[:32].hex(), "dropped a message from %s: %s", ident[:32], why)

    def _send(self, dst: str, key: Key, arrs: dict[str, np.ndarray], deadline: float, source: str = "",
              born: float = 0.0) -> None:
        now = time.monotonic()
        left_s = deadline - now
        if left_s <= 0:
            raise PeerError("deadline passed")
        age_ms = (now - born) * 1e3 if source else 0.0
        codecs = self.codecs.get(dst)
        if dst == CALLER and (c := inproc.client(key[0])) is not None:
            c.on_result(key[1], roundtrip(arrs, codecs))
            return
        if dst != CALLER and (a := inproc.agent(self.plan.plan_id, dst)) is not None:
            a.deliver_local(self.device, key, roundtrip(arrs, codecs), left_s * 1e3, source=source, age_ms=age_ms)
            return
        client, rid = key
        if dst != CALLER and (wire := self._relay_out.get(key)) is not None:
            client, rid = self.links.identity, wire  # the answers come back here (_on_answer)
        frames = tensor_frames(Header("tensor", self.plan.plan_id, self.device, request_id=rid, client=client,
                                      ttl_ms=left_s * 1e3, source=source, age_ms=age_ms), arrs, codecs)
        if dst == CALLER:
            self._reply(key[0], frames, deadline)
            return
        p = self.links.get(dst)
        if p is None:
            raise PeerError(f"{dst} is not reachable")
        self.links.outbox.send(p.sock, frames, deadline, lambda why: self._send_failed(
            key, f"{self.device} could not send {', '.join(arrs)} to {dst}: {why}"))

    def _on_answer(self, peer, h: Header, payload: list) -> None:
        """A message on a link to a peer: the answer (or error) of a device to a request this agent
        relays for a client in this process; the client gets it here, on this thread."""
        entry = self._relay_in.get(h.request_id) if h.client == self.links.identity else None
        # results come from the devices that answer the caller; an error, from any device
        if entry is None or not (h.kind == "error" or (h.kind == "tensor" and h.sender in self._answering)):
            log.debug("agent %s: dropped a %s message from %s for request %s (not one it relays)",
                      self.device, h.kind, h.sender, h.request_id)
            return
        key = entry[0]
        c = inproc.client(key[0])
        if c is None:  # that session was closed
            self._unrelay(h.request_id)
            return
        if h.kind == "error":
            self._unrelay(h.request_id)
            self.relayed_errors += 1
            c.on_error(key[1], *reversed(error_of(h.message)))
            return
        try:
            got = arrays(h, payload)
        except WireError as e:
            self._unrelay(h.request_id)
            c.on_error(key[1], f"{h.sender} sent a malformed result: {e}")
            return
        self.relayed += 1
        if c.on_result(key[1], got):  # complete (or no longer wanted): nothing more comes for it
            self._unrelay(h.request_id)

    def _unrelay(self, wire: int | None) -> None:
        entry = self._relay_in.pop(wire, None) if wire is not None else None
        if entry is not None:
            self._relay_out.pop(entry[0], None)

    def _expire_relays(self) -> None:
        """Forget relays past their deadline (their client has failed them by now); and keep the
        heap of deadlines near the relays still held, not every request of the last ttl."""
        now = time.monotonic()
        while self._relay_deadlines and self._relay_deadlines[0][0] < now:
            self._unrelay(heapq.heappop(self._relay_deadlines)[1])
        if len(self._relay_deadlines) > 2 * len(self._relay_in) + 1024:
            self._relay_deadlines = [(d, w) for w, (_, d) in self._relay_in.items()]
            heapq.heapify(self._relay_deadlines)

    def _send_failed(self, key: Key, why: str) -> None:
        if key in self.executor.requests:
            self.executor.fail_request(key, why)  # drops it and tells the caller
        else:
            self._fail(key, why)

    def _reply(self, ident: bytes, frames: list, deadline: float) -> None:
        """Send on the ROUTER to `ident`; a caller that went away is logged, not an error."""
        self.links.outbox.send(self.router, [ident, *frames], deadline,
                               lambda why: log.debug("reply to %s dropped: %s", ident[:32], why))

    def _fail(self, key: Key, why: str) -> None:
        self._unrelay(self._relay_out.get(key))
        if (c := inproc.client(key[0])) is not None:
            c.on_error(key[1], *reversed(error_of(why)))
            return
        self._reply(key[0], [Header("error", self.plan.plan_id, self.device, request_id=key[1], client=key[0],
                                    message=why).encode()], time.monotonic() + 5.0)


class Agent:
    """A device's agent in this process: `Agent(bundle).start()` ... `.stop()`, or `with`.

    It runs on the process's shared background loop (edgepart.aio), beside any InferenceSession.
    """

    def __init__(self, bundle: Bundle | str | Path, *, interface: str | None = None, port: int = 0,
                 peers: tuple[str, ...] = (), threads: int = 0, announce: bool = True,
                 providers: str | tuple[str, ...] | Providers = "auto"):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self._kw = dict(interface=interface, port=port, peers=tuple(peers), threads=threads, announce=announce,
                        providers=providers)
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

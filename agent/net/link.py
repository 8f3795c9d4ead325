"""Links to peers: one ZeroMQ DEALER per peer endpoint, owned by one I/O thread.

Every agent binds one ROUTER; whoever talks to it (another agent, or a client) connects a DEALER.
Replies (pong, hello, results for a client) go back on the ROUTER to the DEALER's identity, so a
client never has to be reachable itself.

Liveness is ZeroMQ's own (ZMTP heartbeats, answered by libzmq's I/O thread even while Python
computes a long step) watched through socket monitors: a killed peer is seen at once (its TCP
connection drops), a vanished host after the heartbeat timeout. A peer is *up* once it answered
`hello` with the same plan id, and *ready* once it also says (the Status in its replies) that it is
linked to every peer it sends to: a session asks (`want_status`) and sends nothing before then. A
restarted agent announces a new endpoint and gets a link of its own; two live agents of one role
are reported, and the one up first keeps serving (no flapping). Queues are bounded (high-water marks): a slow peer pushes back on its senders.

In a plan with sources, an agent follows the queues of the peers it may send a source's work to
(`watched`): while it has work, it pings each every REPORT_S, one ping outstanding at a time, and keeps
what the pong's Status says with the time the ping left (the report's basis: docs/priority.md, "Agents").

Everything here runs on the thread that owns the sockets (zmq sockets are not thread-safe); other
threads ask for changes through `post()`, which wakes that thread through a pipe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from edgepart.errors import PeerError, WireError
from edgepart.keys import Credentials, Keys
from edgepart.plan import Codec, Plan
from edgepart.wire import Header, Status, decode, zero_copy_pays

from .local import IPC

log = logging.getLogger("edgepart")


class WarnOnce:
    """Log a message at WARNING the first time its key is seen, at DEBUG after that: a peer that
    misbehaves in a loop is reported once, not once per message. At most `limit` keys are
    remembered (a flood of new senders must not grow it without bound); past that, DEBUG."""

    def __init__(self, limit: int = 1024):
        self._seen: set[str] = set()
        self.limit = limit

    def __call__(self, key: str, msg: str, *args) -> None:
        if key not in self._seen and len(self._seen) < self.limit:
            self._seen.add(key)
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)

POLL_MS = 50  # the data thread wakes at least this often: deadlines, link sweeps, stop


def route_codecs(plan: Plan, src: str) -> dict[str, dict[str, Codec]]:
    """{destination: {tensor: codec}} for the routes from `src` that are not dense."""
    out: dict[str, dict[str, Codec]] = {}
    for r in plan.routes_from(src):
        if r.codec.kind != "dense":
            out.setdefault(r.dst, {})[r.tensor] = r.codec
    return out


def parse_peer(text: str) -> str:
    """`host:port` or `tcp://host:port` -> `tcp://host:port`."""
    t = text[6:] if text.startswith("tcp://") else text
    host, sep, port = t.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerError(f"--peer {text!r} is not HOST:PORT (for example 192.168.1.20:5555).")
    return f"tcp://{host}:{port}"


HWM = 64  # messages queued per peer before senders wait
HEARTBEAT_IVL_MS = 500
# A heartbeat waits behind what its socket already holds: a 4 MiB tensor keeps a 20 Mbit/s link busy
# for 1.7 s, and with several queued a 2 s timeout took a device that was still receiving for a dead
# one. 10 s leaves a slow link room for tens of MB ahead of a PING; a killed agent is still seen at
# once (its TCP connection drops), a vanished host after 10 s (docs/agents.md, "Links and liveness")
HEARTBEAT_TIMEOUT_MS = 10_000
FORGET_AFTER_S = 30.0  # a discovered endpoint down this long is closed (static peers are kept)
ASK_STATUS_S = 0.05  # a peer up but not yet linked to its own peers is asked again this often
# a watched peer is asked for its queue this often while the asker has requests (plans with sources):
# each ask costs both ends a message and a status (~0.1 ms of a slow device's CPU), so it is not sooner
REPORT_S = 0.05
LOST_PING_S = 1.0  # a ping unanswered this long is taken as lost: ask again
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED


def _refusal(event: int, role: str, secure: bool) -> str:
    """Why a handshake failed, in words for an error message."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"{role or 'the agent'} refused this end's key (it runs another plan's bundle, or this key is not in its plan)"
    if secure:
        return (f"the handshake with {role or 'the agent'} failed: it runs --insecure, or holds another key "
                f"than this plan gives it (another packaging's bundle)")
    return f"the handshake with {role or 'the agent'} failed: it encrypts its links (start this end without --insecure)"


def secure_client(sock: zmq.Socket, keys: Credentials, role: str, endpoint: str = "") -> bool:
    """Make `sock` a CURVE client of `role` (call before connect): its keys pinned, so an
    announcement is a hint, never trust (docs/agents.md, "Encryption"). False when `role` has no
    key in the plan (the socket must not be used); True, plaintext, under --insecure and for an
    agent's local socket on this host (`endpoint` ipc://, local.py)."""
    if not keys.secure or endpoint.startswith(IPC):
        return True
    server = keys.server_key(role)
    if server is None:
        return False
    sock.curve_secretkey = keys.me.secret.encode()
    sock.curve_publickey = keys.me.public.encode()
    sock.curve_serverkey = server.encode()
    return True


class Waker:
    """A pipe any thread may poke to wake the I/O thread's poller (thread-safe, no zmq socket)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def wake(self) -> None:
        try:
            os.write(self.w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (already woken) or closed (shutting down)

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


async def stop_io_thread(stop: threading.Event, waker: Waker, thread: threading.Thread | None, ctx: zmq.Context) -> None:
    """Ask a socket-owning thread to finish, wait for it off the event loop, then free its pipe and
    context (the thread closes its own sockets on the way out)."""
    stop.set()
    waker.wake()
    if thread is not None:
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
    waker.close()
    ctx.destroy(linger=0)


def tune(sock: zmq.Socket) -> None:
    """Bounded queues, heartbeats, no lingering: what every edgepart socket gets."""
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


class Outbox:
    """Messages a socket could not take yet (its peer's queue is full), kept in order per socket and
    retried on every turn of the owning thread's loop; each fails at its deadline. The thread never
    blocks in a send, so it keeps reading while it waits — two devices sending to each other cannot
    deadlock, and heartbeats keep being answered."""

    def __init__(self) -> None:
        self.queues: dict[zmq.Socket, deque] = {}

    def __bool__(self) -> bool:
        return bool(self.queues)

    def send(self, sock: zmq.Socket, frames: list, deadline: float, on_fail: Callable[[str], None]) -> None:
        q = self.queues.get(sock)
        if q is None:
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=not zero_copy_pays(frames))
                return
            except zmq.Again:
                q = self.queues[sock] = deque()
            except zmq.ZMQError as e:  # EHOSTUNREACH (a ROUTER's peer is gone), a closed socket
                on_fail(f"the link is gone ({e})")
                return
        q.append((frames, deadline, on_fail))

    def flush(self) -> None:
        now = time.monotonic()
        for sock, q in list(self.queues.items()):
            while q:
                frames, deadline, on_fail = q[0]
                if now > deadline:
                    q.popleft()
                    on_fail("its queue stayed full until the deadline")
                    continue
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=not zero_copy_pays(frames))
                except zmq.Again:
                    break
                except zmq.ZMQError as e:
                    on_fail(f"the link is gone ({e})")
                q.popleft()
            if not q:
                del self.queues[sock]

    def drop(self, sock: zmq.Socket, why: str) -> None:
        """Fail everything queued for a socket that is being closed."""
        for _, _, on_fail in self.queues.pop(sock, ()):
            on_fail(why)


@dataclass
class Peer:
    endpoint: str
    sock: zmq.Socket
    monitor: zmq.Socket
    role: str = ""  # known after hello
    static: bool = False
    connected: bool = False
    up: bool = False
    up_since: float = 0.0
    down_since: float = field(default_factory=time.monotonic)
    status: Status | None = None  # what it last said of itself (want_status only)
    asked: float = 0.0  # when it was last asked
    probe: bool = False  # a static endpoint tried with `role`'s key (see Links.connect)
    refused: str = ""  # why its last handshake failed, if it did
    pinged: float = 0.0  # when the ping for its queue left (0: none outstanding; `watched` only)
    reported: float = 0.0  # when its last queue report came

    @property
    def ready(self) -> bool:
        # an agent that says nothing of its links (an older version) is taken as it is
        return self.up and (self.status is None or self.status.ready)


OnMessage = Callable[[Peer, Header, list], None]


class Links:
    """DEALER links by endpoint, addressed by role once `hello` told the role. One thread owns it."""

    def __init__(self, ctx: zmq.Context, identity: bytes, plan_id: str, me: str, on_message: OnMessage,
                 on_down: Callable[[str], None] | None = None, keys: Credentials = Credentials(None, Keys())):
        self.ctx, self.identity, self.plan_id, self.me = ctx, identity, plan_id, me
        self.keys = keys  # this end's keypair and the plan's public keys (secure.py); none: --insecure
        self.probes: dict[str, list[Peer]] = {}  # static endpoints whose device is not known yet
        self.on_message, self.on_down = on_message, on_down
        self.by_endpoint: dict[str, Peer] = {}
        self.by_socket: dict[zmq.Socket, Peer] = {}
        self.by_monitor: dict[zmq.Socket, Peer] = {}
        self.poller = zmq.Poller()
        self.outbox = Outbox()
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.changed = threading.Condition()  # notified when a role goes up or down
        self._roles_up: frozenset[str] = frozenset()
        self._roles_ready: frozenset[str] = frozenset()
        self.want_status = False  # ask peers whether they are linked to theirs (a session does)
        self.watched: frozenset[str] = frozenset()  # roles whose queues this end follows (plans with sources)
        # role -> (its queue as it said, when the ping it answered left, when the answer came, its steps' times)
        self._reports: dict[str, tuple[tuple[tuple[float, float, float], ...], float, float, dict[str, float]]] = {}
        self._up_endpoints: dict[str, str] = {}  # role -> endpoint of its live link (as get() picks it)
        self._warn_once = WarnOnce()
        self._last_sweep = time.monotonic()

    # -- from any thread -------------------------------------------------------------------------
    def post(self, waker: Waker, command: str, endpoint: str, role: str = "", static: bool = False) -> None:
        """Ask the owning thread to `connect` or `forget` an endpoint."""
        self.commands.put((command, endpoint, role, static))
        waker.wake()

    def roles_up(self) -> frozenset[str]:
        return self._roles_up

    def roles_ready(self) -> frozenset[str]:
        """The roles whose live link is ready: up, and linked to their own peers (want_status only)."""
        return self._roles_ready

    def endpoint_up(self, role: str) -> str | None:
        """The endpoint of `role`'s live link, if any (any thread may ask)."""
        return self._up_endpoints.get(role)

    def statuses(self) -> dict[str, Status]:
        """What each live peer last said of itself, by role (any thread; want_status only)."""
        return {p.role: p.status for p in list(self.by_endpoint.values()) if p.up and p.role and p.status}

    def report(self, role: str) -> tuple[tuple[tuple[float, float, float], ...], float, float, dict[str, float]] | None:
        """What `role` last said of its queue: (its tasks as (weight, ms waited there, work ms) in
        serving order, the time the ping it answered left, the time the answer came, its steps' measured
        times by name), or None (any thread; `watched`)."""
        return self._reports.get(role)

    def wait_roles(self, roles: set[str], timeout_s: float, ready: bool = False) -> bool:
        """Wait until every one of `roles` is up (and, with `ready`, linked to its own peers)."""
        end = time.monotonic() + timeout_s
        with self.changed:
            while not roles <= (self._roles_ready if ready else self._roles_up):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.25))
        return True

    # -- on the owning thread --------------------------------------------------------------------
    def run_commands(self) -> None:
        while True:
            try:
                cmd, ep, role, static = self.commands.get_nowait()
            except queue.Empty:
                return
            if cmd == "connect":
                self.connect(ep, role, static)
            elif cmd == "forget":
                p = self.by_endpoint.get(ep)
                if p is not None and not p.static:
                    self.disconnect(ep)

    def connect(self, endpoint: str, role: str = "", static: bool = False) -> Peer | None:
        if endpoint in self.by_endpoint:
            return self.by_endpoint[endpoint]
        if self.keys.secure and not role:
            # a static peer: which device listens there shows only when a handshake with its key
            # succeeds, so every key of the plan is tried at once and the one that works is kept
            if endpoint not in self.probes:
                self.probes[endpoint] = [p for r in sorted(self.keys.keys.devices) if r != self.me
                                         for p in [self._open(endpoint, r, static, probe=True)] if p is not None]
            return None
        p = self._open(endpoint, role, static)
        if p is not None:
            self.by_endpoint[endpoint] = p
        return p

    def _open(self, endpoint: str, role: str, static: bool, probe: bool = False) -> Peer | None:
        s = self.ctx.socket(zmq.DEALER)
        if not secure_client(s, self.keys, role, endpoint):
            s.close(0)
            self._warn_once(f"nokey:{role}", f"not connecting to {endpoint}: {role!r} has no key in plan {self.plan_id}")
            return None
        s.setsockopt(zmq.IDENTITY, self.identity)
        tune(s)
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections: a dead peer refuses, not buffers
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        mon = s.get_monitor_socket(_MONITOR_EVENTS)
        s.connect(endpoint)
        p = Peer(endpoint, s, mon, role, static, probe=probe)
        self.by_socket[s] = p
        self.by_monitor[mon] = p
        self.poller.register(s, zmq.POLLIN)
        self.poller.register(mon, zmq.POLLIN)
        return p

    def disconnect(self, endpoint: str) -> None:
        for probe in self.probes.pop(endpoint, []):
            self._close(probe)
        p = self.by_endpoint.pop(endpoint, None)
        if p is None:
            return
        self._close(p)
        if p.up:
            p.up = False
            self._publish(p.role, down=True)

    def _close(self, p: Peer) -> None:
        self.by_socket.pop(p.sock, None)
        self.by_monitor.pop(p.monitor, None)
        for s in (p.sock, p.monitor):
            try:
                self.poller.unregister(s)
            except KeyError:
                pass
        self.outbox.drop(p.sock, f"the link to {p.role or endpoint} was closed")
        try:
            p.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        p.monitor.close(0)
        p.sock.close(0)

    def refusals(self) -> dict[str, str]:
        """Endpoints whose last handshake failed, and why (any thread; for error messages)."""
        for _ in range(3):  # the owning thread may change the dict while this copies it
            try:
                peers = list(self.by_socket.values())
                break
            except RuntimeError:
                peers = []
        return {p.endpoint: p.refused for p in peers if p.refused and not p.up}

    def get(self, role: str) -> Peer | None:
        """The live link to `role`, if any; with duplicates, the one up the longest."""
        cands = [p for p in self.by_endpoint.values() if p.role == role and p.up]
        if len(cands) > 1:
            self._warn_once(f"dup:{role}", f"two live agents claim role {role!r} of plan {self.plan_id}: "
                            f"{', '.join(p.endpoint for p in cands)}; using the first, stop the other")
        return min(cands, key=lambda p: p.up_since) if cands else None

    def handle(self, sock: zmq.Socket) -> bool:
        """Handle readiness of `sock` if it is one of ours; False if it is not."""
        p = self.by_socket.get(sock)
        if p is not None:
            self._read(p)
            return True
        p = self.by_monitor.get(sock)
        if p is not None:
            self._monitor(p)
            return True
        return False

    def ask_status(self) -> None:
        """Ask the peers that are up but not yet ready again (call now and then; want_status only)."""
        if not self.want_status:
            return
        now = time.monotonic()
        for p in self.by_endpoint.values():
            if p.up and not p.ready and now - p.asked >= ASK_STATUS_S:
                p.asked = now
                try:
                    p.sock.send(Header("ping", self.plan_id, self.me).encode(), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # its queue is full or it just went: asked again next time

    def ask_queues(self) -> None:
        """Ping the watched peers whose last report is REPORT_S old and that have no ping outstanding
        (call every turn of the loop; cheap when there is nothing to do)."""
        if not self.watched:
            return
        now = time.monotonic()
        for p in self.by_endpoint.values():
            if (p.up and p.role in self.watched and now - p.reported >= REPORT_S
                    and (not p.pinged or now - p.pinged > LOST_PING_S)):
                try:
                    p.sock.send(Header("ping", self.plan_id, self.me).encode(), zmq.NOBLOCK)
                    p.pinged = now
                except zmq.ZMQError:
                    pass  # its queue is full or it just went: asked again next time

    def sweep(self) -> None:
        """Forget discovered endpoints down for long (call now and then)."""
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for p in list(self.by_endpoint.values()):
            if not p.static and not p.up and now - p.down_since > FORGET_AFTER_S:
                log.debug("forgetting %s at %s: down for %.0f s", p.role or "peer", p.endpoint, now - p.down_since)
                self.disconnect(p.endpoint)

    def close(self) -> None:
        for ep in list(self.by_endpoint) + list(self.probes):
            self.disconnect(ep)

    # -- internals ---------------------------------------------------------------------------------
    def _read(self, p: Peer) -> None:
        for _ in range(HWM):  # drain what is there, bounded so one peer cannot starve the rest
            if not p.sock.get(zmq.EVENTS) & zmq.POLLIN:  # (cheaper than a recv that raises Again)
                return
            try:
                frames = p.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                h, payload = decode(frames)
                if h.kind == "hello":
                    self._hello(p, h)
                elif h.kind == "pong":
                    self._status(p, h)
                elif h.plan_id == self.plan_id and p.up:
                    self.on_message(p, h, payload)
            except WireError as e:
                self._warn_once(p.endpoint, f"dropped a malformed message from {p.endpoint}: {e}")
            except Exception:  # a bug must cost one message, never the link's thread
                log.exception("dropped a message from %s that could not be handled", p.endpoint)

    def _hello(self, p: Peer, h: Header) -> None:
        if h.plan_id != self.plan_id:
            self._warn_once(p.endpoint, f"{p.endpoint} runs plan {h.plan_id}, this one {self.plan_id}: not talking to it")
            return
        if p.role and p.role != h.sender:
            log.warning("%s says it is %r, discovery said %r", p.endpoint, h.sender, p.role)
        if p.endpoint.startswith(IPC) and self.keys.secure and not self._same_key(p, h):
            return
        p.role = h.sender
        was = p.ready
        if self.want_status:
            p.status, p.asked = Status.decode(h.message), time.monotonic()
        if not p.up:
            p.up, p.up_since = True, time.monotonic()
            log.info("link up: %s at %s", p.role, p.endpoint)
            self._publish(p.role, down=False)
        elif p.ready != was:
            self._publish(p.role, down=False)

    def _same_key(self, p: Peer, h: Header) -> bool:
        """An agent on its local socket (no CURVE there: local.py) must say it holds the key this plan
        gives its role, as CURVE would have checked: another packaging's bundle on this host is not
        linked, and the session says why."""
        st = Status.decode(h.message)
        if st is not None and st.key and st.key == self.keys.server_key(h.sender):
            return True
        p.refused = (f"{h.sender} on this host holds another key than this plan gives it (another packaging's "
                     f"bundle)")
        self._warn_once(f"key:{p.endpoint}", f"not linking to {p.endpoint}: {p.refused}")
        return False

    def _status(self, p: Peer, h: Header) -> None:
        if not p.up or h.plan_id != self.plan_id:
            return
        st = Status.decode(h.message)
        if p.pinged and p.role in self.watched:
            now = time.monotonic()
            if st is not None:
                self._reports[p.role] = (st.queue, p.pinged, now, dict(st.steps))
            p.pinged, p.reported = 0.0, now
        if not self.want_status:
            return
        was = p.ready
        p.status = st
        if p.ready != was:
            self._publish(p.role, down=False)

    def _monitor(self, p: Peer) -> None:
        while True:
            try:
                ev = recv_monitor_message(p.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                p.connected, p.refused = True, ""
                if p.probe:
                    self._found(p)
                try:
                    p.sock.send(Header("hello", self.plan_id, self.me).encode(), zmq.NOBLOCK)
                except zmq.Again:
                    pass
            elif ev["event"] & _HANDSHAKE_FAILED:
                p.refused = _refusal(ev["event"], p.role, self.keys.secure)
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                p.connected = False
                p.down_since = time.monotonic()
                if p.up:
                    p.up, p.pinged = False, 0.0
                    self._reports.pop(p.role, None)  # what it said of its queue is void
                    log.warning("link down: %s at %s", p.role, p.endpoint)
                    self._publish(p.role, down=True)

    def _found(self, p: Peer) -> None:
        """A static endpoint's handshake with `p.role`'s key succeeded: that device is there."""
        for other in self.probes.pop(p.endpoint, []):
            if other is not p:
                self._close(other)
        p.probe = False
        self.by_endpoint[p.endpoint] = p

    def _publish(self, role: str, down: bool) -> None:
        with self.changed:
            self._roles_up = frozenset(p.role for p in self.by_endpoint.values() if p.up and p.role)
            self._roles_ready = frozenset(p.role for p in self.by_endpoint.values() if p.ready and p.role)
            up: dict[str, Peer] = {}
            for p in self.by_endpoint.values():
                if p.up and p.role and (p.role not in up or p.up_since < up[p.role].up_since):
                    up[p.role] = p
            self._up_endpoints = {r: p.endpoint for r, p in up.items()}
            self.changed.notify_all()
        if down and self.on_down:
            self.on_down(role)

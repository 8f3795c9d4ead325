"""The caller's side of a cluster: find the agents of a plan, send inputs, gather outputs.

`InferenceSession` (edgepart.session) is its sync facade. Inputs go straight to every device that
needs them and outputs come straight back from the devices that make them (on the DEALER links
this client opened, so it need not be reachable itself). Discovery runs on asyncio; one I/O
thread owns the sockets. `submit` checks the inputs in the caller's thread (a bad input raises at
once), hands inputs for an agent in this process straight to it, and queues the rest for the I/O
thread. Every request has a deadline; a request whose agent stops answering fails with PeerError
at once, one past its deadline with DeadlineExceeded — never a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
from collections import deque
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import zmq

from edgepart.errors import BundleError, DeadlineExceeded, DeadlineRefused, InputsError, PeerError, WireError
from edgepart.inputs import check_feeds
from edgepart.keys import Credentials, Keys
from edgepart.plan import CALLER, Plan
from edgepart.wire import MAX_TTL_MS, Header, arrays, error_of, roundtrip, tensor_frames

from ..net import inproc
from ..net.choose import Chooser
from ..net.discovery import Announcement, Discovery
from ..net.link import POLL_MS, Links, Waker, parse_peer, route_codecs, stop_io_thread
from ._caller import CallerPath
from .paths import Path, Paths

log = logging.getLogger("edgepart")


WINDOW = 128  # requests in flight per session; more wait here (agents hold at most 256 each)


@dataclass
class Pending:
    future: concurrent.futures.Future
    roles: set[str]
    deadline: float
    timeout_s: float
    feeds: dict[str, np.ndarray] | None = None  # until sent
    born: float = 0.0  # time.monotonic() when it was made (its age rides in the header: plans with sources)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def source_view(plan: Plan, source: str) -> Plan:
    """What a session of `source` sees of `plan`: the plan itself where it has no sources (and no
    source is given), else its lane (docs/priority.md, "Plans with sources"). BundleError otherwise."""
    if not plan.lanes and not source:
        return plan
    if not plan.lanes:
        raise BundleError(f"Plan {plan.plan_id} serves no sources: open the session without source= "
                          f"(`--source`), or package the model with --sources.")
    if not source:
        raise BundleError(f"Plan {plan.plan_id} serves the sources {', '.join(plan.lanes.names)}: open the session "
                          f"with source=NAME (`--source NAME`) to say whose requests it sends (docs/priority.md).")
    return plan.lane(source)


class ClusterClient:
    def __init__(self, plan: Plan, *, interface: str | None = None, peers: tuple[str, ...] = (),
                 discover_timeout_s: float = 10.0, credentials: Credentials = Credentials(None, Keys()),
                 source: str = ""):
        # a plan with sources: this session's requests are `source`'s, and see its lane only (the
        # plan id stays the plan's: docs/priority.md, "Plans with sources")
        plan = source_view(plan, source)
        self.source = source
        self.plan = plan
        self.credentials = credentials  # the app's keypair and the plan's public keys (net/secure.py)
        self.interface = interface
        self.static_peers = tuple(parse_peer(p) for p in peers)
        self.discover_timeout_s = discover_timeout_s
        # all of them (or the lane's): any one vanishing fails what is in flight
        self.roles = {s.device for s in plan.steps} if source else set(plan.device_names())
        self.outputs = [o.name for o in plan.outputs]
        self.inputs_by_dst: dict[str, list[str]] = {}
        for r in plan.routes_from(CALLER):
            self.inputs_by_dst.setdefault(r.dst, []).append(r.tensor)
        self.codecs = route_codecs(plan, CALLER)
        self.answer_from = {r.src for r in plan.routes_to(CALLER)}  # the devices that send outputs back
        self.answer_names: dict[str, frozenset[str]] = {}  # ... and what each sends back
        for r in plan.routes_to(CALLER):
            self.answer_names[r.src] = self.answer_names.get(r.src, frozenset()) | {r.tensor}
        self.chooser = Chooser(plan)  # which of several alternative devices takes each request
        self.paths = Paths(plan)  # which path each request takes (paths.py)
        self.pending: dict[int, Pending] = {}
        self.in_flight = 0
        self.backlog: deque[int] = deque()  # submitted, waiting for a place in the window
        self._lock = threading.Lock()  # pending is touched by callers, the I/O thread, local agents
        self._ids = itertools.count(1)
        self.identity = f"{CALLER}:{secrets.token_hex(6)}".encode()
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_expiry = 0.0
        self._deadlines: list[tuple[float, int]] = []  # a heap of (deadline, request id), under _lock
        self._io_ident = 0  # the I/O thread's id, once it runs
        self._sending = False  # the I/O thread is in _send_outbox (no recursion through failures)

    async def start(self, wait: bool = True) -> "ClusterClient":
        """Open the links and look for the plan's agents; with `wait`, wait until every device is
        ready (or raise the PeerError that says who is missing, closed). Without it, return at once:
        `ready()` says when (a fallback plan's client, agent/app/failover.py)."""
        self.ctx = zmq.Context()
        self.waker = Waker()
        self.links = Links(self.ctx, self.identity, self.plan.plan_id, CALLER, self._on_message, self._on_down,
                           keys=self.credentials)
        self.links.want_status = True  # ready means every device linked to its peers (docs/agents.md, "Ready")
        for ep in self.static_peers:
            self.links.post(self.waker, "connect", ep, static=True)
        self._thread = threading.Thread(target=self._io, name="edgepart-client", daemon=True)
        self._thread.start()
        self.caller = CallerPath(self.ctx, self.links, self.plan.plan_id, self.roles, self.inputs_by_dst,
                                 self.answer_names, self.codecs, self.source)
        inproc.register_client(self.identity, self)
        # an agent on this host is reached on its Unix socket (agent/net/local.py); not under --insecure
        self.discovery = Discovery(self.interface, self.plan.plan_id, self._on_discovered,
                                   local=self.credentials.secure)
        await self.discovery.start()
        if not wait:
            return self
        ok = await asyncio.get_running_loop().run_in_executor(
            None, self.links.wait_roles, self.roles, self.discover_timeout_s, True)
        if not ok:
            err = self.not_ready_error()
            await self.close()
            raise err
        return self

    def ready(self) -> bool:
        """Every device of the plan is up and linked to the peers it sends to (any thread)."""
        return self.roles <= self.links.roles_ready()

    def not_ready_error(self) -> PeerError:
        """Why the plan is not ready, in words: who is missing, refused, or not linked to its peers."""
        missing = sorted(self.missing_roles())
        unlinked = {r: st.missing for r, st in self.links.statuses().items() if not st.ready}
        refused = self._refused(missing)
        if missing and refused:
            return PeerError(f"The agents of {', '.join(missing)} of plan {self.plan.plan_id} were found but no "
                             f"encrypted link could be made within {self.discover_timeout_s:g} s: {refused}. "
                             f"Start the agents and the session the same way (both with the plan's keys, or "
                             f"both --insecure), with bundles and app.key from one packaging.")
        if missing:
            return PeerError(
                f"No agent answered for {', '.join(missing)} of plan {self.plan.plan_id} within "
                f"{self.discover_timeout_s:g} s. Start `edgepart run dist/<device>` on each device (same "
                f"plan id: package once, copy each bundle); pick the network with --interface; where "
                f"multicast is blocked, name the agents with --peer HOST:PORT."
            )
        return PeerError(
            f"The agents of plan {self.plan.plan_id} answered, but within {self.discover_timeout_s:g} s "
            + "; ".join(f"{r} did not reach {', '.join(m) or 'all its peers'}" for r, m in sorted(unlinked.items()))
            + ". Those agents cannot see each other: start every device's `edgepart run` on one network "
            f"(--interface), or name the peers with --peer HOST:PORT where multicast is blocked."
        )

    def missing_roles(self) -> set[str]:
        return self.roles - self.links.roles_up()

    def _refused(self, missing: list[str]) -> str:
        """Why the links to found agents failed, in words ("" when none failed): a handshake the
        monitor saw fail, or an announcement that says the agent encrypts (or not) unlike this end."""
        mine = self.credentials.secure
        unlike = sorted({a.role for a in list(self.discovery.found.values()) if a.role in missing and a.secure != mine})
        if unlike:  # what the agents announce says it all
            return (f"{', '.join(unlike)} {'encrypt' if mine is False else 'run --insecure (plaintext)'}, "
                    f"this session {'runs --insecure' if not mine else 'encrypts'}")
        return "; ".join(sorted(set(self.links.refusals().values())))

    async def close(self) -> None:
        inproc.unregister_client(self.identity)
        with self._lock:
            rids = list(self.pending)
        for rid in rids:
            self.on_error(rid, "the session was closed")
        self._stop.set()  # a run() on its own sockets sees it within a slice and leaves
        await asyncio.get_running_loop().run_in_executor(None, self.caller.close)
        await self.discovery.close()
        await stop_io_thread(self._stop, self.waker, self._thread, self.ctx)

    # -- requests (any thread) ---------------------------------------------------------------------
    def _checked(self, feeds: Mapping[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        check_feeds(self.plan.inputs, feeds)
        if not 0 < timeout_s <= MAX_TTL_MS / 1e3:
            raise InputsError(f"timeout_s must be more than 0 and at most {MAX_TTL_MS / 1e3:.0f} s, not {timeout_s!r}.")
        if self._stop.is_set():
            raise PeerError("the session is closed")
        return feeds

    def _busy(self) -> bool:
        """Other requests wait for the window: a sync request joins them (paths.py)."""
        return bool(self.backlog) or self.in_flight >= WINDOW

    def run(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> dict[str, np.ndarray]:
        """One request, waited for (sync `run`): {output: array}, or PeerError / DeadlineExceeded.

        Its path comes from the plan's hints and what runs in this process (paths.py): the calling
        thread's own sockets (_caller.py); the entry's step computed in this thread with the exit's
        answer received here too (the entry agent's direct path); or `run_here`."""
        path, direct = self.paths.for_run(self._busy())
        if path is Path.CALLER:
            return self._run_on_caller(feeds, timeout_s)
        if path is Path.DIRECT_ANSWER:
            run, entry, reply_from = direct.agent.direct.run, direct.entry, direct.reply_from
            return self._in_this_thread(feeds, timeout_s, lambda rid, feeds, deadline: run(
                self.identity, rid, roundtrip(feeds, self.codecs.get(entry)), deadline, reply_from,
                self.answer_names[reply_from], self._stop))
        fut = self.run_here(feeds, timeout_s)
        try:
            return fut.result(timeout_s + 5)
        except concurrent.futures.TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:g} s") from None

    def _run_on_caller(self, feeds: Mapping[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        born = time.monotonic()

        def call(rid, feeds, deadline):
            if not self.chooser:
                return self.caller.run(rid, feeds, deadline, self._stop, born=born)
            try:  # the same pick for the inputs and for who answers (agent/net/choose.py)
                # (a group an agent feeds, as a source's device feeds its helpers, answers from its pick)
                return self.caller.run(rid, feeds, deadline, self._stop, self.chooser.pick(rid, self.inputs_by_dst),
                                       self.chooser.pick(rid, self.answer_names, picked_only=True), born=born)
            finally:
                self.chooser.done(rid)

        return self._in_this_thread(feeds, timeout_s, call)

    def _in_this_thread(self, feeds: Mapping[str, np.ndarray], timeout_s: float, call) -> dict[str, np.ndarray]:
        """A sync request whose answer `call(rid, feeds, deadline)` gathers in the calling thread,
        with every failure typed and naming the request."""
        feeds = self._checked(feeds, timeout_s)
        rid = next(self._ids)
        try:
            got = call(rid, feeds, time.monotonic() + timeout_s)
        except DeadlineRefused as e:  # (its deadline out of reach: said at once, not a timeout)
            raise DeadlineRefused(f"request {rid}: {e}") from None
        except DeadlineExceeded as e:
            raise DeadlineExceeded(f"request {rid} was not answered within {timeout_s:g} s: {e}. Raise timeout_s, "
                                   f"or check the agents with `edgepart discover`.") from None
        except PeerError as e:
            raise PeerError(f"the cluster failed request {rid}: {e}") from None
        except Exception as e:  # a bug or a zmq error: a typed failure, never a library's traceback
            log.exception("request %s, sent from the caller's thread, failed", rid)
            raise PeerError(f"the cluster failed request {rid}: {type(e).__name__}: {e}") from None
        missing = [o for o in self.outputs if o not in got]
        if missing:
            raise PeerError(f"the cluster failed request {rid}: no device sent {', '.join(missing)}")
        return {o: got[o] for o in self.outputs}

    def run_here(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> concurrent.futures.Future:
        """`submit` for a caller that waits anyway: beside the entry's agent, whose one step only the
        caller feeds (the plan's hints), that step runs in the caller's thread and its outputs leave
        from it (the agent's direct path), saving the hand-off to the agent's thread. Otherwise, or
        while other requests wait for the window, the same as `submit`."""
        _, direct = self.paths.for_run(self._busy())
        if direct is None:
            return self.submit(feeds, timeout_s)
        agent, dst = direct.agent, direct.entry
        feeds = self._checked(feeds, timeout_s)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            rid = next(self._ids)
            self.pending[rid] = Pending(fut, set(self.roles), deadline, timeout_s)
            heapq.heappush(self._deadlines, (deadline, rid))
            self.in_flight += 1
        try:
            back = agent.direct.run(self.identity, rid, roundtrip(feeds, self.codecs.get(dst)), deadline)
        except PeerError as e:  # DeadlineExceeded too
            self.on_error(rid, str(e), cause=type(e))
            return fut
        except Exception as e:  # a bug or a zmq error: the request fails, it never holds its place
            log.exception("running request %s here failed", rid)
            self.on_error(rid, f"{type(e).__name__}: {e}")
            return fut
        if back:
            self.on_result(rid, back)
        return fut

    def submit(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> concurrent.futures.Future:
        """Send one request; the future gives {output: array} or raises PeerError / DeadlineExceeded.

        At most WINDOW requests are in flight; more wait in order (their deadline runs meanwhile),
        so a caller can submit a whole stream at once without overrunning the agents."""
        feeds = self._checked(feeds, timeout_s)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            rid = next(self._ids)
            now = time.monotonic()
            p = self.pending[rid] = Pending(fut, set(self.roles), now + timeout_s, timeout_s, feeds, born=now)
            heapq.heappush(self._deadlines, (p.deadline, rid))
            self.backlog.append(rid)
        self._dispatch()
        return fut

    def _dispatch(self) -> None:
        """Send waiting requests while the window has room (any thread)."""
        remote = False
        while True:
            with self._lock:
                if self.in_flight >= WINDOW or not self.backlog:
                    break
                rid = self.backlog.popleft()
                p = self.pending.get(rid)
                if p is None or p.feeds is None:
                    continue  # expired or failed while it waited
                feeds, p.feeds = p.feeds, None
                self.in_flight += 1
            now = time.monotonic()
            ttl_ms = max(p.deadline - now, 0.001) * 1e3
            age_ms = (now - p.born) * 1e3 if self.source else 0.0
            dsts = self.inputs_by_dst
            if self.chooser:
                dsts = self.chooser.pick(rid, self.inputs_by_dst)
                with self._lock:
                    p.roles -= self.chooser.passed_over(rid)
            for dst in dsts:
                arrs = {n: feeds[n] for n in self.inputs_by_dst[dst]}
                local = self.paths.local(dst)
                if local is not None:  # (to the entry, its answers may come back through it)
                    local.deliver_local(CALLER, (self.identity, rid), roundtrip(arrs, self.codecs.get(dst)), ttl_ms,
                                        relay=self.paths.relay, source=self.source, age_ms=age_ms)
                else:
                    self.outbox.put((rid, dst, arrs, p.deadline, p.born))
                    remote = True
        if remote:
            if threading.get_ident() != self._io_ident:
                self.waker.wake()
            elif not self._sending:  # an answer freed a place, on the I/O thread itself: send now
                self._send_outbox()
            # (inside _send_outbox, a failure that freed a place queued the next request for its loop)

    async def infer(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> dict[str, np.ndarray]:
        """All model outputs for one request, awaited from any event loop."""
        return await asyncio.wrap_future(self.submit(feeds, timeout_s))

    def on_result(self, rid: int, got: dict[str, np.ndarray]) -> bool:
        """Outputs of request `rid` arrived (thread-safe). True once the request wants no more:
        answered in full, or already failed or timed out."""
        with self._lock:
            p = self.pending.get(rid)
            if p is None:
                return True  # a late answer to a request that already failed or timed out
            p.outputs.update((k, v) for k, v in got.items() if k in self.outputs)
            if len(p.outputs) < len(self.outputs):
                return False
            del self.pending[rid]
            self.in_flight -= 1
        if self.chooser:
            self.chooser.done(rid)
        p.future.set_result(p.outputs)
        if self.backlog:
            self._dispatch()
        return True

    def on_error(self, rid: int, why: str, cause: type[PeerError] = PeerError) -> None:
        """Request `rid` failed (thread-safe)."""
        with self._lock:
            p = self.pending.pop(rid, None)
            if p is not None and p.feeds is None:
                self.in_flight -= 1
        if p is not None:
            if self.chooser:
                self.chooser.done(rid)
            msg = (f"request {rid}: {why}" if cause is DeadlineRefused else why if issubclass(cause, DeadlineExceeded)
                   else f"the cluster failed request {rid}: {why}")
            p.future.set_exception(cause(msg))
            if self.backlog:
                self._dispatch()

    # -- the I/O thread ---------------------------------------------------------------------------
    def _io(self) -> None:
        self._io_ident = threading.get_ident()
        poller = self.links.poller
        poller.register(self.waker.r, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(1 if self.links.outbox else POLL_MS):
                    if sock == self.waker.r:
                        self.waker.drain()
                        self.links.run_commands()
                        self._send_outbox()
                    else:
                        self.links.handle(sock)
                self.links.outbox.flush()
                self._expire()
                self.links.ask_status()
                self.links.sweep()
        except Exception:  # a bug here must not die silently
            log.exception("client I/O thread crashed")
        finally:
            self.links.close()

    def _send_outbox(self) -> None:
        self._sending = True
        try:
            self._send_queued()
        finally:
            self._sending = False

    def _send_queued(self) -> None:
        while True:
            try:
                rid, dst, arrs, deadline, born = self.outbox.get_nowait()
            except queue.Empty:
                return
            if rid not in self.pending:
                continue
            now = time.monotonic()
            left = deadline - now
            p = self.links.get(dst)
            if p is None:
                self.on_error(rid, f"{dst} is not reachable now (it stopped answering); restart `edgepart run` "
                                   f"there, the session reconnects by itself")
                continue
            h = Header("tensor", self.plan.plan_id, CALLER, request_id=rid, client=self.identity, ttl_ms=max(left, 0.001) * 1e3,
                       source=self.source, age_ms=(now - born) * 1e3 if self.source else 0.0)
            self.links.outbox.send(p.sock, tensor_frames(h, arrs, self.codecs.get(dst)), deadline, lambda why, rid=rid, dst=dst:
                                   self.on_error(rid, f"{dst} did not take the inputs: {why}", cause=DeadlineExceeded))

    def _expire(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + 0.02
        late = []
        with self._lock:  # the earliest deadlines first: no scan of everything pending
            while self._deadlines and self._deadlines[0][0] < now:
                _, rid = heapq.heappop(self._deadlines)
                if (p := self.pending.get(rid)) is not None:
                    late.append((rid, p))
        for rid, p in late:
            missing = [o for o in self.outputs if o not in p.outputs]
            self.on_error(rid, f"request {rid} was not answered within {p.timeout_s:g} s (outputs still missing: "
                               f"{', '.join(missing)}). Raise timeout_s, or check the agents with `edgepart discover`.",
                          cause=DeadlineExceeded)

    def _on_message(self, peer, h: Header, payload: list) -> None:
        if h.kind == "error":
            self.on_error(h.request_id, *reversed(error_of(h.message)))
        elif h.kind == "tensor":
            try:
                got = arrays(h, payload)
            except WireError as e:
                self.on_error(h.request_id, f"{peer.role} sent a malformed result: {e}")
                return
            self.on_result(h.request_id, got)

    def _on_down(self, role: str) -> None:
        with self._lock:
            rids = [rid for rid, p in self.pending.items() if role in p.roles]
        for rid in rids:
            self.on_error(rid, f"{role} stopped answering while request {rid} was in flight; restart "
                               f"`edgepart run` there (the session reconnects by itself) and send it again.")

    def _on_discovered(self, ann: Announcement, present: bool) -> None:
        if not present:
            self.links.post(self.waker, "forget", ann.endpoint)  # it said goodbye
        elif ann.role in self.roles:
            self.links.post(self.waker, "connect", ann.endpoint, ann.role)

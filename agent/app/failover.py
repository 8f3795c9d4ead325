"""Failover: a session over a primary plan and the fallback plans compiled for it (docs/failover.md).

The packager compiles, for each primary device D, a fallback plan that does without D (over the
other primaries and the standby devices); every device serves its bundles of all of them, warm
(agent/device/standby.py). This client holds one ClusterClient per plan, all linked from the start,
and picks the plan each request goes to:

- the primary plan while all its devices are up;
- when one device D of it stops answering (its link drops at once for a killed process, after the
  heartbeat timeout for a vanished host: agent/net/link.py) and the fallback plan without D is
  ready, that fallback plan. Every request that failed on the primary plan meanwhile (all those in
  flight: they all touched D's link) is resent once on it. Each request is answered at most once:
  the first try's answer, should one still come, is dropped (its id is no longer pending there),
  and the session's future is resolved once;
- back to the primary plan once it has been ready, every device linked, for RETURN_AFTER_S without
  a break: a device that comes and goes does not make the session flap.

Without a usable fallback (two devices down, the spare down too, or no fallback packaged) a failure
is the primary plan's own: a PeerError at once, and recovery when the device returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from edgepart.errors import DeadlineExceeded, PeerError
from edgepart.keys import Credentials, Keys
from edgepart.plan import Plan

from .client import ClusterClient

log = logging.getLogger("edgepart")

RETURN_AFTER_S = 3.0  # the primary plan must be ready this long, without a break, before requests go back
# A request that failed on the primary while no device of it was seen down yet (another agent's
# error can arrive before this session's own link sees the death) waits this long for that verdict.
GRACE_S = 1.0
FALLBACK_WAIT_S = 3.0  # after the primary plan is ready, how long start() waits for its fallbacks
TICK_S = 0.01  # the parked requests are looked at this often


# what an agent says of a request it turned away or could not compute: its answer, on any plan
_NOT_A_LINK = ("is busy", "rejected", "refused a message", "failed:")


def _a_link_failed(e: BaseException) -> bool:
    """Whether a request's error may be a device gone (worth a wait for the fallback plan), not an
    agent's answer that another plan would repeat (busy, bad inputs, a step that failed)."""
    return not any(w in str(e) for w in _NOT_A_LINK)


@dataclass
class _Parked:
    outer: concurrent.futures.Future
    feeds: Mapping[str, np.ndarray]
    deadline: float
    tried: ClusterClient
    error: BaseException
    until: float


class FailoverClient:
    """The session's client where fallback plans exist: `fallbacks` maps each device to the plan
    that does without it, with the credentials this app talks to that plan with."""

    def __init__(self, plan: Plan, fallbacks: Mapping[str, tuple[Plan, Credentials]], *, interface: str | None = None,
                 peers: tuple[str, ...] = (), discover_timeout_s: float = 10.0,
                 credentials: Credentials = Credentials(None, Keys())):
        self.plan = plan
        self.discover_timeout_s = discover_timeout_s
        kw = dict(interface=interface, peers=peers, discover_timeout_s=discover_timeout_s)
        self.primary = ClusterClient(plan, credentials=credentials, **kw)
        self.fallbacks = {d: ClusterClient(p, credentials=c, **kw) for d, (p, c) in sorted(fallbacks.items())}
        self.using = ""  # "" on the primary plan, else the device whose fallback plan requests go to
        self.switches = 0  # times the session changed plan (both ways)
        self.retried = 0  # requests resent on another plan
        self._ready_since: float | None = None  # the primary plan ready, without a break, since (on a fallback)
        self._lock = threading.Lock()
        self._parked: list[_Parked] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def roles(self) -> set[str]:
        return self.primary.roles

    def _clients(self) -> list[ClusterClient]:
        return [self.primary, *self.fallbacks.values()]

    async def start(self) -> "FailoverClient":
        """Open every plan's links at once; ready when the primary plan is (or, with one of its
        devices missing, that device's fallback plan is), within discover_timeout_s."""
        got = await asyncio.gather(*(c.start(wait=False) for c in self._clients()), return_exceptions=True)
        if err := next((g for g in got if isinstance(g, BaseException)), None):
            await asyncio.gather(*(c.close() for c in self._clients()), return_exceptions=True)
            raise err
        self._thread = threading.Thread(target=self._watch, name="edgepart-failover", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        end = t0 + self.discover_timeout_s
        # the primary plan first: while discovery is under way some of its devices are not found
        # yet, which is no reason to start on a fallback plan; a device still missing after
        # FALLBACK_WAIT_S is (the fallback plan without it, where that one is ready)
        while not self.primary.ready():
            if time.monotonic() - t0 >= min(FALLBACK_WAIT_S, self.discover_timeout_s) \
                    and self.current() is not self.primary:
                break
            if time.monotonic() > end:
                err = self.primary.not_ready_error()
                await self.close()
                raise err
            await asyncio.sleep(0.05)
        end = time.monotonic() + FALLBACK_WAIT_S  # linked at the same time, as a rule: a short wait
        while not self.fallbacks_ready() and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for d, c in self.fallbacks.items():
            if not c.ready():
                log.warning("the fallback plan %s for when %s fails is not ready (%s); until it is, a failure of %s "
                            "fails requests as without a spare", c.plan.plan_id, d,
                            ", ".join(sorted(c.missing_roles())) + " not found" if c.missing_roles()
                            else "its devices are not linked yet", d)
        if self.current() is not self.primary:
            log.warning("%s of plan %s is missing: the session starts on the fallback plan %s",
                        self.using, self.plan.plan_id, self.fallbacks[self.using].plan.plan_id)
        return self

    def fallbacks_ready(self) -> bool:
        return all(c.ready() for c in self.fallbacks.values())

    def missing_roles(self) -> set[str]:
        """The primary plan's devices not up now."""
        return self.primary.missing_roles()

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        with self._lock:
            parked, self._parked = self._parked, []
        for p in parked:
            self._settle(p.outer, error=PeerError("the session was closed"))
        await asyncio.gather(*(c.close() for c in self._clients()), return_exceptions=True)

    # -- which plan -----------------------------------------------------------------------------------
    def current(self) -> ClusterClient:
        """The client of the plan requests go to now (any thread); switches plan where the links say so."""
        with self._lock:
            now = time.monotonic()
            if not self.using:
                down = self.primary.missing_roles()
                if len(down) == 1:
                    (d,) = down
                    fb = self.fallbacks.get(d)
                    if fb is not None and fb.ready():
                        self.using, self.switches = d, self.switches + 1
                        self._ready_since = None
                        log.warning("%s of plan %s stopped answering: requests go to the fallback plan %s (%s), "
                                    "those in flight are resent there once", d, self.plan.plan_id, fb.plan.plan_id,
                                    ", ".join(fb.plan.device_names()))
                        return fb
                return self.primary
            fb = self.fallbacks[self.using]
            if not self.primary.ready():
                self._ready_since = None
                return fb
            if self._ready_since is None:
                self._ready_since = now
            if now - self._ready_since < RETURN_AFTER_S and fb.ready():
                return fb
            log.warning("%s is back and plan %s ready for %.1f s: requests go to the primary plan again",
                        self.using, self.plan.plan_id, now - self._ready_since)
            self.using, self.switches, self._ready_since = "", self.switches + 1, None
            return self.primary

    # -- requests ---------------------------------------------------------------------------------------
    def submit(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> concurrent.futures.Future:
        """`ClusterClient.submit` on the plan of the moment; a PeerError there is retried once on the
        plan that replaces it (see the module's docstring). Bad inputs raise here, as there."""
        deadline = time.monotonic() + timeout_s
        outer: concurrent.futures.Future = concurrent.futures.Future()
        outer.set_running_or_notify_cancel()
        c = self.current()
        inner = c.submit(feeds, timeout_s)  # InputsError and a closed session raise to the caller
        inner.add_done_callback(lambda f: self._first_done(outer, feeds, deadline, c, f))
        return outer

    def _first_done(self, outer, feeds, deadline: float, tried: ClusterClient, f: concurrent.futures.Future) -> None:
        e = f.exception()
        if e is None:
            self._settle(outer, result=f.result())
            return
        if not isinstance(e, PeerError) or isinstance(e, DeadlineExceeded) or self._stop.is_set():
            self._settle(outer, error=e)
            return
        if self._resend(outer, feeds, deadline, tried):
            return
        if _a_link_failed(e) and self._worth_waiting(tried):  # no plan to go to yet: this session's links may not have seen the death
            until = min(time.monotonic() + GRACE_S, deadline)
            with self._lock:
                if not self._stop.is_set():  # (close() drains the parked under this lock, after setting stop)
                    self._parked.append(_Parked(outer, feeds, deadline, tried, e, until))
                    return
        self._settle(outer, error=e)

    def _worth_waiting(self, tried: ClusterClient) -> bool:
        """A request failed on the primary plan while this session's own links still see all of its
        devices up (another agent's error came first): a fallback plan may take it once they see
        which one went. With a device seen down and no fallback for it, the failure is final: fast."""
        return (tried is self.primary and not self.primary.missing_roles() and not self._stop.is_set()
                and any(c.ready() for c in self.fallbacks.values()))

    def _resend(self, outer, feeds, deadline: float, tried: ClusterClient) -> bool:
        """Send the request once more on the plan of the moment, if that is another one than it failed on."""
        c = self.current()
        left = deadline - time.monotonic()
        if c is tried or left <= 0:
            return False
        self.retried += 1
        try:
            inner = c.submit(feeds, left)
        except PeerError as e:
            self._settle(outer, error=e)
            return True
        inner.add_done_callback(lambda f: self._settle(outer, result=f.result()) if f.exception() is None
                                else self._settle(outer, error=f.exception()))
        return True

    @staticmethod
    def _settle(outer: concurrent.futures.Future, *, result=None, error: BaseException | None = None) -> None:
        """Resolve the session's future once: whatever comes after is dropped."""
        try:
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass

    def _watch(self) -> None:
        """Resend parked requests once a plan to go to shows, or fail them with their first error."""
        while not self._stop.wait(TICK_S):
            with self._lock:
                if not self._parked:
                    continue
                parked, self._parked = self._parked, []
            keep = []
            now = time.monotonic()
            for p in parked:
                if self._resend(p.outer, p.feeds, p.deadline, p.tried):
                    continue
                if now >= p.until or not self._worth_waiting(p.tried):
                    self._settle(p.outer, error=p.error)
                else:
                    keep.append(p)
            with self._lock:
                self._parked[:0] = keep

    def run(self, feeds: Mapping[str, np.ndarray], timeout_s: float = 10.0) -> dict[str, np.ndarray]:
        """A sync request on the plan of the moment (its fast paths: ClusterClient.run), retried once on
        the plan that replaces it after a PeerError."""
        deadline = time.monotonic() + timeout_s
        c = self.current()
        try:
            return c.run(feeds, timeout_s)
        except DeadlineExceeded:
            raise
        except PeerError as e:
            until = min(time.monotonic() + GRACE_S, deadline)
            while True:
                other = self.current()
                left = deadline - time.monotonic()
                if other is not c and left > 0 and not self._stop.is_set():
                    self.retried += 1
                    return other.run(feeds, left)
                if time.monotonic() >= until or not _a_link_failed(e) or not self._worth_waiting(c):
                    raise e
                time.sleep(TICK_S)

"""The executor: runs this device's program for any number of requests in flight.

It knows nothing of strategies. For each request it collects the tensors that arrive (from the
caller, a peer, or a local step), runs every step whose inputs are all present, and hands each
output to the routes the plan gives it, one message per destination. A request that outlives its
deadline is dropped with an error to its caller; what it holds at once is bounded, in all and per
sender (admission.py).

It runs on the agent's data thread (agent.py), which owns the sockets: receive, compute, send, with
no hand-off between threads on the way (measured: a hand-off costs 0.1-0.2 ms on one core, more
than edgepart's framing and validation together). onnxruntime releases the GIL while it computes.

In a plan with sources (docs/priority.md, "Plans with sources") each request runs its source's lane
only: the steps, routes and alternatives of its source and of every source. Its ready steps wait in
the device's one queue, in the order the plan's rule gives (edgepart.schedule: priority with aging,
or FIFO), and the data thread runs one step per turn (`run_next`), so every step boundary serves the
most urgent task of the moment. The source's own device refuses at once a request whose deadline is
out of reach, from the work queued here, the step times measured here and what the helpers last
said of their queues.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgepart.bundle import Bundle
from edgepart.errors import DeadlineRefused, PeerError, WireError
from edgepart.plan import Lane as PlanLane
from edgepart.plan import Route, Step
from edgepart.runtime import Providers, choose, make_step_session, shared_pool_threads
from edgepart.schedule import TaskQueue, check_admission, task_key
from edgepart.wire import DEADLINE_MARK

from ..net.choose import Chooser
from .admission import Admission

log = logging.getLogger("edgepart")

Key = tuple[bytes, int]  # (client id, request id)
# send(destination, key, {tensor: array}, deadline, source, born); raises on failure. `source` and
# `born` (time.monotonic() when the request was made, as far as this device knows) go in the header
Sender = Callable[[str, Key, dict[str, np.ndarray], float, str, float], None]
Failer = Callable[[Key, str], None]  # tell the request's caller it failed
NEVER = 1 << 30  # the inputs a step of another source's lane waits for: it never runs for this request
EWMA = 0.2  # the weight of a step's latest time in its measured figure


@dataclass
class Lane:
    """What the requests of one source run on this device; a plan without sources has one lane, ""."""

    source: str
    weight: float  # in the queue's order (1 under fifo)
    deadline_ms: float  # 0: none
    head: bool  # this is the source's own device: its requests enter the cluster here
    missing: tuple[int, ...]  # per step: inputs to wait for (NEVER: not this lane's)
    no_inputs: tuple[int, ...]  # this lane's steps that wait for nothing
    readers: dict[str, tuple[int, ...]]  # tensor -> this lane's steps that read it
    dsts: dict[str, tuple[str, ...]]  # output -> the other devices (or the caller) it goes to
    steps: tuple[int, ...]  # this lane's steps here
    chooser: Chooser
    forward: dict[str, tuple[str, ...]]  # a tensor that arrives here and goes on as it is -> where


@dataclass
class Request:
    deadline: float  # time.monotonic()
    missing: list[int]  # per step (plan order): how many of its inputs have not arrived yet
    lane: Lane
    born: float = 0.0  # time.monotonic() when it was made (its age came in the header)
    ready: list[int] = field(default_factory=list)  # a heap of steps whose inputs are all here
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    done: int = 0
    owner: str = ""  # the sender whose message started it here (admission.py)
    held: dict[str, int] = field(default_factory=dict)  # bytes received for it, by sender


class Executor:
    def __init__(self, bundle: Bundle, send: Sender, fail: Failer, threads: int = 0, providers: Providers | None = None,
                 admission: Admission | None = None):
        self.bundle = bundle
        self.device = bundle.device
        self.steps: tuple[Step, ...] = bundle.steps
        plan = bundle.plan
        self.providers = providers or choose("auto", next(d.providers for d in plan.devices if d.name == self.device))
        self.threads = threads
        self.sessions: dict[str, object] = {}
        self.local_inputs = {i.name for s in self.steps for i in s.inputs}
        self.input_specs = {i.name: i for s in self.steps for i in s.inputs}
        self.expected: dict[str, set[str]] = {}  # tensor -> senders allowed to send it here
        for r in plan.routes_to(self.device):
            self.expected.setdefault(r.tensor, set()).add(r.src)
        self.out_routes: dict[str, list[Route]] = {}
        for r in plan.routes_from(self.device):
            self.out_routes.setdefault(r.tensor, []).append(r)
        self._n_inputs = [len({i.name for i in s.inputs}) for s in self.steps]
        self._in_names = [tuple(i.name for i in s.inputs) for s in self.steps]
        self._out_names = [[o.name for o in s.outputs] for s in self.steps]
        self.send, self.fail = send, fail
        # the queue's order: "" (no queue: a step runs as soon as its inputs are here), or the plan's
        # rule for its sources, priority or fifo (edgepart.schedule)
        self.rule = plan.lanes.rule if plan.lanes else ""
        self.aging_ms = plan.lanes.aging_ms
        # what a peer last said of its queue (the agent sets it: Links.report); None: nothing
        self.figures: Callable[[str], tuple | None] | None = None
        self.lanes = ({ln.source: self._lane(plan, ln) for ln in plan.lanes.lanes} if plan.lanes
                      else {"": self._lane(plan, None)})
        self._plain = self.lanes.get("")  # the one lane of a plan without sources
        # ready steps waiting (plans with sources): (key, request, step, when it was queued)
        self.queue = TaskQueue()
        self.step_ms = [0.0] * len(self.steps)  # each step's time here, measured (EWMA; 0: not yet run warm)
        self._runs = [0] * len(self.steps)
        self.requests: dict[Key, Request] = {}
        self.admission = admission or Admission()
        self.completed = 0
        self.failed = 0
        self.refused = 0  # requests refused at once, their deadline out of reach
        self._next_expiry = 0.0

    def _lane(self, plan, ln: PlanLane | None) -> Lane:
        mine = ("", ln.source) if ln is not None else ("",)
        idx = tuple(i for i, s in enumerate(self.steps) if s.source in mine)
        missing = [NEVER] * len(self.steps)
        # Readiness is counted, not searched for: each arriving tensor ticks off the steps that read
        # it, so a message costs O(its readers), not a scan of every step (a channel split's device
        # holds ~40 steps and receives a message or two per step: scanning was ~40 % of its Python,
        # docs/agents.md "Exchanges")
        readers: dict[str, tuple[int, ...]] = {}
        dsts: dict[str, tuple[str, ...]] = {}
        for i in idx:
            missing[i] = self._n_inputs[i]
            for name in dict.fromkeys(self._in_names[i]):
                readers[name] = readers.get(name, ()) + (i,)
            for o in self._out_names[i]:
                dsts[o] = tuple(r.dst for r in self.out_routes.get(o, ()) if r.dst != self.device and r.source in mine)
        made = {o for i in idx for o in self._out_names[i]}
        forward: dict[str, tuple[str, ...]] = {}
        for t, rs in self.out_routes.items() if ln is not None else ():  # (plans with sources only)
            if t not in made and (dst := tuple(r.dst for r in rs if r.source in mine and r.dst != self.device)):
                forward[t] = dst
        # where outputs go to one of several alternative devices (the source's own groups)
        chooser = Chooser(plan.lane(ln.source) if ln is not None else plan, self._said,
                          self.aging_ms if self.rule == "priority" else None)
        weight = ln.priority if ln is not None and self.rule == "priority" else 1.0
        return Lane(ln.source if ln is not None else "", weight, ln.deadline_ms if ln is not None else 0.0,
                    ln is not None and ln.device == self.device, tuple(missing),
                    tuple(i for i in idx if self._n_inputs[i] == 0), readers, dsts, idx, chooser, forward)

    def _said(self, device: str) -> tuple | None:
        return self.figures(device) if self.figures is not None else None

    def lane(self, source: str) -> Lane:
        """The lane of a request of `source`; WireError for a source this plan does not serve."""
        lane = self.lanes.get(source)
        if lane is not None:
            return lane
        if self._plain is not None:
            raise WireError(f"a request of source {source!r}, but plan {self.bundle.plan.plan_id} serves no sources")
        raise WireError(f"a request of {'source ' + repr(source) if source else 'no source'}: plan "
                        f"{self.bundle.plan.plan_id} serves the sources {', '.join(self.lanes)} only. Open the "
                        f"session with source=NAME (docs/priority.md)")

    def load(self) -> None:
        """Create the steps' sessions (onnxruntime, or LiteRT for a TFLite step)."""
        # several steps take turns on one budget: an idle pool must not spin on the cores the
        # running step needs (docs/agents.md, "Threads")
        spin = len(self.steps) == 1 or shared_pool_threads() > 0
        # steps of the same file and interface share one session: in a plan with sources, each source's
        # tail on a helper is a step of its own, the same nodes where the cuts agree (packager/lanes.py)
        made: dict[tuple, object] = {}
        for s in self.steps:
            same = (s.sha256, s.runtime, s.io, s.inputs, s.outputs)
            if same not in made:
                made[same] = make_step_session(self.bundle.file(s.model_file), s, self.providers, self.threads,
                                               spin=spin)
            self.sessions[s.name] = made[same]
        # what the ONNX sessions really got: onnxruntime drops a provider that does not start, and the
        # status and `edgepart discover` must say so (docs/agents.md, "Execution providers")
        got = [p for sess in self.sessions.values() if hasattr(sess, "get_providers") for p in sess.get_providers()]
        if got:
            self.providers = self.providers.started(got)

    def accepts(self, tensor: str, sender: str) -> bool:
        return sender in self.expected.get(tensor, ())

    def refusal(self, key: Key, sender: str, nbytes: int) -> str | None:
        """Why `nbytes` of tensors from `sender` for request `key` must be turned away (this agent
        holds too much, or that sender does), or None."""
        return self.admission.refusal(sender, key not in self.requests, nbytes)

    def deliver(self, key: Key, arrays: dict[str, np.ndarray], ttl_ms: float, sender: str = "",
                nbytes: int | None = None, source: str = "", age_ms: float = 0.0) -> None:
        """Tensors for request `key` from `sender` arrived (admitted: `refusal` said None); run
        whatever became runnable (or queue it: plans with sources). `source`, `age_ms`: the request's,
        as its header says; WireError for a source this plan does not serve."""
        if nbytes is None:
            nbytes = sum(a.nbytes for a in arrays.values())
        req = self.requests.get(key)
        new = req is None
        if new:
            lane = self.lane(source)
            now = time.monotonic()
            req = Request(now + ttl_ms / 1e3, list(lane.missing), lane, now - max(age_ms, 0.0) / 1e3,
                          list(lane.no_inputs), owner=sender)
            if lane.deadline_ms and lane.head and not self._admit(key, req):
                return
            self.requests[key] = req
        self.admission.take(sender, new, nbytes)
        if nbytes:
            req.held[sender] = req.held.get(sender, 0) + nbytes
        if req.lane.forward and not self._forward(key, req, arrays):
            return
        self._arrived(req, arrays)
        self._run_ready(key, req)

    def _admit(self, key: Key, req: Request) -> bool:
        """Whether a new request of a source with a deadline, entering here, can meet it; if not, it is
        refused at once (docs/priority.md, "Admission"): its age, the work queued here ahead of it, its
        steps here and, for each group of helpers, the best of cost + work queued there."""
        lane, now = req.lane, time.monotonic()
        age_ms = (now - req.born) * 1e3
        ahead = self.queue.ahead_ms(self._key(req, now) if self.rule == "priority" else None)
        expected = (age_ms + ahead + sum(self.step_ms[i] for i in lane.steps)
                    + lane.chooser.best_ms((lane.weight, age_ms)))
        try:
            check_admission(lane.source, expected, lane.deadline_ms)
        except DeadlineRefused as e:
            self.refused += 1
            if key[0]:
                self.fail(key, f"{DEADLINE_MARK}{e}")
            return False
        return True

    def _key(self, req: Request, now: float) -> float:
        """The queue key of a step of `req` that becomes ready here at `now` (its wait counts from now)."""
        return task_key(self.rule, req.lane.weight, now * 1e3, self.aging_ms)

    def queued(self) -> tuple[tuple[float, float, float], ...]:
        """The steps waiting here, in serving order, as (weight, ms waited here, work ms): what this
        device says of its queue to its peers (Status.queue)."""
        now = time.monotonic()
        return tuple((req.lane.weight, (now - since) * 1e3, work)
                     for _, work, (_, req, _, since) in self.queue.in_order())

    def measured(self) -> tuple[tuple[str, float], ...]:
        """Each step's time here as measured (those run warm): what this device says of its steps to its
        peers (Status.steps), who weigh sending it work by them."""
        return tuple((s.name, ms) for s, ms in zip(self.steps, self.step_ms) if ms > 0)

    def _arrived(self, req: Request, arrays: dict[str, np.ndarray]) -> None:
        tensors, missing, readers = req.tensors, req.missing, req.lane.readers
        for name, arr in arrays.items():
            if name not in tensors:
                for i in readers.get(name, ()):
                    missing[i] -= 1
                    if not missing[i]:
                        heapq.heappush(req.ready, i)  # in plan order, as the packager listed them
            tensors[name] = arr

    def _run_ready(self, key: Key, req: Request) -> None:
        if self.rule:  # a plan with sources: the ready steps wait their turn (run_next)
            if req.ready:
                now = time.monotonic()
                while req.ready:
                    i = heapq.heappop(req.ready)
                    self.queue.push(self._key(req, now), self.step_ms[i], (key, req, i, now))
        else:
            while req.ready and self.requests.get(key) is req:
                self._run_step(key, req, heapq.heappop(req.ready))
        if req.done == len(req.lane.steps) and self.requests.pop(key, None) is not None:
            self.admission.give_back(req.owner, req.held)
            self.completed += 1
            if req.lane.chooser:
                req.lane.chooser.done(key)

    def run_next(self) -> bool:
        """Run the first step of the queue (plans with sources); False when none waits. One step a
        call: the data thread reads what came meanwhile, so the next step is again the most urgent."""
        if not self.queue:
            return False
        _, _, (key, req, i, _) = self.queue.pop()
        if self.requests.get(key) is not req:
            return True  # it failed or expired while its step waited
        t0 = time.perf_counter()
        self._run_step(key, req, i)
        ms = (time.perf_counter() - t0) * 1e3
        self._runs[i] += 1
        if self._runs[i] > 1:  # (the first run is cold: onnxruntime allocates its buffers then)
            self.step_ms[i] = ms if not self.step_ms[i] else (1 - EWMA) * self.step_ms[i] + EWMA * ms
        if self.requests.get(key) is req:
            self._run_ready(key, req)
        return True

    def compute(self, step: Step, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """Run `step` on `tensors` (any thread: onnxruntime sessions are thread-safe): its outputs by
        name, and grouped by the other devices (or the caller) the plan routes them to. Raises PeerError."""
        names = [o.name for o in step.outputs]
        try:
            outs = self.sessions[step.name].run(names, {i.name: tensors[i.name] for i in step.inputs})
        except Exception as e:  # onnxruntime raises untyped errors (bad shapes, bad values)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise PeerError(f"{self.device}/{step.name} failed: {msg}") from None
        return self._grouped(names, outs, self._plain)

    def _grouped(self, names: list[str], outs: list,
                 lane: Lane) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        by_name = dict(zip(names, outs))
        by_dst: dict[str, dict[str, np.ndarray]] = {}
        dsts = lane.dsts
        for name, arr in by_name.items():
            for dst in dsts.get(name, ()):
                d = by_dst.get(dst)
                if d is None:
                    by_dst[dst] = {name: arr}
                else:
                    d[name] = arr
        return by_name, by_dst

    def _run_step(self, key: Key, req: Request, i: int) -> None:
        step, tensors = self.steps[i], req.tensors
        names = self._out_names[i]
        try:
            outs = self.sessions[step.name].run(names, {n: tensors[n] for n in self._in_names[i]})
        except Exception as e:  # onnxruntime raises untyped errors (bad shapes, bad values)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            self.fail_request(key, f"{self.device}/{step.name} failed: {msg}")
            return
        by_name, by_dst = self._grouped(names, outs, req.lane)
        # the outputs go out before this device's next steps run: peers wait for them (their
        # work overlaps ours), and the local steps they unblock are in `ready` until we return
        if not self._send_all(key, req, by_dst, f"{step.name}'s outputs"):
            return
        self._arrived(req, by_name)
        req.done += 1

    def _send_all(self, key: Key, req: Request, by_dst: dict[str, dict[str, np.ndarray]], what: str) -> bool:
        """Send each destination its tensors, one of each group of alternatives picked by the rule;
        False if one failed (the request is failed then)."""
        lane = req.lane
        for dst in lane.chooser.pick(key, by_dst, (lane.weight, (time.monotonic() - req.born) * 1e3)) if lane.chooser else by_dst:
            try:
                self.send(dst, key, by_dst[dst], req.deadline, lane.source, req.born)
            except Exception as e:  # PeerError: the peer is gone or did not take it in time
                self.fail_request(key, f"{self.device} could not send {what} to {dst}: {e}")
                return False
        return True

    def _forward(self, key: Key, req: Request, arrays: dict[str, np.ndarray]) -> bool:
        """Pass on what arrived that the plan routes on from here as it is (a model input a source's
        helper reads too: packager/lanes.py); False if the request failed."""
        by_dst: dict[str, dict[str, np.ndarray]] = {}
        for name, arr in arrays.items():
            for dst in req.lane.forward.get(name, ()):
                by_dst.setdefault(dst, {})[name] = arr
        return not by_dst or self._send_all(key, req, by_dst, ", ".join(sorted({n for d in by_dst.values() for n in d})))

    def fail_request(self, key: Key, why: str) -> None:
        """Drop request `key` (if held) and tell its caller why."""
        req = self.requests.pop(key, None)
        if req is None:
            return
        self.admission.give_back(req.owner, req.held)
        if req.lane.chooser:
            req.lane.chooser.done(key)
        self.failed += 1
        log.debug("request %s failed: %s", key[1], why)
        if key[0]:
            self.fail(key, why)

    def expire(self) -> None:
        """Drop requests past their deadline, telling their callers (cheap to call often)."""
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + 0.05
        for key, req in list(self.requests.items()):
            if now > req.deadline:
                self.fail_request(key, f"deadline passed while {self.device} still waited for "
                                f"{sorted(self.local_inputs - set(req.tensors)) or 'its steps'}")

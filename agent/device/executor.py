"""The executor: runs this device's program for any number of requests in flight.

It knows nothing of strategies. For each request it collects the tensors that arrive (from the
caller, a peer, or a local step), runs every step whose inputs are all present, and hands each
output to the routes the plan gives it, one message per destination. A request that outlives its
deadline is dropped with an error to its caller; what it holds at once is bounded, in all and per
sender (admission.py).

It runs on the agent's data thread (agent.py), which owns the sockets: receive, compute, send, with
no hand-off between threads on the way (measured: a hand-off costs 0.1-0.2 ms on one core, more
than edgepart's framing and validation together). onnxruntime releases the GIL while it computes.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgepart.bundle import Bundle
from edgepart.errors import PeerError
from edgepart.plan import Route, Step
from edgepart.runtime import Providers, choose, make_step_session, shared_pool_threads

from ..net.choose import Chooser
from .admission import Admission

log = logging.getLogger("edgepart")

Key = tuple[bytes, int]  # (client id, request id)
# send(destination, key, {tensor: array}, deadline); raises on failure
Sender = Callable[[str, Key, dict[str, np.ndarray], float], None]
Failer = Callable[[Key, str], None]  # tell the request's caller it failed


@dataclass
class Request:
    deadline: float  # time.monotonic()
    missing: list[int]  # per step (plan order): how many of its inputs have not arrived yet
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
        # Readiness is counted, not searched for: each arriving tensor ticks off the steps that read
        # it, so a message costs O(its readers), not a scan of every step (a channel split's device
        # holds ~40 steps and receives a message or two per step: scanning was ~40 % of its Python,
        # docs/agents.md "Exchanges")
        self._readers: dict[str, tuple[int, ...]] = {}
        for i, s in enumerate(self.steps):
            for name in dict.fromkeys(i.name for i in s.inputs):
                self._readers[name] = self._readers.get(name, ()) + (i,)
        self._n_inputs = [len({i.name for i in s.inputs}) for s in self.steps]
        self._no_inputs = [i for i, n in enumerate(self._n_inputs) if n == 0]
        self._in_names = [tuple(i.name for i in s.inputs) for s in self.steps]
        self._out_names = [[o.name for o in s.outputs] for s in self.steps]
        # per step output: the other devices (or the caller) it goes to
        self._dsts = {o.name: tuple(r.dst for r in self.out_routes.get(o.name, ()) if r.dst != self.device)
                      for s in self.steps for o in s.outputs}
        self.send, self.fail = send, fail
        self.chooser = Chooser(plan)  # where outputs go to one of several alternative devices
        self.requests: dict[Key, Request] = {}
        self.admission = admission or Admission()
        self.completed = 0
        self.failed = 0
        self._next_expiry = 0.0

    def load(self) -> None:
        """Create the steps' sessions (onnxruntime, or LiteRT for a TFLite step)."""
        # several steps take turns on one budget: an idle pool must not spin on the cores the
        # running step needs (docs/agents.md, "Threads")
        spin = len(self.steps) == 1 or shared_pool_threads() > 0
        for s in self.steps:
            self.sessions[s.name] = make_step_session(self.bundle.file(s.model_file), s, self.providers, self.threads,
                                                      spin=spin)
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
                nbytes: int | None = None) -> None:
        """Tensors for request `key` from `sender` arrived (admitted: `refusal` said None); run
        whatever became runnable."""
        if nbytes is None:
            nbytes = sum(a.nbytes for a in arrays.values())
        req = self.requests.get(key)
        new = req is None
        if new:
            req = self.requests[key] = Request(time.monotonic() + ttl_ms / 1e3, list(self._n_inputs),
                                               list(self._no_inputs), owner=sender)
        self.admission.take(sender, new, nbytes)
        if nbytes:
            req.held[sender] = req.held.get(sender, 0) + nbytes
        self._arrived(req, arrays)
        self._run_ready(key, req)

    def _arrived(self, req: Request, arrays: dict[str, np.ndarray]) -> None:
        tensors, missing, readers = req.tensors, req.missing, self._readers
        for name, arr in arrays.items():
            if name not in tensors:
                for i in readers.get(name, ()):
                    missing[i] -= 1
                    if not missing[i]:
                        heapq.heappush(req.ready, i)  # in plan order, as the packager listed them
            tensors[name] = arr

    def _run_ready(self, key: Key, req: Request) -> None:
        while req.ready and self.requests.get(key) is req:
            self._run_step(key, req, heapq.heappop(req.ready))
        if req.done == len(self.steps) and self.requests.pop(key, None) is not None:
            self.admission.give_back(req.owner, req.held)
            self.completed += 1
            if self.chooser:
                self.chooser.done(key)

    def compute(self, step: Step, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """Run `step` on `tensors` (any thread: onnxruntime sessions are thread-safe): its outputs by
        name, and grouped by the other devices (or the caller) the plan routes them to. Raises PeerError."""
        names = [o.name for o in step.outputs]
        try:
            outs = self.sessions[step.name].run(names, {i.name: tensors[i.name] for i in step.inputs})
        except Exception as e:  # onnxruntime raises untyped errors (bad shapes, bad values)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise PeerError(f"{self.device}/{step.name} failed: {msg}") from None
        return self._grouped(names, outs)

    def _grouped(self, names: list[str], outs: list) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        by_name = dict(zip(names, outs))
        by_dst: dict[str, dict[str, np.ndarray]] = {}
        dsts = self._dsts
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
        by_name, by_dst = self._grouped(names, outs)
        # the outputs go out before this device's next steps run: peers wait for them (their
        # work overlaps ours), and the local steps they unblock are in `ready` until we return
        for dst in self.chooser.pick(key, by_dst) if self.chooser else by_dst:
            arrs = by_dst[dst]
            try:
                self.send(dst, key, arrs, req.deadline)
            except Exception as e:  # PeerError: the peer is gone or did not take it in time
                self.fail_request(key, f"{self.device} could not send {step.name}'s outputs to {dst}: {e}")
                return
        self._arrived(req, by_name)
        req.done += 1

    def fail_request(self, key: Key, why: str) -> None:
        """Drop request `key` (if held) and tell its caller why."""
        req = self.requests.pop(key, None)
        if req is None:
            return
        self.admission.give_back(req.owner, req.held)
        if self.chooser:
            self.chooser.done(key)
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

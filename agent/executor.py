"""The executor: runs this device's program for any number of requests in flight.

It knows nothing of strategies. For each request it collects the tensors that arrive (from the
caller, a peer, or a local step), runs every step whose inputs are all present, and hands each
output to the routes the plan gives it, one message per destination. A request that outlives its
deadline is dropped with an error to its caller; the number of requests held at once is bounded.

It runs on the agent's data thread (agent.py), which owns the sockets: receive, compute, send, with
no hand-off between threads on the way (measured: a hand-off costs 0.1-0.2 ms on one core, more
than edgepart's framing and validation together). onnxruntime releases the GIL while it computes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgepart.bundle import Bundle
from edgepart.errors import PeerError
from edgepart.plan import Route, Step
from edgepart.runtime import make_session, shared_pool_threads

log = logging.getLogger("edgepart")

MAX_IN_FLIGHT = 256

Key = tuple[bytes, int]  # (client id, request id)
# send(destination, key, {tensor: array}, deadline); raises on failure
Sender = Callable[[str, Key, dict[str, np.ndarray], float], None]
Failer = Callable[[Key, str], None]  # tell the request's caller it failed


@dataclass
class Request:
    deadline: float  # time.monotonic()
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    done: int = 0


class Executor:
    def __init__(self, bundle: Bundle, send: Sender, fail: Failer, threads: int = 0):
        self.bundle = bundle
        self.device = bundle.device
        self.steps: tuple[Step, ...] = bundle.steps
        plan = bundle.plan
        self.providers = next(d.providers for d in plan.devices if d.name == self.device)
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
        self.send, self.fail = send, fail
        self.requests: dict[Key, Request] = {}
        self.completed = 0
        self.failed = 0
        self._next_expiry = 0.0

    def load(self) -> None:
        """Create the onnxruntime sessions."""
        # several steps take turns on one budget: an idle pool must not spin on the cores the
        # running step needs (docs/agents.md, "Threads")
        spin = len(self.steps) == 1 or shared_pool_threads() > 0
        for s in self.steps:
            self.sessions[s.name] = make_session(self.bundle.file(s.model_file), self.providers, self.threads, spin=spin)

    def accepts(self, tensor: str, sender: str) -> bool:
        return sender in self.expected.get(tensor, ())

    @property
    def full(self) -> bool:
        return len(self.requests) >= MAX_IN_FLIGHT

    def deliver(self, key: Key, arrays: dict[str, np.ndarray], ttl_ms: float) -> None:
        """Tensors for request `key` arrived; run whatever became runnable."""
        req = self.requests.get(key)
        if req is None:
            req = self.requests[key] = Request(time.monotonic() + ttl_ms / 1e3)
        req.tensors.update(arrays)
        self._run_ready(key, req)

    def _run_ready(self, key: Key, req: Request) -> None:
        progress = True
        while progress and self.requests.get(key) is req:
            progress = False
            for s in self.steps:
                if s.name not in req.started and all(i.name in req.tensors for i in s.inputs):
                    req.started.add(s.name)
                    self._run_step(key, req, s)
                    progress = True
        if req.done == len(self.steps) and self.requests.pop(key, None) is not None:
            self.completed += 1

    def compute(self, step: Step, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """Run `step` on `tensors` (any thread: onnxruntime sessions are thread-safe): its outputs by
        name, and grouped by the other devices (or the caller) the plan routes them to. Raises PeerError."""
        try:
            outs = self.sessions[step.name].run([o.name for o in step.outputs], {i.name: tensors[i.name] for i in step.inputs})
        except Exception as e:  # onnxruntime raises untyped errors (bad shapes, bad values)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise PeerError(f"{self.device}/{step.name} failed: {msg}") from None
        by_name = {o.name: arr for o, arr in zip(step.outputs, outs)}
        by_dst: dict[str, dict[str, np.ndarray]] = {}
        for name, arr in by_name.items():
            for r in self.out_routes.get(name, ()):
                if r.dst != self.device:
                    by_dst.setdefault(r.dst, {})[name] = arr
        return by_name, by_dst

    def _run_step(self, key: Key, req: Request, step: Step) -> None:
        try:
            outs, by_dst = self.compute(step, req.tensors)
        except PeerError as e:
            self.fail_request(key, str(e))
            return
        req.tensors.update(outs)
        for dst, arrs in by_dst.items():
            try:
                self.send(dst, key, arrs, req.deadline)
            except Exception as e:  # PeerError: the peer is gone or did not take it in time
                self.fail_request(key, f"{self.device} could not send {step.name}'s outputs to {dst}: {e}")
                return
        req.done += 1

    def fail_request(self, key: Key, why: str) -> None:
        """Drop request `key` (if held) and tell its caller why."""
        if self.requests.pop(key, None) is None:
            return
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

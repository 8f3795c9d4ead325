"""The executor: runs this device's program for any number of requests in flight.

It knows nothing of strategies. For each request it collects the tensors that arrive (from the
caller, a peer, or a local step), runs every step whose inputs are all present — onnxruntime in a
worker thread per step, so the network keeps moving while it computes — and hands each output to
the routes the plan gives it. A request that outlives its deadline is dropped with an error to its
caller; the number of requests held at once is bounded.

The hot path makes no asyncio task per request: a step is submitted to its thread, and its
completion comes back as one loop callback that routes the outputs with non-blocking sends. Only
a send that finds its peer's queue full becomes a task that waits (backpressure, bounded by the
request's deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from edgepart.bundle import Bundle
from edgepart.plan import Route, Step
from edgepart.runtime import make_session

log = logging.getLogger("edgepart")

MAX_IN_FLIGHT = 256

Key = tuple[bytes, int]  # (client id, request id)
# send(destination, key, {tensor: array}, deadline) -> None when queued, else an awaitable that
# completes when it is; raises on failure
Sender = Callable[[str, Key, dict[str, np.ndarray], float], "Awaitable[None] | None"]
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
        self.pools = {s.name: ThreadPoolExecutor(1, thread_name_prefix=f"edgepart-{s.name}") for s in self.steps}
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
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()
        self.slot_free = asyncio.Event()
        self.completed = 0
        self.failed = 0

    def load(self) -> None:
        """Create the onnxruntime sessions (slow: call from a thread)."""
        for s in self.steps:
            self.sessions[s.name] = make_session(self.bundle.file(s.model_file), self.providers, self.threads)

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
        for s in self.steps:
            if s.name not in req.started and all(i.name in req.tensors for i in s.inputs):
                req.started.add(s.name)
                feeds = {i.name: req.tensors[i.name] for i in s.inputs}
                fut = self.pools[s.name].submit(self.sessions[s.name].run, [o.name for o in s.outputs], feeds)
                fut.add_done_callback(lambda f, s=s: self.loop.call_soon_threadsafe(self._step_done, key, req, s, f))

    def _step_done(self, key: Key, req: Request, step: Step, fut) -> None:
        try:
            outs = fut.result()
        except Exception as e:  # onnxruntime raises untyped errors (bad shapes, bad values)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            self._fail(key, f"{self.device}/{step.name} failed: {msg}")
            return
        if self.requests.get(key) is not req:
            return  # expired or failed meanwhile
        by_dst: dict[str, dict[str, np.ndarray]] = {}
        for o, arr in zip(step.outputs, outs):
            req.tensors[o.name] = arr
            for r in self.out_routes.get(o.name, ()):
                if r.dst != self.device:
                    by_dst.setdefault(r.dst, {})[o.name] = arr
        waiting = []
        for dst, arrs in by_dst.items():
            try:
                w = self.send(dst, key, arrs, req.deadline)
            except Exception as e:  # PeerError, or zmq's errors on a closing socket
                self._fail(key, f"{self.device} could not send {step.name}'s outputs to {dst}: {e}")
                return
            if w is not None:
                waiting.append(w)
        if waiting:
            t = asyncio.ensure_future(self._await_sends(key, step, waiting, req.deadline))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        req.done += 1
        self._run_ready(key, req)
        if req.done == len(self.steps) and self.requests.pop(key, None) is not None:
            self.completed += 1
            self.slot_free.set()

    async def _await_sends(self, key: Key, step: Step, waiting: list, deadline: float) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*waiting), max(deadline - time.monotonic(), 0.001))
        except Exception as e:  # timeout, or the socket closed under us
            why = f"{self.device} could not send {step.name}'s outputs before the deadline ({type(e).__name__})"
            if self.requests.pop(key, None) is not None:
                self.failed += 1
                self.slot_free.set()
            if key[0]:
                self.fail(key, why)

    def _fail(self, key: Key, why: str) -> None:
        if self.requests.pop(key, None) is None:
            return
        self.failed += 1
        self.slot_free.set()
        log.debug("request %s failed: %s", key[1], why)
        if key[0]:
            self.fail(key, why)

    def expire(self) -> None:
        """Drop requests past their deadline, telling their callers."""
        now = time.monotonic()
        for key, req in list(self.requests.items()):
            if now > req.deadline:
                self._fail(key, f"deadline passed while {self.device} still waited for "
                                f"{sorted(self.local_inputs - set(req.tensors)) or 'its steps'}")

    def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for p in self.pools.values():
            p.shutdown(wait=False, cancel_futures=True)


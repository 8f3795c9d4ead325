"""A discrete-event simulator of several sources sharing a cluster (docs/priority.md, "The simulator").

Devices serve one task at a time from a queue; links carry one message at a time (busy for
bytes / bandwidth, then the link's latency); sources make requests at their rates (Poisson
arrivals); an `Allocation` (packager/priority.py) says where each source's layers run and which helpers
may take the rest. The queue order, the choice among helpers, the claims and the admission check are
the functions of `edgepart.schedule`, the one implementation that the agents apply too:

    rule "priority"  queue key = schedule.queue_key(weight, queued, aging_ms); helper chosen by
                     schedule.choose with the source's weight, backlog = the work queued ahead of this task
    rule "fifo"      queue key = arrival at the device; helper chosen with weight 1 and the whole backlog
                     (the priority-blind baseline, and local-only)

Deterministic for a seed (one random.Random; ties in time broken by event order). Per source: mean,
p50, p95, p99 latency, throughput, deadline misses, refusals. Requests made in the first `warmup_s`
are not counted; those unfinished at the end are reported as unfinished.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgepart.schedule import DEFAULT_AGING_MS, RULES, Claims, Option, TaskQueue, admit, choose, task_key
from edgepart.sources import Sources

from edgepart.packager.priority import Allocation, StageCosts


@dataclass(frozen=True)
class SourceMetrics:
    source: str
    priority: float
    made: int  # requests made after the warm-up
    done: int
    refused: int  # refused at once by the admission check (deadline not reachable)
    unfinished: int  # still in flight at the end
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_per_s: float
    deadline_misses: int  # finished after their deadline

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SimResult:
    mode: str  # the allocation's mode
    rule: str
    duration_s: float
    sources: tuple[SourceMetrics, ...]
    requests: int  # every request simulated, warm-up included
    events: int
    wall_s: float

    @property
    def requests_per_wall_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else float("inf")

    def get(self, source: str) -> SourceMetrics:
        return next(m for m in self.sources if m.source == source)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "rule": self.rule, "duration_s": self.duration_s, "requests": self.requests,
                "events": self.events, "wall_s": round(self.wall_s, 4),
                "requests_per_wall_s": round(self.requests_per_wall_s, 1),
                "sources": [m.to_dict() for m in self.sources]}


_ARRIVE, _DONE, _SENT, _LANDED = 0, 1, 2, 3


def quota_ms(start: float, work: float, period_ms: float, run_share: float, state: list) -> float:
    """When work of `work` ms (the cost model's figure, at the device's sustained speed) started at
    `start` ends on a device under a CPU quota: each period of `period_ms` it runs for `run_share` of
    the period at 1/run_share times its sustained speed, then waits for the next period (what a CPU
    cgroup's quota does: docs/priority.md, "The simulator"). `state`: [period index, work done in it],
    updated."""
    k, used = state
    t = start
    kt = int(t // period_ms)
    if kt > k:
        k, used = kt, 0.0
    while True:
        can = min(period_ms - used, max(0.0, (k + 1) * period_ms - t) / run_share)  # work that fits
        if work <= can:
            state[0], state[1] = k, used + work
            return t + work * run_share
        work -= can
        k, used = k + 1, 0.0
        t = max(t, k * period_ms)


def simulate(costs: StageCosts, sources: Sources, allocation: Allocation, *, duration_s: float = 60.0,
             seed: int = 0, rule: str | None = None, aging_ms: float = DEFAULT_AGING_MS, claims: bool = True,
             service: str = "deterministic", warmup_s: float | None = None,
             quotas: Mapping[str, tuple[float, float]] | None = None) -> SimResult:
    """Run the cluster for `duration_s` simulated seconds. `rule`: priority or fifo (default: priority
    for a priority allocation, fifo otherwise). `service`: deterministic (the cost model's figure) or
    exponential (with that mean; for checking against M/M/1). `quotas`: devices that are CPU quotas
    (a container's --cpus, a CPU cgroup, the benchmarks' emulated devices), each (period ms, share of
    the period it runs), served in bursts (`quota_ms`); the others serve at their speed throughout."""
    rule = rule or ("priority" if allocation.mode == "priority" else "fifo")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    if service not in ("deterministic", "exponential"):
        raise ValueError(f"service must be deterministic or exponential, not {service!r}")
    t_wall = time.perf_counter()
    rng = random.Random(seed)
    end = duration_s * 1000.0
    warm = (0.1 * end) if warmup_s is None else warmup_s * 1000.0
    by_priority = rule == "priority"
    exp = service == "exponential"
    n = costs.n
    srcs = list(sources)
    pl = [allocation.get(s.name) for s in srcs]
    # per source: the work of its stages on each device (compute, a step's fixed cost, its messages'
    # handling: StageCosts.head_ms, tail_ms), the bytes it sends
    local_ms = [float(costs.head_ms(s.device, p.cut)) for s, p in zip(srcs, pl)]
    remote_ms = [{h: float(costs.tail_ms(h, p.cut)) for h in p.helpers} for p in pl]
    send_ms = [{h: float(costs.send_ms(s.device, h, costs.cut_bytes[p.cut])) for h in p.helpers}
               for s, p in zip(srcs, pl)]
    back_ms = [{h: float(costs.send_ms(h, s.device, costs.out_bytes)) for h in p.helpers} for s, p in zip(srcs, pl)]
    lat = {}
    for s, p in zip(srcs, pl):
        for h in p.helpers:
            lat[(s.device, h)] = costs.latency_ms(s.device, h)
            lat[(h, s.device)] = costs.latency_ms(h, s.device)

    queues: dict[str, TaskQueue] = {d: TaskQueue() for d in costs.devices}
    busy_until: dict[str, float] = {d: 0.0 for d in costs.devices}
    bad = [d for d, (period, share) in (quotas or {}).items() if not (period > 0 and share > 0)]
    if bad:
        raise ValueError(f"a quota is (period ms > 0, share of it > 0); not so for {', '.join(map(str, bad))}")
    quotas = {d: q for d, q in (quotas or {}).items() if q[1] < 1.0}
    unknown = sorted(set(quotas) - set(costs.devices))
    if unknown:
        raise ValueError(f"quotas name devices the cluster does not have: {', '.join(unknown)}")
    quota_state = {d: [-1, 0.0] for d in quotas}
    current: dict[str, Any] = {d: None for d in costs.devices}
    links: dict[tuple[str, str], deque] = {}
    link_free: dict[tuple[str, str], float] = {}
    link_queued_ms: dict[tuple[str, str], float] = {}
    held = Claims()
    events: list = []
    seq = 0
    n_events = 0

    def push(t: float, kind: int, payload: Any) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    # request: [source index, born, helper, done time]
    lat_of: list[list[float]] = [[] for _ in srcs]
    made = [0] * len(srcs)
    refused = [0] * len(srcs)
    misses = [0] * len(srcs)
    requests = 0

    def key_of(i: int, now: float) -> float:
        """The queue key of a task of source i that becomes ready at `now` (it ages from then on)."""
        return task_key(rule, srcs[i].priority, now, aging_ms)

    def backlog(d: str, now: float, key: float | None) -> float:
        b = max(0.0, busy_until[d] - now) if current[d] is not None else 0.0
        return b + queues[d].ahead_ms(key) + held.reserved_ms(d, key)

    def link_backlog(lk: tuple[str, str], now: float) -> float:
        return max(0.0, link_free.get(lk, 0.0) - now) + link_queued_ms.get(lk, 0.0)

    def enqueue(d: str, now: float, key: float, work: float, task: Any) -> None:
        queues[d].push(key, work, task)
        if current[d] is None:
            start(d, now)

    def start(d: str, now: float) -> None:
        _, work, task = queues[d].pop()
        if exp:
            work = rng.expovariate(1.0 / work) if work > 0 else 0.0
        current[d] = task
        q = quotas.get(d)
        busy_until[d] = quota_ms(now, work, q[0], q[1], quota_state[d]) if q else now + work
        push(busy_until[d], _DONE, d)

    def send(lk: tuple[str, str], now: float, busy: float, msg: Any) -> None:
        q = links.setdefault(lk, deque())
        if link_free.get(lk, 0.0) <= now and not q:
            link_free[lk] = now + busy
            push(now + busy, _SENT, (lk, msg))
        else:
            q.append((busy, msg))
            link_queued_ms[lk] = link_queued_ms.get(lk, 0.0) + busy

    def options(i: int, req: list, now: float, key: float) -> list[Option]:
        d = srcs[i].device
        return [Option(h, link_backlog((d, h), now) + send_ms[i][h] + lat[(d, h)], remote_ms[i][h],
                       backlog(h, now, key if by_priority else None)) for h in pl[i].helpers]

    def after_local(i: int, req: list, now: float) -> None:
        """Stage 0 done (or none): finish, or pick a helper and send it the cut's tensors."""
        if pl[i].cut >= n or not pl[i].helpers:
            finish(i, req, now)
            return
        key = key_of(i, now)
        opts = options(i, req, now, key)
        o = choose(opts, now - req[1], srcs[i].priority if by_priority else 1.0)
        req[2] = o.device
        if claims:
            held.grant(o.device, id(req), o.compute_ms, key, force=True)
        send((srcs[i].device, o.device), now, send_ms[i][o.device], ("task", i, req))

    def finish(i: int, req: list, now: float) -> None:
        if req[1] >= warm:
            ms = now - req[1]
            lat_of[i].append(ms)
            dl = srcs[i].deadline_ms
            if dl is not None and ms > dl:
                misses[i] += 1

    # first arrivals
    for i, s in enumerate(srcs):
        push(rng.expovariate(s.rate_hz / 1000.0), _ARRIVE, i)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > end:
            break
        n_events += 1
        if kind == _ARRIVE:
            i = payload
            s = srcs[i]
            push(now + rng.expovariate(s.rate_hz / 1000.0), _ARRIVE, i)
            requests += 1
            req = [i, now, None]
            if now >= warm:
                made[i] += 1
            key = key_of(i, now)
            if s.deadline_ms is not None:
                exp_ms = backlog(s.device, now, key if by_priority else None) + local_ms[i] if pl[i].cut > 0 else 0.0
                if pl[i].cut < n and pl[i].helpers:
                    opts = options(i, req, now, key)
                    o = choose(opts, 0.0, s.priority if by_priority else 1.0)
                    exp_ms += o.comm_ms + o.backlog_ms + o.compute_ms + back_ms[i][o.device] + lat[(o.device, s.device)]
                if not admit(exp_ms, s.deadline_ms):
                    if now >= warm:
                        refused[i] += 1
                    continue
            if pl[i].cut > 0:
                enqueue(s.device, now, key, local_ms[i], ("local", i, req))
            else:
                after_local(i, req, now)
        elif kind == _DONE:
            d = payload
            stage, i, req = current[d]
            current[d] = None
            if queues[d]:
                start(d, now)
            if stage == "local":
                after_local(i, req, now)
            else:  # the helper's part: the outputs go home
                send((d, srcs[i].device), now, back_ms[i][d], ("result", i, req))
        elif kind == _SENT:
            lk, msg = payload
            push(now + lat[lk], _LANDED, msg)
            q = links.get(lk)
            if q:
                busy, nxt = q.popleft()
                link_queued_ms[lk] -= busy
                if not q:
                    link_queued_ms[lk] = 0.0
                link_free[lk] = now + busy
                push(now + busy, _SENT, (lk, nxt))
        else:  # _LANDED
            what, i, req = payload
            if what == "task":
                h = req[2]
                held.release(h, id(req))
                enqueue(h, now, key_of(i, now), remote_ms[i][h], ("remote", i, req))
            else:
                finish(i, req, now)

    span_s = max(1e-9, (end - warm) / 1000.0)
    out = []
    for i, s in enumerate(srcs):
        xs = np.asarray(lat_of[i], dtype=np.float64)
        done = len(xs)
        q = np.percentile(xs, [50, 95, 99]) if done else [float("nan")] * 3
        out.append(SourceMetrics(s.name, s.priority, made[i], done, refused[i], max(0, made[i] - done - refused[i]),
                                 float(xs.mean()) if done else float("nan"), float(q[0]), float(q[1]), float(q[2]),
                                 done / span_s, misses[i]))
    return SimResult(allocation.mode, rule, duration_s, tuple(out), requests, n_events, time.perf_counter() - t_wall)


__all__ = ["RULES", "SimResult", "SourceMetrics", "quota_ms", "simulate"]

"""Where each source's layers run, with the sources' priorities in mind (docs/priority.md, "The allocator").

Every source's device runs the model's first k layers itself (nodes[0:k]) and sends what crosses cut k
to a helper device, which runs the rest and sends the outputs back; k = n is everything at home. Costs
come from the pipeline cost model (`cost.py`: per-node compute on each device, bytes over each link),
with what an agent spends per request beside compute (docs/priority.md, "Costs per request"): a
device's work for a request is its nodes' compute + one step's fixed cost + the bytes it receives and
sends at its `handling_mbps`, and a message costs its link's latency + its fixed cost.
Load is estimated per server — every device, and every directed link, which carries one message at a
time — as an M/G/1 queue with deterministic service fed by the sources' rates:

    W0            = sum over the work at the server of  rate * service^2 / 2
    FIFO          wait = W0 / (1 - rho)                               rho = sum of rate * service
    by priority   wait of weight w = W0 / ((1 - rho_above(w)) * (1 - rho_at_or_above(w)))   (Cobham)

A source's expected latency is the sum over its path of wait + service (+ link latency). Three modes:

    priority   minimise  the mean over sources of weight * expected latency, waits by priority (a
               source's weight is how much it matters, whatever its rate)
    blind      minimise  the mean over requests of expected latency, FIFO waits: the priority-blind
               baseline, where every request counts the same whatever its source (a source's rate
               weighs its latency), as a scheduler that knows nothing of priorities would
    local      every source's whole model on its own device

The search: sources placed one by one (heaviest weight first), each at its best (k, helper) given those
placed, then rounds of best responses until none improves (at most `rounds`). Each source also gets
`alternatives`: its helper first, then the next best helpers at its cut, for the run-time rule
(`edgepart.schedule.choose`) to pick among. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepart.sources import Sources

from edgepart.packager.cluster import Cluster
from edgepart.packager.cost import CostModel, busy_ms, handling_ms, message_ms, step_ms
from edgepart.packager.model.graph import Graph

MODES = ("priority", "blind", "local")
_OVER = 1e7  # ms: the penalty per unit of excess load where a server is past capacity (rho >= 1)


@dataclass(frozen=True)
class Placement:
    """One source's allocation and its expected figures (ms)."""

    source: str
    device: str  # where its frames start and its first `cut` nodes run
    priority: float
    rate_hz: float
    cut: int  # nodes[0:cut] on `device`; cut == n: all of it
    helpers: tuple[str, ...]  # the devices that may take nodes[cut:], the allocator's pick first
    local_ms: float  # work of nodes[0:cut] on device (StageCosts.head_ms)
    remote_ms: float  # work of nodes[cut:] on helpers[0] (StageCosts.tail_ms)
    transfer_ms: float  # both ways, busy time and latency, without waiting
    wait_ms: float  # expected queueing over the path
    expected_ms: float  # the sum: expected latency (inf past capacity)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["helpers"] = list(self.helpers)
        d["expected_ms"] = None if self.expected_ms == float("inf") else round(self.expected_ms, 4)
        d["wait_ms"] = None if self.wait_ms == float("inf") else round(self.wait_ms, 4)
        return d


@dataclass(frozen=True)
class Allocation:
    mode: str
    placements: tuple[Placement, ...]
    objective: float  # the mode's objective (weighted or not; inf past capacity)
    utilisation: tuple[tuple[str, float], ...]  # server ("device" or "a->b") -> rho, busiest first
    n_nodes: int

    def get(self, source: str) -> Placement:
        return next(p for p in self.placements if p.source == source)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "n_nodes": self.n_nodes,
                "objective": None if self.objective == float("inf") else round(self.objective, 4),
                "sources": [p.to_dict() for p in self.placements],
                "utilisation": {k: round(v, 4) for k, v in self.utilisation}}


class StageCosts:
    """The cost model's figures that allocation and simulation need, computed once per (graph, cluster)."""

    def __init__(self, graph: Graph, cluster: Cluster):
        from edgepart.packager.strategies.pipeline.planner import blocked_cuts

        self.graph, self.cluster = graph, cluster
        self.cm = CostModel(graph, cluster)
        self.n = graph.n
        self.devices = tuple(d.name for d in cluster.devices)
        self.prefix = {d: np.asarray(self.cm.compute_prefix_ms(d), dtype=np.float64) for d in self.devices}
        sent = np.asarray(graph.live_bytes, dtype=np.float64).copy()
        sent[0] = sum(graph.tensor_bytes.get(t.name, 0) for t in graph.inputs)  # cut 0: the inputs go
        self.cut_bytes = sent
        self.in_bytes = float(sent[0])
        self.out_bytes = float(sum(graph.tensor_bytes.get(t.name, 0) for t in graph.outputs))
        blocked = blocked_cuts(graph)
        self.cuts = np.array([k for k in range(self.n + 1) if k not in blocked], dtype=np.int64)

    def compute_ms(self, device: str, a, b):
        p = self.prefix[device]
        return p[b] - p[a]

    def head_ms(self, device: str, k):
        """The source device's work for one request with cut k (a number or an array): nodes[0:k], one
        step's fixed cost, and handling the model's inputs it receives and what it sends on (the cut's
        tensors, or the outputs when k == n); nothing when k == 0 (the caller sends to the helper)."""
        k = np.asarray(k)
        d = self.cluster.device(device)
        sends = np.where(k < self.n, self.cut_bytes[np.minimum(k, self.n)], self.out_bytes)
        work = self.compute_ms(device, 0, k) + step_ms(d) + handling_ms(d, self.in_bytes + sends)
        return np.where(k > 0, work, 0.0)

    def tail_ms(self, helper: str, k):
        """A helper's work for one request with cut k < n: nodes[k:], one step's fixed cost, and handling
        the cut's tensors in and the outputs out."""
        k = np.minimum(np.asarray(k), self.n)
        d = self.cluster.device(helper)
        return self.compute_ms(helper, k, self.n) + step_ms(d) + handling_ms(d, self.cut_bytes[k] + self.out_bytes)

    def send_ms(self, src: str, dst: str, nbytes) -> Any:
        """Busy time of the link src->dst for nbytes (no latency)."""
        return busy_ms(nbytes, self.cluster.link(src, dst))

    def latency_ms(self, src: str, dst: str) -> float:
        """A message's time on src->dst beyond its bytes: the link's latency and its fixed cost."""
        link = self.cluster.link(src, dst)
        return link.latency_ms + message_ms(link)


def _waits(items: list[tuple[int, float, float, Any]], by_priority: bool) -> tuple[dict[int, Any], Any]:
    """items: (owner, weight, rate per ms, service ms, scalar or array) at one server. The expected wait
    of each owner's work there (same shape as the service), and rho."""
    rho = sum(r * s for _, _, r, s in items)
    w0 = sum(r * s * s / 2.0 for _, _, r, s in items)
    out: dict[int, Any] = {}
    for owner, w, r_own, s_own in items:
        own = r_own * s_own
        if by_priority:
            above = sum(r * s for _, ww, r, s in items if ww > w)
            at = sum(r * s for _, ww, r, s in items if ww >= w)
        else:
            above, at = 0.0, rho
        denom = (1.0 - above) * (1.0 - at)
        ok = np.logical_and(np.asarray(above) < 1.0, np.asarray(at) < 1.0)
        # past capacity the penalty grows with the owner's own load there, not with the load of the work
        # served before it: work of a higher weight on a server that is full for a lower one does not make
        # the lower one's figure worse (it is unbounded either way), so the search keeps that work fast
        out[owner] = np.where(ok, w0 / np.where(ok, denom, 1.0), _OVER * (1.0 + np.asarray(own)))
    return out, rho


def _evaluate(costs: StageCosts, srcs: list, alloc: dict[int, tuple[Any, str]], by_priority: bool,
              weighted: bool):
    """Objective and each placed source's (local, remote, transfer, wait) for the allocation `alloc`:
    source index -> (cut: int or an array of cuts, helper). Arrays broadcast."""
    n = costs.n
    servers: dict[str, list] = {}
    paths: dict[int, list[tuple[str, Any]]] = {}
    parts: dict[int, tuple[Any, Any, Any]] = {}
    for i, (k, h) in alloc.items():
        s = srcs[i]
        lam = s.rate_hz / 1000.0
        k = np.asarray(k)
        local = costs.head_ms(s.device, k)
        remote = np.where(k < n, costs.tail_ms(h, k), 0.0)
        away = k < n
        send = np.where(away, costs.send_ms(s.device, h, costs.cut_bytes[k]), 0.0)
        back = np.where(away, costs.send_ms(h, s.device, costs.out_bytes), 0.0)
        lat = np.where(away, costs.latency_ms(s.device, h) + costs.latency_ms(h, s.device), 0.0)
        path = [(s.device, local), (f"{s.device}->{h}", send), (h, remote), (f"{h}->{s.device}", back)]
        if h == s.device:
            path = [(s.device, local)]
        for server, svc in path:
            servers.setdefault(server, []).append((i, s.priority, lam, svc))
        paths[i] = path
        parts[i] = (local, remote, send + back + lat)
    wait: dict[int, Any] = {i: 0.0 for i in alloc}
    util: dict[str, Any] = {}
    for server, items in servers.items():
        # one source's several visits to one server (its own device as helper) count as one class each
        ws, rho = _waits([(j, w, r, s) for j, (_, w, r, s) in enumerate(items)], by_priority)
        util[server] = rho
        for j, (i, _, _, svc) in enumerate(items):
            busy = np.asarray(svc) > 0
            wait[i] = wait[i] + np.where(busy, ws[j], 0.0)
    # priority: each source counts its weight, whatever its rate. blind: each request counts the same, so a
    # source of 60 frames/s weighs ten times one of 6/s (weights of 1 per source instead would give the
    # rarer source's requests more weight each: a priority the baseline must not have). Both are means
    # (ms), plus the penalties of sources past capacity (each >= _OVER, weighted by priority alone, so the
    # search keeps the urgent source's path short when the cluster cannot carry every source)
    per = {i: (srcs[i].priority if weighted else srcs[i].rate_hz) for i in alloc}
    norm = sum(per.values()) or 1.0
    total = 0.0
    figures = {}
    for i in alloc:
        local, remote, trans = parts[i]
        t = local + remote + trans + wait[i]
        figures[i] = (local, remote, trans, wait[i], t)
        over = np.asarray(t) >= _OVER
        total = total + np.where(over, (srcs[i].priority if weighted else 1.0) * t, per[i] / norm * t)
    return total, figures, util


def _better(a: float, b: float) -> bool:
    """a is better than b by more than float noise (b may be inf)."""
    return a < b if b == float("inf") else a < b - 1e-9 * max(1.0, abs(b))


def allocate(graph: Graph, cluster: Cluster, sources: Sources, mode: str = "priority", *,
             alternatives: int = 3, rounds: int = 4, costs: StageCosts | None = None,
             min_cut: int = 0) -> Allocation:
    """Each source's cut and helpers for `mode` (priority, blind or local), with expected latencies.
    `min_cut`: the fewest nodes a source's own device runs (1 for a plan: packager/lanes.py)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    costs = costs or StageCosts(graph, cluster)
    srcs = list(sources)
    n = costs.n
    by_priority = weighted = mode == "priority"
    alloc: dict[int, tuple[Any, str]] = {}
    if mode == "local":
        alloc = {i: (n, s.device) for i, s in enumerate(srcs)}
    else:
        order = sorted(range(len(srcs)), key=lambda i: -srcs[i].priority) if weighted else list(range(len(srcs)))
        cuts = costs.cuts

        def best_for(i: int) -> tuple[float, int, str]:
            best = (float("inf"), n, srcs[i].device)
            for h in costs.devices:
                if h == srcs[i].device:
                    ks = np.array([n])
                else:
                    ks = cuts[(cuts < n) & (cuts >= min_cut)]
                    if not len(ks):
                        continue
                trial = dict(alloc)
                trial[i] = (ks, h)
                obj, _, _ = _evaluate(costs, srcs, trial, by_priority, weighted)
                obj = np.broadcast_to(np.asarray(obj, dtype=np.float64), ks.shape)
                j = int(np.argmin(obj))
                if _better(float(obj[j]), best[0]):
                    best = (float(obj[j]), int(ks[j]), h)
            return best

        for i in order:
            _, k, h = best_for(i)
            alloc[i] = (k, h)
        for _ in range(rounds):
            changed = False
            for i in order:
                cur, _, _ = _evaluate(costs, srcs, alloc, by_priority, weighted)
                obj, k, h = best_for(i)
                if _better(obj, float(cur)) and (k, h) != alloc[i]:
                    alloc[i] = (k, h)
                    changed = True
            if not changed:
                break
    obj, figures, util = _evaluate(costs, srcs, alloc, by_priority, weighted)
    placements = []
    for i, s in enumerate(srcs):
        k, h = alloc[i]
        k = int(k)
        helpers: tuple[str, ...] = ()
        if k < n:
            ranked = []
            for d in costs.devices:
                if d == s.device:
                    continue
                trial = dict(alloc)
                trial[i] = (k, d)
                o, _, _ = _evaluate(costs, srcs, trial, by_priority, weighted)
                ranked.append((float(o), d != h, d))
            ranked.sort()
            helpers = tuple(d for _, _, d in ranked[:max(1, alternatives)])
        local, remote, trans, wait, t = (float(x) for x in figures[i])
        over = t >= _OVER
        placements.append(Placement(s.name, s.device, s.priority, s.rate_hz, k, helpers, local, remote, trans,
                                    float("inf") if over else wait, float("inf") if over else t))
    objective = float(obj)
    return Allocation(mode, tuple(placements), float("inf") if objective >= _OVER else objective,
                      tuple(sorted(((k, float(v)) for k, v in util.items()), key=lambda kv: -kv[1])), n)


def allocate_all(graph: Graph, cluster: Cluster, sources: Sources, **kw) -> dict[str, Allocation]:
    """The three modes side by side, from one set of cost figures."""
    costs = kw.pop("costs", None) or StageCosts(graph, cluster)
    return {m: allocate(graph, cluster, sources, m, costs=costs, **kw) for m in MODES}


__all__ = ["MODES", "Allocation", "Placement", "StageCosts", "allocate", "allocate_all"]

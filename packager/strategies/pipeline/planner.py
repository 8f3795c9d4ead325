"""The layer-wise pipeline planner ("model-distributed inference"): pure and optimal.

Every device gets one contiguous run of nodes (in topological order); the planner chooses the cut
positions and which device runs which stage. Objective `latency` minimises one request's time end
to end (all stage times + all transfer times); `throughput` minimises the slowest pipeline stage or
link (the steady-state period of a pipelined stream). Both count the fixed costs (cost.py,
`pipeline_ms`; docs/planning.md, "Fixed costs"): each stage's step on its device; for latency each
cut's message and the caller's two; for throughput each message on the device at both its ends (the
caller's on the first and the last stage's); for both, where devices give handling_mbps, the bytes
of every message at both its ends. Every stage must fit its device's memory.

Dynamic programming over (devices used so far, last device, cut position): with N devices and n
nodes that is O(2^N * N^2 * n^2) vectorised work; exact for the cost model in `cost.py` where every
link between devices has the same message_ms (`links.default`, as calibrate.py gives them). Under
throughput a stage's messages are counted before its neighbours are known, so where pair links give
different figures the planner counts the dearest of the device's links (the plan's own figure,
`evaluate`, counts its actual neighbours').

The DP holds the best plan over every subset of the devices, so with `leave_out=True` the planner
also considers using fewer devices: a device is left out (no stage) when every plan that uses it is
strictly worse for the objective, and the plan says so with both figures (docs/planning.md, "Fewer
devices").
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from edgepart.errors import PlanningError

from edgepart.packager.cluster import Cluster
from edgepart.packager.cost import CostModel, busy_ms, caller_link, message_ms, pipeline_ms, step_ms
from edgepart.packager.model.graph import Graph

OBJECTIVES = ("latency", "throughput")
MAX_DEVICES = 10  # the DP is exponential in devices; past this, plan in groups


@dataclass(frozen=True)
class Stage:
    device: str
    start: int
    stop: int
    flops: float
    param_bytes: float
    memory_bytes: float
    compute_ms: float
    send_bytes: int  # what crosses the cut after this stage (0 for the last)
    send_ms: float  # bytes / bandwidth + link latency
    link_busy_ms: float = 0.0  # bytes / bandwidth: what bounds a pipelined stream


@dataclass(frozen=True)
class LeftOut:
    """A device the plan does not use, and why: the best objective (with the fixed costs) of a plan
    that uses it beside the plan's devices (`with_ms`; inf when none fits) against the plan's own
    (`without_ms`)."""

    device: str
    with_ms: float
    without_ms: float

    def why(self, objective: str) -> str:
        what = "latency" if objective == "latency" else "period"
        if not np.isfinite(self.with_ms):
            return f"left out {self.device}: no plan that uses it fits; without it, {what} {self.without_ms:.3f} ms"
        return f"left out {self.device}: with it, {what} {self.with_ms:.3f} ms; without, {self.without_ms:.3f} ms"


@dataclass(frozen=True)
class PipelinePlan:
    objective: str
    stages: tuple[Stage, ...]
    latency_ms: float
    period_ms: float  # slowest stage or link (bytes / bandwidth): one result every period_ms when pipelined
    left_out: tuple[LeftOut, ...] = ()  # devices of the cluster without a stage (plan_pipeline(leave_out=True))
    # the same with the fixed costs (cost.py's pipeline_ms): what the planner minimises
    latency_with_fixed_ms: float = 0.0
    period_with_fixed_ms: float = 0.0

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.stages)

    @property
    def throughput_per_s(self) -> float:
        return 1e3 / self.period_ms if self.period_ms > 0 else float("inf")

    @property
    def cuts(self) -> tuple[int, ...]:
        return tuple(s.stop for s in self.stages[:-1])

    def score(self) -> float:
        """What the planner minimised: the objective's figure with the fixed costs."""
        return self.latency_with_fixed_ms if self.objective == "latency" else self.period_with_fixed_ms


def evaluate(cost: CostModel, cuts: tuple[int, ...], devices: tuple[str, ...], objective: str = "latency") -> PipelinePlan:
    """The plan with these cuts and this device order, with its cost (no feasibility check)."""
    n = cost.graph.n
    bounds = (0, *cuts, n)
    stages = []
    for i, dev in enumerate(devices):
        a, b = bounds[i], bounds[i + 1]
        last = i == len(devices) - 1
        send_ms = 0.0 if last else cost.transfer_ms(b, dev, devices[i + 1])
        busy_ms = 0.0 if last else cost.transfer_ms(b, dev, devices[i + 1], with_latency=False)
        consts = {c for nd in cost.graph.nodes[a:b] for c in nd.constants}
        stages.append(Stage(
            device=dev, start=a, stop=b,
            flops=float(cost.prefix_flops[b] - cost.prefix_flops[a]),
            param_bytes=float(sum(cost.graph.constant_bytes[c] for c in consts)),
            memory_bytes=cost.stage_memory_bytes(a, b),
            compute_ms=cost.compute_ms(dev, a, b),
            send_bytes=0 if last else int(cost.graph.live_bytes[b]),
            send_ms=send_ms,
            link_busy_ms=busy_ms,
        ))
    latency = sum(s.compute_ms + s.send_ms for s in stages)
    period = max(max(s.compute_ms for s in stages), max(s.link_busy_ms for s in stages))
    fixed_latency, fixed_period = pipeline_ms(cost.cluster, stages, *cost.io_bytes)
    return PipelinePlan(objective, tuple(stages), latency, period, (), fixed_latency, fixed_period)


# a plan on fewer devices replaces the plan on all of them only when strictly better by this much
# (relative), so float noise never drops a device (docs/planning.md, "Fewer devices")
STRICTLY_BETTER = 1e-9


def plan_pipeline(graph: Graph, cluster: Cluster, objective: str = "latency", *, leave_out: bool = False) -> PipelinePlan:
    """The optimal pipeline over all of `cluster`'s devices, or a PlanningError saying why none fits.

    With `leave_out`, the optimal pipeline over any subset of them: a subset replaces the whole
    cluster only when its objective is strictly better (or the whole cluster cannot hold the model),
    and the plan's `left_out` names every device it does not use with the best objective of a plan
    that uses it."""
    if objective not in OBJECTIVES:
        raise PlanningError(f"Unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}.")
    names = tuple(d.name for d in cluster.devices)
    N, n = len(names), graph.n
    if N > MAX_DEVICES:
        raise PlanningError(f"The pipeline planner handles up to {MAX_DEVICES} devices; the cluster has {N}.")
    if N > n and not leave_out:  # (with leave_out, the devices past the model's nodes are left out)
        raise PlanningError(
            f"The cluster has {N} devices but the model has only {n} compute node(s){_few_nodes(graph)}, so at "
            f"most {n} stage(s) and {n - 1} useful cut point(s): every device must get at least one node. "
            f"Use at most {n} devices in cluster.yaml."
        )
    cost = CostModel(graph, cluster)
    blocked = blocked_cuts(graph)
    if blocked and n - 1 - len(blocked) < N - 1 and not leave_out:
        raise PlanningError(_why_too_few_cuts(graph, N, blocked))
    no_cut = np.zeros(n + 1, dtype=bool)
    no_cut[list(blocked)] = True
    comp = {d: cost.compute_prefix_ms(d) for d in names}
    hi = {d: cost.max_stop(d) for d in names}
    a_idx = np.arange(n + 1)[:, None]
    b_idx = np.arange(n + 1)[None, :]
    feasible = {}
    for d in names:
        h = np.concatenate([hi[d], [n]])  # a row for a == n (never used as a start)
        feasible[d] = (b_idx > a_idx) & (b_idx <= h[:, None])
    # [a, b]: compute of nodes[a:b], its step's fixed cost and its messages' bytes at the device's
    # handling_mbps (both objectives: on the latency's path, and the device's CPU streamed);
    # streamed, also the messages it takes in and sends on (the caller's at the ends: node 0 in,
    # node n out)
    step = {d: step_ms(cluster.device(d)) for d in names}
    lat = objective == "latency"
    msg = {d: np.zeros((n + 1, n + 1)) if lat else _stage_messages_ms(cluster, d, names, n) for d in names}
    comp_mat = {d: comp[d][None, :] - comp[d][:, None] + step[d] + msg[d] + cost.handling_matrix_ms(d) for d in names}
    if not lat and cluster.caller in comp_mat:  # streamed, the app's own CPU shares its device's time
        comp_mat[cluster.caller] = comp_mat[cluster.caller] + cluster.caller_ms
    io = 2 * message_ms(cluster.default_link) if lat else 0.0  # the caller's inputs in, outputs back
    if cluster.caller is not None:  # the app on a device: what its inputs and outputs cost depends on
        # which devices take them (docs/planning.md, "Where the app runs"), so the stages say it
        for d in names:
            _with_caller(cost, d, comp_mat[d], lat)
        io = 0.0

    # ties (equal figures: a stream bound by one stage's compute, whoever takes the app's inputs) go
    # to the plan that starts on the app's device (`caller`), whose inputs then cross no link: it is
    # tried first as a previous stage and last as the last one; without `caller`, cluster.yaml order
    prev_order = sorted(enumerate(names), key=lambda x: x[1] != cluster.caller)
    last_order = sorted(names, key=lambda x: x == cluster.caller)
    # f[(S, d)] -> (cost vector over b, argmin a over b, argmin previous device over a)
    f: dict[tuple[frozenset, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    inf = np.inf
    for d in names:
        v = np.full(n + 1, inf)
        ok = feasible[d][0]
        v[ok] = comp_mat[d][0][ok]
        f[(frozenset([d]), d)] = (v, np.zeros(n + 1, dtype=np.int64), np.full(n + 1, -1))
    for size in range(2, N + 1):
        for S in itertools.combinations(names, size):
            S = frozenset(S)
            for d in S:
                rest = S - {d}
                g = np.full(n + 1, inf)
                gprev = np.full(n + 1, -1)
                for pi, d0 in prev_order:
                    if d0 not in rest:
                        continue
                    prev = f[(rest, d0)][0]
                    t = np.where(no_cut, inf, cost.transfer_vector_ms(d0, d, with_latency=lat)
                                 + (message_ms(cluster.link(d0, d)) if lat else 0.0))
                    cand = prev + t if lat else np.maximum(prev, t)
                    better = cand < g
                    g[better] = cand[better]
                    gprev[better] = pi
                m = g[:, None] + comp_mat[d] if lat else np.maximum(g[:, None], comp_mat[d])
                m = np.where(feasible[d], m, inf)
                arg = np.argmin(m, axis=0)
                f[(S, d)] = (m[arg, np.arange(n + 1)], arg, gprev)

    full = frozenset(names)
    best_S, best_d, best = full, None, inf
    for d in last_order:
        v = f[(full, d)][0][n] + io
        if v < best:
            best_d, best = d, v
    if leave_out:
        for (S, d), (v, _, _) in f.items():  # fewer devices: only when strictly better (ties keep more)
            if v[n] + io < best * (1 - STRICTLY_BETTER) - 1e-12 or (not np.isfinite(best) and np.isfinite(v[n])):
                best_S, best_d, best = S, d, v[n] + io
    if best_d is None or not np.isfinite(best):
        raise PlanningError(_why_infeasible(graph, cluster, cost))

    # backtrack
    order, cuts = [], []
    S, d, b = best_S, best_d, n
    while True:
        _, arg, gprev = f[(S, d)]
        order.append(d)
        a = int(arg[b])
        if len(S) == 1:
            break
        cuts.append(a)
        prev = names[int(gprev[a])]
        S, d, b = S - {d}, prev, a
    order.reverse()
    cuts.reverse()
    pp = evaluate(cost, tuple(cuts), tuple(order), objective)
    if best_S == full:
        return pp
    out = []
    for x in names:
        if x in best_S:
            continue
        # the best plan that uses it beside the devices the plan uses
        with_x = min((float(v[n] + io) for (S, _), (v, _, _) in f.items() if best_S | {x} <= S), default=inf)
        out.append(LeftOut(x, with_x, float(pp.score())))
    return dataclasses.replace(pp, left_out=tuple(out))


def _caller_ms(cost: CostModel, d: str) -> tuple[float, float, float, float]:
    """Where the app runs on a device (`caller`): its inputs to `d` and `d`'s outputs back to it, as
    (in transfer, out transfer, in busy, out busy) in ms: bytes over caller_link, with its latency
    for the transfers (nothing where `d` is the app's device)."""
    link = caller_link(cost.cluster, d)
    ins, outs = cost.io_bytes
    bi, bo = float(busy_ms(ins, link)), float(busy_ms(outs, link))
    return bi + link.latency_ms, bo + link.latency_ms, bi, bo


def _with_caller(cost: CostModel, d: str, mat: np.ndarray, lat: bool) -> None:
    """Add to `d`'s stage matrix (in place) what the app on a device costs a stage of nodes[0:b]
    (its inputs in) and of nodes[a:n] (its outputs back): under latency their messages and
    transfers, on the path; under throughput their link's busy time, which bounds a stream
    (cost.pipeline_ms counts the same)."""
    t_in, t_out, b_in, b_out = _caller_ms(cost, d)
    if lat:
        m = message_ms(caller_link(cost.cluster, d))
        mat[0, :] += m + t_in
        mat[:, -1] += m + t_out
    else:
        mat[0, :] = np.maximum(mat[0, :], b_in)
        mat[:, -1] = np.maximum(mat[:, -1], b_out)


def _stage_messages_ms(cluster: Cluster, d: str, names, n: int) -> np.ndarray:
    """[a, b]: the message CPU of a stage of nodes[a:b] on `d`, streamed (cost.message_cpu_ms): the
    caller's inputs when a == 0, else the dearest message from another device; the caller's outputs
    when b == n, else the dearest message to another device."""
    others = [e for e in names if e != d]
    io = message_ms(caller_link(cluster, d))
    into = max((message_ms(cluster.link(e, d)) for e in others), default=io)
    out = max((message_ms(cluster.link(d, e)) for e in others), default=io)
    m_in = np.full(n + 1, into)
    m_in[0] = io
    m_out = np.full(n + 1, out)
    m_out[n] = io
    return m_in[:, None] + m_out[None, :]


def exhaustive(graph: Graph, cluster: Cluster, objective: str = "latency") -> float:
    """The best objective, with the fixed costs, over every cut combination and device order (for
    tests; slow)."""
    cost = CostModel(graph, cluster)
    names = tuple(d.name for d in cluster.devices)
    n, N = graph.n, len(names)
    blocked = blocked_cuts(graph)
    hi = {d: cost.max_stop(d) for d in names}
    comp = {d: cost.compute_prefix_ms(d) for d in names}
    step = {d: step_ms(cluster.device(d)) for d in names}
    hand = {d: cost.handling_matrix_ms(d) for d in names}
    best = np.inf
    for perm in itertools.permutations(names):
        tv = [cost.transfer_vector_ms(perm[i], perm[i + 1], with_latency=objective == "latency") for i in range(N - 1)]
        for cuts in itertools.combinations(range(1, n), N - 1):
            if set(cuts) & blocked.keys():
                continue
            bounds = (0, *cuts, n)
            if any(bounds[i + 1] > hi[d][bounds[i]] for i, d in enumerate(perm)):
                continue
            cs = [comp[d][bounds[i + 1]] - comp[d][bounds[i]] + step[d] + hand[d][bounds[i], bounds[i + 1]]
                  for i, d in enumerate(perm)]
            ms = [message_ms(cluster.link(perm[i], perm[i + 1])) for i in range(N - 1)]
            ends = [message_ms(caller_link(cluster, perm[0])), *ms, message_ms(caller_link(cluster, perm[-1]))]
            # the app on a device: its inputs' and outputs' transfers (latency) or busy links (throughput)
            t_in, _, b_in, _ = _caller_ms(cost, perm[0]) if cluster.caller else (0.0,) * 4
            _, t_out, _, b_out = _caller_ms(cost, perm[-1]) if cluster.caller else (0.0,) * 4
            if objective == "latency":
                v = sum(cs) + sum(tv[i][cuts[i]] + ms[i] for i in range(N - 1)) + ends[0] + ends[-1] + t_in + t_out
            else:  # each message on the device at both its ends
                v = max([c + ends[i] + ends[i + 1] + (cluster.caller_ms if perm[i] == cluster.caller else 0.0)
                         for i, c in enumerate(cs)] + [tv[i][cuts[i]] for i in range(N - 1)] + [b_in, b_out])
            best = min(best, v)
    return float(best)


def blocked_cuts(graph: Graph) -> dict[int, str]:
    """Cut -> an activation that would cross it and cannot travel between devices (a sequence, a
    tensor of unknown type or rank, strings): the planner cuts elsewhere (docs/planning.md)."""
    from edgepart.packager.model.submodel import unsendable

    out: dict[int, str] = {}
    for t, p in graph.producer.items():
        lu = graph.last_use.get(t, -1)
        if p >= 0 and lu > p and unsendable(graph, t):
            for c in range(p + 1, lu + 1):
                out.setdefault(c, t)
    return out


def _few_nodes(graph: Graph) -> str:
    """The nodes of a small model by name, and why one holding subgraphs is not cut further."""
    if graph.n > 6:
        return ""
    names = ", ".join(f"{nd.op_type} {nd.name!r}" for nd in graph.nodes)
    control = [nd for nd in graph.nodes if nd.op_type in ("If", "Loop", "Scan")]
    why = "".join(f"; {nd.op_type} {nd.name!r} runs its subgraphs whole on one device, edgepart does not cut inside them"
                  for nd in control)
    return f" ({names}{why})"


def _why_too_few_cuts(graph: Graph, n_devices: int, blocked: dict[int, str]) -> str:
    from edgepart.packager.model.submodel import unsendable

    free = graph.n - 1 - len(blocked)
    seen = list(dict.fromkeys(blocked.values()))
    parts = []
    for t in seen[:3]:
        nd = graph.nodes[graph.producer[t]]
        parts.append(f"{t!r} (made by node {nd.name!r}, {nd.op_type}): {unsendable(graph, t)}")
    return (f"The model cannot be cut into {n_devices} stages: only {free} of its {graph.n - 1} cut points "
            f"can be used, since every other one would send a value that cannot travel between devices: "
            f"{'; '.join(parts)}. Use at most {free + 1} devices, or export the model so that these values "
            f"are tensors (or stay inside one stage).")


def _why_infeasible(graph: Graph, cluster: Cluster, cost: CostModel) -> str:
    mb = 1024 * 1024
    biggest = max(cluster.devices, key=lambda d: d.memory_bytes)
    for i, nd in enumerate(graph.nodes):
        need = cost.stage_memory_bytes(i, i + 1)
        if need > biggest.memory_bytes:
            return (
                f"The cluster cannot hold the model: node {nd.name!r} ({nd.op_type}) alone needs "
                f"{need / mb:.1f} MB, but the largest device, {biggest.name}, has {biggest.memory_mb:g} MB "
                f"({(need - biggest.memory_bytes) / mb:.1f} MB missing). Give {biggest.name} more memory_mb, "
                f"or add a larger device."
            )
    total = cost.stage_memory_bytes(0, graph.n)
    have = sum(d.memory_bytes for d in cluster.devices)
    if total > have:
        return (
            f"The cluster cannot hold the model: it needs about {total / mb:.1f} MB in all, the devices "
            f"have {have / mb:.1f} MB together ({(total - have) / mb:.1f} MB missing). Add a device or "
            f"raise memory_mb in cluster.yaml."
        )
    smallest = min(cluster.devices, key=lambda d: d.memory_bytes)
    return (
        f"The cluster cannot hold the model as contiguous stages: the devices have {have / mb:.1f} MB "
        f"together for {total / mb:.1f} MB of model, but no way of cutting it into {len(cluster.devices)} "
        f"runs of layers gives every device a run that fits (the smallest, {smallest.name}, has "
        f"{smallest.memory_mb:g} MB, and every device must hold at least one stage). Raise memory_mb, "
        f"or drop the smallest device from cluster.yaml."
    )

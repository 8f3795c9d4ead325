"""The cost model, in one place: how long a stage computes, how long a cut takes to cross, and
how much memory a stage needs.

    stage time    = 2 * MACs(stage) / device GFLOP/s
    transfer time = bytes crossing the cut * 8 / link Mbit/s + link latency
    link busy     = bytes crossing the cut * 8 / link Mbit/s   (what limits a pipelined stream:
                    latency overlaps with the next requests, bandwidth does not)
    stage memory  = bytes of the parameters it holds + the largest working set of one of its nodes
    fixed costs   = steps * step_ms(device) + messages * message_ms(link)   (docs/planning.md,
                    "Fixed costs"): what an agent spends running one step and handling one message,
                    whatever their size; measured by packager/calibrate.py, or nominal. Streamed,
                    a message costs the device at each of its ends (message_cpu_ms)
    handling      = a message's bytes * 8 / handling_mbps, at each end that is a device (the
                    agent's framing, cipher and copies; counted only where cluster.yaml gives
                    handling_mbps: handling_cpu_ms)

A device with a measured profile (`profile:` in cluster.yaml, docs/profile.md) computes each node at
its operator kind's measured speed (conv, depthwise, pointwise, matmul, other) instead of one GFLOP/s
for all, in the pipeline planner's prefix sums; the other strategies use the profile's overall
figure. Planners only ever ask it these questions. The formulas
are the functions below; CostModel applies them to a graph's cuts for the pipeline planner, and
`critical_path_ms` to any strategy's compiled steps and routes.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Mapping, Sequence

import numpy as np

from edgepart.plan import CALLER

from edgepart.packager.cluster import Cluster, Device, Link
from edgepart.packager.model.graph import Graph

# Nominal fixed costs (docs/planning.md, "Fixed costs"), for a device or link that gives none: one
# step run by an agent (onnxruntime's call and the executor's bookkeeping) and one message between
# agents beyond bytes / bandwidth + latency (the header, the sockets, the receiving thread).
# packager/calibrate.py measures 0.005-0.01 ms per one-op step and 0.2-0.3 ms per message on a
# desktop core; a real step of many nodes costs more than a one-op one, a slower device more again.
STEP_MS = 0.15
MESSAGE_MS = 0.3


def compute_ms(flops, gflops: float):
    """Time to compute `flops` (a number or an array) on a device of `gflops` GFLOP/s, in ms."""
    return flops / (gflops * 1e9) * 1e3


def busy_ms(nbytes, link: Link):
    """How long `nbytes` (a number or an array) keep `link` busy, in ms, without its latency."""
    return nbytes * 8 / (link.bandwidth_mbps * 1e6) * 1e3


def step_ms(device: Device) -> float:
    """The fixed cost of one step on `device`, in ms: its measured figure, else the nominal one."""
    return STEP_MS if device.step_ms is None else float(device.step_ms)


def message_ms(link: Link) -> float:
    """The fixed cost of one message on `link`, in ms, beyond its bytes and latency: its measured
    figure, else the nominal one."""
    return MESSAGE_MS if link.message_ms is None else float(link.message_ms)


def handling_ms(device: Device, nbytes):
    """CPU time the agent on `device` spends on `nbytes` (a number or an array) of messages it
    receives or sends, in ms, by its measured `handling_mbps`; 0 where it gives none."""
    if device.handling_mbps is None:
        return nbytes * 0.0
    return nbytes * 8 / (device.handling_mbps * 1e6) * 1e3


def fixed_ms(cluster: Cluster, steps: Mapping[str, int] | None = None,
             messages: Mapping[tuple[str, str], int] | None = None) -> float:
    """The fixed costs of `steps` (device -> how many) and `messages` ((src, dst) -> how many; the
    caller is CALLER, on the default link), added up: one request's where nothing overlaps."""
    t = sum(n * step_ms(cluster.device(d)) for d, n in (steps or {}).items())
    return float(t + sum(n * message_ms(_link(cluster, s, d)) for (s, d), n in (messages or {}).items()))


def chain_fixed_ms(cluster: Cluster, devices: Sequence[str]) -> float:
    """The fixed costs of one request through a chain of one step per device (a pipeline, one
    device): every step, the message between each two, the caller's inputs in and outputs back."""
    msgs = Counter(zip((CALLER, *devices), (*devices, CALLER)))
    return fixed_ms(cluster, Counter(devices), msgs)


def caller_link(cluster: Cluster, device: str) -> Link:
    """The link between the app and `device` (docs/planning.md, "Where the app runs"): the default
    link where the app has a host of its own (no `caller` in cluster.yaml); where it runs on
    `device`'s host, its local socket: no bytes on any wire (an unbounded link without latency), a
    message still costs its message_ms; else the link between the app's device and `device`."""
    if cluster.caller is None:
        return cluster.default_link
    if cluster.caller == device:
        return Link(math.inf, 0.0, cluster.default_link.message_ms)
    return cluster.link(cluster.caller, device)


def host(cluster: Cluster, who: str) -> str:
    """Whose network interface `who` (a device, or CALLER) sends and receives on: the app's is its
    device's where cluster.yaml gives `caller`."""
    return cluster.caller if who == CALLER and cluster.caller is not None else who


def _link(cluster: Cluster, src: str, dst: str) -> Link:
    if CALLER in (src, dst):
        return caller_link(cluster, dst if src == CALLER else src)
    return cluster.link(src, dst)


def message_cpu_ms(cluster: Cluster, messages: Mapping[tuple[str, str], int]) -> dict[str, float]:
    """Streamed, what one request's `messages` ((src, dst) -> how many; the caller is CALLER, on the
    default link) cost each device's CPU: a message costs its link's message_ms on the device at
    each end, the sender's framing and sending and the receiver's taking in and decoding (the
    caller's own end is not a device's). What a stream's period counts (docs/planning.md, "Fixed
    costs"); one request's latency counts each message once, on its way."""
    out: dict[str, float] = {}
    for (src, dst), n in messages.items():
        if src == dst or not n:
            continue
        ms = n * message_ms(_link(cluster, src, dst))
        for end in (src, dst):
            if end != CALLER:
                out[end] = out.get(end, 0.0) + ms
    return out


def handling_cpu_ms(cluster: Cluster, flows) -> dict[str, float]:
    """What the bytes of one request's `flows` ((src, dst, bytes, messages) each; the caller is
    CALLER) cost each device's CPU at its handling_mbps (handling_ms): the sender frames and sends
    them, the receiver takes them in and decodes them; the caller's own end is not a device's
    (docs/planning.md, "Fixed costs")."""
    out: dict[str, float] = {}
    for src, dst, nbytes, _ in flows:
        if src == dst:
            continue
        for end in (src, dst):
            if end != CALLER:
                out[end] = out.get(end, 0.0) + float(handling_ms(cluster.device(end), nbytes))
    return out


def pipeline_ms(cluster: Cluster, stages, in_bytes: int = 0, out_bytes: int = 0) -> tuple[float, float]:
    """(latency, period) of a pipeline's stages (each with `device`, `compute_ms`, `send_ms`,
    `send_bytes` and `link_busy_ms`, in order) with the fixed costs (docs/planning.md, "Fixed
    costs"): every step and message of one request on its latency; for the period (the slowest
    device or link), each stage's step and the messages it takes in and sends on, on its device
    (cost.message_cpu_ms), and each cut's bytes on its link. Where devices give handling_mbps, the
    bytes of every message (the model's `in_bytes` from the caller, each cut, its `out_bytes` back)
    cost the CPU at both ends too (handling_cpu_ms), on the latency and on each device's period. The
    app's own CPU per request on its device (cluster.caller_ms) is on that device's period."""
    devices = [s.device for s in stages]
    hops = list(zip((CALLER, *devices), (*devices, CALLER)))
    sizes = [in_bytes, *(s.send_bytes for s in stages[:-1]), out_bytes]
    handling = handling_cpu_ms(cluster, [(a, b, n, 1) for (a, b), n in zip(hops, sizes)])
    latency = sum(s.compute_ms + s.send_ms for s in stages) + chain_fixed_ms(cluster, devices) + sum(handling.values())
    cpu = message_cpu_ms(cluster, Counter(hops))
    busy = [s.compute_ms + step_ms(cluster.device(s.device)) + cpu.get(s.device, 0.0) + handling.get(s.device, 0.0)
            + (cluster.caller_ms if s.device == cluster.caller else 0.0) for s in stages]
    if cluster.caller is not None and stages:  # the app on a device: the links to it carry the inputs
        # and outputs (else the app's own link, the same for every plan: caller_period_ms); its own
        # CPU per request (caller_ms) shares its device's with the stage there, or bounds it alone
        busy += [float(busy_ms(in_bytes, caller_link(cluster, devices[0]))),
                 float(busy_ms(out_bytes, caller_link(cluster, devices[-1]))), cluster.caller_ms]
    busy += [s.link_busy_ms for s in stages[:-1]]
    return float(latency), float(max(busy, default=0.0))


def fork_join_fixed_ms(cluster: Cluster, head: str, branches: Sequence[str], tail: Sequence[str]) -> float:
    """The fixed costs of one request that enters at `head` (one step there), forks to one step on
    each of `branches` (a message there from `head` and one on to `tail[0]` where the devices
    differ; the branches run at once), then runs one step on each device of `tail` in turn and
    goes back to the caller: a spatial split (docs/spatial.md), on the latency's critical path."""
    join = tail[0] if tail else head
    fork = max((step_ms(cluster.device(b)) + (message_ms(cluster.link(head, b)) if b != head else 0.0)
                + (message_ms(cluster.link(b, join)) if b != join else 0.0) for b in branches), default=0.0)
    chain = fixed_ms(cluster, Counter(tail), Counter(zip(tail, tail[1:])))
    io = message_ms(caller_link(cluster, head)) + message_ms(caller_link(cluster, tail[-1] if tail else head))
    return float(io + step_ms(cluster.device(head)) + fork + chain)


def io_bytes(graph: Graph) -> tuple[int, int]:
    """The model's inputs and outputs, in bytes: what the caller sends and gets back per request."""
    return (int(sum(graph.tensor_bytes.get(t.name, 0) for t in graph.inputs)),
            int(sum(graph.tensor_bytes.get(t.name, 0) for t in graph.outputs)))


def caller_io_ms(graph: Graph, cluster: Cluster, first: str | None = None, last: str | None = None) -> float:
    """The model's inputs sent from the caller to `first` and its outputs sent back from `last`:
    both transfers and their latencies (docs/planning.md, "Choosing the split"), on the default
    link, or where the app runs on a device (`caller`), on the links from and to it
    (caller_link; nothing on a wire where `first` or `last` is its device)."""
    ins, outs = io_bytes(graph)
    lin = cluster.default_link if first is None else caller_link(cluster, first)
    lout = cluster.default_link if last is None else caller_link(cluster, last)
    return float(busy_ms(ins, lin) + lin.latency_ms + busy_ms(outs, lout) + lout.latency_ms)


def caller_period_ms(graph: Graph, cluster: Cluster) -> float:
    """The shortest period the caller's own link allows when requests stream: every request's inputs
    go out on the default link and its outputs come back on it (full duplex: the larger direction),
    with a message's fixed cost (docs/planning.md, "Choosing the split"). No split sends fewer.
    0 where the app runs on a device (`caller`): then what its link carries depends on the split,
    and each strategy's own figures count it."""
    if cluster.caller is not None:
        return 0.0
    link = cluster.default_link
    return float(busy_ms(max(io_bytes(graph)), link) + message_ms(link))


def critical_path_ms(steps, routes, sizes: dict[str, int], cluster: Cluster, *, fixed: bool = False,
                     shared: bool = False) -> float:
    """One request's latency through compiled steps (each with `device`, `name`, `inputs`, `outputs`
    and `estimated_ms`): each step waits for its device's previous step and its inputs' arrival.
    With `fixed`, each step also costs its device's step_ms and each input from a peer or the caller
    its link's message_ms and its bytes' handling at both ends (docs/planning.md, "Fixed costs").
    With `shared`, every host (each device, and the caller) sends on one network interface and
    receives on one, a transfer at a time each way, and the outputs' trip back to the caller is
    counted (docs/planning.md, "One interface per host")."""
    from collections import defaultdict

    if shared:
        return _shared_critical_path_ms(steps, routes, sizes, cluster, fixed)

    made_by = {o.name: st for st in steps for o in st.outputs}
    src_of = {(r.tensor, r.dst): r.src for r in routes}
    finish: dict[str, float] = {}
    pending, dev_free = list(steps), defaultdict(float)
    while pending:
        st = next(s for s in pending if all(
            i.name not in made_by or made_by[i.name].name in finish for i in s.inputs))
        pending.remove(st)
        start = dev_free[st.device]
        for i in st.inputs:
            src = src_of.get((i.name, st.device))
            if i.name in made_by and made_by[i.name].device != st.device:
                peer = made_by[i.name].device
                link = cluster.link(peer, st.device)
                t = finish[made_by[i.name].name] + busy_ms(sizes[i.name], link) + link.latency_ms
                t += message_ms(link) + _ends_handling_ms(cluster, peer, st.device, sizes[i.name]) if fixed else 0.0
            elif src == CALLER:
                link = caller_link(cluster, st.device)
                t = busy_ms(sizes[i.name], link) + link.latency_ms
                t += message_ms(link) + _ends_handling_ms(cluster, CALLER, st.device, sizes[i.name]) if fixed else 0.0
            else:
                t = finish.get(made_by[i.name].name, 0.0) if i.name in made_by else 0.0
            start = max(start, t)
        finish[st.name] = start + st.estimated_ms + (step_ms(cluster.device(st.device)) if fixed else 0.0)
        dev_free[st.device] = finish[st.name]
    back = 0.0
    if fixed and any(r.dst == CALLER for r in routes):
        back = max(message_ms(_link(cluster, r.src, CALLER)) for r in routes if r.dst == CALLER) + max(
            _ends_handling_ms(cluster, r.src, CALLER, sizes.get(r.tensor, 0)) for r in routes if r.dst == CALLER)
    return round(max(finish.values(), default=0.0) + back, 6)


def _ends_handling_ms(cluster: Cluster, src: str, dst: str, nbytes) -> float:
    """One message's bytes at its ends' handling_mbps (handling_cpu_ms), on its way: the sender's
    framing and the receiver's decoding, one after the other."""
    return sum(handling_cpu_ms(cluster, [(src, dst, nbytes, 1)]).values())


def _shared_critical_path_ms(steps, routes, sizes: dict[str, int], cluster: Cluster, fixed: bool) -> float:
    """critical_path_ms with `shared`: a small event simulation. Transfers leave in the order they
    become ready, each as soon as its sender's interface and its receiver's are both free; a device
    runs, of the steps whose inputs have arrived, the first in the program's order."""
    import heapq
    from collections import defaultdict

    made_by = {o.name: st for st in steps for o in st.outputs}
    need: dict[tuple[str, str], str] = {(r.tensor, r.dst): r.src for r in routes}
    for st in steps:  # a peer's tensor that no route names comes from its producer's device
        for i in st.inputs:
            if i.name in made_by and made_by[i.name].device != st.device:
                need.setdefault((i.name, st.device), made_by[i.name].device)
    sends: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (t, dst), src in need.items():
        sends[(t, src)].append(dst)
    have: dict[tuple[str, str], float] = {}  # (tensor, host) -> when it is there
    heap: list[tuple[float, int, str, str, str]] = []
    seq = 0

    def there(t: str, host: str, at: float) -> None:
        nonlocal seq
        if (t, host) in have:
            return
        have[(t, host)] = at
        for dst in sends.get((t, host), ()):
            heapq.heappush(heap, (at, seq, t, host, dst))
            seq += 1

    for (t, src) in list(sends):
        if src == CALLER:
            there(t, CALLER, 0.0)
    pending: dict[str, list] = defaultdict(list)
    for st in steps:
        pending[st.device].append(st)
    dev_free: dict[str, float] = defaultdict(float)
    out_free: dict[str, float] = defaultdict(float)
    in_free: dict[str, float] = defaultdict(float)
    end = 0.0

    def ready_at(st) -> float | None:
        t = dev_free[st.device]
        for i in st.inputs:
            if (i.name, st.device) in have:
                t = max(t, have[(i.name, st.device)])
            elif i.name in made_by or (i.name, st.device) in need:
                return None  # not there yet
        return t

    while True:
        moved = True
        while moved:  # run every step that starts before the next transfer could deliver anything
            moved = False
            horizon = heap[0][0] if heap else math.inf
            for dev, queue in pending.items():
                starts = [(t, k) for k, st in enumerate(queue) if (t := ready_at(st)) is not None]
                if not starts or min(starts)[0] > horizon:
                    continue
                start, k = min(starts)
                st = queue.pop(k)
                finish = start + st.estimated_ms + (step_ms(cluster.device(dev)) if fixed else 0.0)
                dev_free[dev] = finish
                end = max(end, finish)
                for o in st.outputs:
                    there(o.name, dev, finish)
                moved = True
        if not heap:
            break
        ready, _, t, src, dst = heapq.heappop(heap)
        link = _link(cluster, src, dst)
        hs, hd = host(cluster, src), host(cluster, dst)
        if hs == hd:  # the app and its device's agent: the local socket, no interface
            sent = ready
        else:
            start = max(ready, out_free[hs], in_free[hd])
            sent = out_free[hs] = in_free[hd] = start + busy_ms(sizes.get(t, 0), link)
        arrive = sent + link.latency_ms
        arrive += message_ms(link) + _ends_handling_ms(cluster, src, dst, sizes.get(t, 0)) if fixed else 0.0
        end = max(end, arrive) if dst == CALLER else end
        there(t, dst, arrive)
    return round(end, 6)


def nic_period_ms(cluster: Cluster, flows) -> float:
    """Streamed, the busiest network interface: every host (each device, and the caller: its device's
    where cluster.yaml gives `caller`) sends all of its `flows` ((src, dst, bytes, messages) per
    request) on one interface and receives on another (full duplex), at the link's rate
    (docs/planning.md, "One interface per host"). A message's fixed
    cost is its ends' CPU (message_cpu_ms), not the interface's."""
    from collections import defaultdict

    out: dict[str, float] = defaultdict(float)
    inn: dict[str, float] = defaultdict(float)
    for src, dst, nbytes, _ in flows:
        hs, hd = host(cluster, src), host(cluster, dst)
        if hs == hd:  # one host (the app on its device: the local socket)
            continue
        t = float(busy_ms(nbytes, _link(cluster, src, dst)))
        out[hs] += t
        inn[hd] += t
    return max([*out.values(), *inn.values()], default=0.0)


def streamed_fixed_period_ms(cluster: Cluster, compute: Mapping[str, float], steps: Mapping[str, int], flows) -> float:
    """Streamed, with the fixed costs: the busiest device (its `compute` ms per request, its
    `steps`, and the messages of `flows` at its ends: message_cpu_ms and handling_cpu_ms) or host interface (the bytes
    of `flows`, (src, dst, bytes, messages) per request: nic_period_ms); the channel and spatial
    splits' throughput (docs/planning.md, "Fixed costs")."""
    messages: dict[tuple[str, str], int] = {}
    for src, dst, _, n in flows:
        messages[(src, dst)] = messages.get((src, dst), 0) + n
    cpu = message_cpu_ms(cluster, messages)
    handling = handling_cpu_ms(cluster, flows)
    busy = [ms + fixed_ms(cluster, {d: steps.get(d, 0)}) + cpu.get(d, 0.0) + handling.get(d, 0.0)
            for d, ms in compute.items()]
    return max(busy + [nic_period_ms(cluster, flows)])


def fork_join_ms(cluster: Cluster, head: str, join: str, branches, *, shared: bool = True) -> float:
    """When the last of `branches` ((device, in_bytes, compute_ms, out_bytes) each) is at `join`:
    `head` sends each branch its input in turn on its one interface, each branch computes, and `join`
    takes their outputs in on its one, in the order they are ready (docs/planning.md, "One interface
    per host"); without `shared`, each branch on links of its own. A branch on `head` needs no input
    sent, one on `join` sends nothing."""
    if not shared:
        finish = []
        for dev, in_b, ms, out_b in branches:
            t = ms
            if dev != head:
                t += busy_ms(in_b, cluster.link(head, dev)) + cluster.link(head, dev).latency_ms
            if dev != join:
                t += busy_ms(out_b, cluster.link(dev, join)) + cluster.link(dev, join).latency_ms
            finish.append(t)
        return max(finish, default=0.0)
    sent = 0.0
    ready = []
    for dev, in_b, ms, out_b in branches:
        t = 0.0
        if dev != head:
            link = cluster.link(head, dev)
            sent += float(busy_ms(in_b, link))
            t = sent + link.latency_ms
        ready.append((t + ms, dev, out_b))
    taken, last = 0.0, 0.0
    for t, dev, out_b in sorted(ready):
        if dev == join:
            last = max(last, t)
            continue
        link = cluster.link(dev, join)
        taken = max(t, taken) + float(busy_ms(out_b, link))
        last = max(last, taken + link.latency_ms)
    return last


class CostModel:
    def __init__(self, graph: Graph, cluster: Cluster):
        self.graph = graph
        self.cluster = cluster
        macs = np.array([nd.macs for nd in graph.nodes], dtype=np.float64)
        self.prefix_flops = np.concatenate([[0.0], np.cumsum(2.0 * macs)])
        self._prefix_ms: dict[str, np.ndarray] = {}  # per profiled device (compute_prefix_ms)
        self.work_bytes = np.array(
            [sum(graph.tensor_bytes.get(t, 0) for t in nd.inputs + nd.outputs) for nd in graph.nodes],
            dtype=np.float64,
        )

    # -- the three questions -------------------------------------------------------------------
    def compute_ms(self, device: str, start: int, stop: int) -> float:
        return float(self.compute_prefix_ms(device)[stop] - self.compute_prefix_ms(device)[start])

    def transfer_ms(self, cut: int, src: str, dst: str, with_latency: bool = True) -> float:
        return float(self.transfer_vector_ms(src, dst, with_latency)[cut])

    def stage_memory_bytes(self, start: int, stop: int) -> float:
        consts = {c for nd in self.graph.nodes[start:stop] for c in nd.constants}
        params = sum(self.graph.constant_bytes[c] for c in consts)
        return float(params + (self.work_bytes[start:stop].max() if stop > start else 0.0))

    # -- the same, vectorised for planners -------------------------------------------------------
    def compute_prefix_ms(self, device: str) -> np.ndarray:
        """[n+1] cumulative compute time of nodes[:i] on `device`, in ms: each node at its kind's
        measured speed where the device has a profile (docs/profile.md), else at its GFLOP/s."""
        dev = self.cluster.device(device)
        if not dev.speeds:
            return compute_ms(self.prefix_flops, dev.gflops)
        cached = self._prefix_ms.get(device)
        if cached is None:
            speed = np.array([dev.speed_of(nd.kind) for nd in self.graph.nodes], dtype=np.float64)
            per_node = 2.0 * np.array([nd.macs for nd in self.graph.nodes], dtype=np.float64) / (speed * 1e9) * 1e3
            cached = self._prefix_ms[device] = np.concatenate([[0.0], np.cumsum(per_node)])
        return cached

    def transfer_vector_ms(self, src: str, dst: str, with_latency: bool = True) -> np.ndarray:
        """[n+1] time to send what crosses cut i from `src` to `dst`, in ms (without the link's
        latency: how long the link is busy, which is what bounds a pipelined stream)."""
        link = self.cluster.link(src, dst)
        busy = busy_ms(self.graph.live_bytes, link)
        return busy + link.latency_ms if with_latency else busy

    @property
    def io_bytes(self) -> tuple[int, int]:
        """The model's inputs and outputs, in bytes: what the caller sends and gets back."""
        return io_bytes(self.graph)

    def handling_matrix_ms(self, device: str) -> np.ndarray:
        """[a, b]: what a stage of nodes[a:b] on `device` spends on its messages' bytes at its
        handling_mbps (handling_cpu_ms): what crosses cut a in (the caller's inputs when a == 0) and
        cut b out (the caller's outputs when b == n)."""
        dev = self.cluster.device(device)
        ins, outs = self.io_bytes
        into = np.array(self.graph.live_bytes, dtype=np.float64)
        into[0] = ins
        out = np.array(self.graph.live_bytes, dtype=np.float64)
        out[-1] = outs
        return handling_ms(dev, into)[:, None] + handling_ms(dev, out)[None, :]

    def max_stop(self, device: str) -> np.ndarray:
        """[n] for each start a, the largest stop b such that nodes[a:b] fit in `device`'s memory
        (b == a when not even one node fits). Two pointers: both ends only move forward."""
        budget = self.cluster.device(device).memory_bytes
        nodes, cb = self.graph.nodes, self.graph.constant_bytes
        n = len(nodes)
        out = np.zeros(n, dtype=np.int64)
        uses: Counter[str] = Counter()
        params = 0.0
        window: deque[int] = deque()  # indices with decreasing work bytes: front is the max
        b = 0
        for a in range(n):
            if b < a:  # the window emptied: restart it at a
                b = a
            while b < n:
                add = {c for c in nodes[b].constants if uses[c] == 0}
                extra = sum(cb[c] for c in add)
                peak = max(self.work_bytes[window[0]] if window else 0.0, self.work_bytes[b])
                if params + extra + peak > budget:
                    break
                for c in nodes[b].constants:
                    uses[c] += 1
                params += extra
                while window and self.work_bytes[window[-1]] <= self.work_bytes[b]:
                    window.pop()
                window.append(b)
                b += 1
            out[a] = b
            if b > a:  # drop node a from the window
                for c in nodes[a].constants:
                    uses[c] -= 1
                    if uses[c] == 0:
                        params -= cb[c]
                if window and window[0] == a:
                    window.popleft()
        return out

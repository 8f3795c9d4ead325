"""Measure a device's speed, and a loopback link's, for the cost model, on the machine it runs on.

    speed = measure_device(model, feeds, threads=1, cpus={0})   # Speed(gflops=..., timing=...)
    speed = measure_cores(model, feeds, [0, 1])                 # one core, measured on each in turn
    link = measure_loopback()                                   # Link(bandwidth_mbps=..., latency_ms=...)
    fixed = measure_fixed_costs(cpus=(0, 1))                    # Fixed(step_ms=..., message_ms=...)
    handling = measure_handling(cpus=(0, 1))                    # Handling(request_ms=..., mbps=...)
    cluster = calibrated(cluster, {"device-a": speed.gflops}, link, fixed)
    times = time_stages(["dist/a/stage0.onnx", "dist/b/stage1.onnx"], feeds, cpus=[{0}, {1}])

The cost model (cost.py; docs/planning.md) prices a stage at its FLOPs over the device's effective
GFLOP/s. A figure written by hand is a guess, and every estimate is off by the same factor; timing
the model itself with the cores and threads the device's agent will have gives the GFLOP/s that
makes the planner's estimates land near what runs (docs/cluster.md: "gflops is effective speed").
The formulas stay in cost.py: this module only measures.

Times are medians over several runs after a warm-up; the spread (10th and 90th percentile) says how
much the machine's other work disturbed them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from edgepart.packager.cluster import Cluster, Link

log = logging.getLogger("edgepart")


@dataclass(frozen=True)
class Timing:
    """How long one run took: median and spread over `runs` runs, in ms."""
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> "Timing":
        q = np.percentile(np.asarray(times_ms, dtype=np.float64), [10, 90])
        return cls(float(statistics.median(times_ms)), float(q[0]), float(q[1]), len(times_ms))


@dataclass(frozen=True)
class Speed:
    """A device's effective speed on one model: its FLOPs over the median time of one run."""
    gflops: float
    flops: float
    timing: Timing


@contextlib.contextmanager
def pinned(cpus: Iterable[int] | None) -> Iterator[None]:
    """Run the calling thread on `cpus` only (None: leave it), and put its affinity back after.

    On Linux the affinity of pid 0 is the calling thread's, so other threads keep theirs; threads
    started inside inherit `cpus`."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def session(model: onnx.ModelProto | str | Path, threads: int = 1):
    """An onnxruntime CPU session with `threads` intra-op threads (1: runs in the caller's thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def time_session(sess, feeds: Mapping[str, np.ndarray], *, runs: int = 20, warmup: int = 3,
                 cpus: Iterable[int] | None = None) -> Timing:
    """Time `sess.run` on `feeds`, pinned to `cpus`."""
    times = []
    with pinned(cpus):
        for _ in range(warmup):
            sess.run(None, dict(feeds))
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, dict(feeds))
            times.append((time.perf_counter() - t) * 1e3)
    return Timing.of(times)


def model_flops(model: onnx.ModelProto | str | Path, feeds: Mapping[str, np.ndarray]) -> float:
    """FLOPs of one run at the feeds' shapes, counted as the cost model counts them (2 x MACs)."""
    from edgepart.packager.model.graph import analyse, load_model

    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    return 2.0 * analyse(proto, {k: tuple(v.shape) for k, v in feeds.items()}).total_macs


def measure_device(model: onnx.ModelProto | str | Path, feeds: Mapping[str, np.ndarray], *, threads: int = 1,
                   cpus: Iterable[int] | None = None, runs: int = 20, warmup: int = 3,
                   flops: float | None = None) -> Speed:
    """The effective GFLOP/s of this machine, given `threads` threads on `cpus`, running `model`."""
    flops = model_flops(model, feeds) if flops is None else flops
    timing = time_session(session(model, threads), feeds, runs=runs, warmup=warmup, cpus=cpus)
    speed = Speed(flops / (timing.median_ms * 1e-3) / 1e9, flops, timing)
    log.info("calibrated: %.2f ms per run, %.1f GFLOP/s (%d thread(s), cpus %s)", timing.median_ms, speed.gflops,
             threads, sorted(cpus) if cpus is not None else "any")
    return speed


def measure_cores(model: onnx.ModelProto | str | Path, feeds: Mapping[str, np.ndarray], cores: Sequence[int], *,
                  runs: int = 30, warmup: int = 3, flops: float | None = None) -> Speed:
    """The effective GFLOP/s of one core of this machine with one thread, the run pinned to each of
    `cores` in turn and the median taken over all of them. For equal devices that are cores of one
    machine (the demo's): a burst of other work on one core during calibration then shifts the
    figure a little for every device instead of making one device look slow and the plan lopsided."""
    flops = model_flops(model, feeds) if flops is None else flops
    sess = session(model, 1)
    times = []
    for c in cores:
        with pinned({c}):
            for _ in range(warmup):
                sess.run(None, dict(feeds))
    for i in range(max(runs, len(cores))):
        with pinned({cores[i % len(cores)]}):
            t = time.perf_counter()
            sess.run(None, dict(feeds))
            times.append((time.perf_counter() - t) * 1e3)
    timing = Timing.of(times)
    speed = Speed(flops / (timing.median_ms * 1e-3) / 1e9, flops, timing)
    log.info("calibrated: %.2f ms per run, %.1f GFLOP/s (1 thread on cores %s in turn)", timing.median_ms,
             speed.gflops, list(cores))
    return speed


def time_stages(paths: Sequence[str | Path], feeds: Mapping[str, np.ndarray], *, threads: int = 1,
                cpus: Sequence[Iterable[int] | None] | None = None, runs: int = 20, warmup: int = 3) -> list[Timing]:
    """Time each stage of a split on its own cores, in pipeline order: every stage is fed what the
    model inputs and the stages before it made (their outputs are computed once, then reused)."""
    pool = dict(feeds)
    out = []
    for i, path in enumerate(paths):
        sess = session(path, threads)
        names = [a.name for a in sess.get_inputs()]
        mine = {n: pool[n] for n in names}
        out.append(time_session(sess, mine, runs=runs, warmup=warmup, cpus=cpus[i] if cpus else None))
        pool.update(zip((o.name for o in sess.get_outputs()), sess.run(None, mine)))
    return out


def measure_loopback(size_bytes: int = 1 << 19, messages: int = 40, pings: int = 50, timeout_s: float = 10.0) -> Link:
    """The link between two agents on this machine: ZeroMQ over TCP on 127.0.0.1, the way agents send
    (multipart, no copy). Bandwidth from `messages` one-way messages of `size_bytes`, latency from
    the median round trip of small ones, halved."""
    import zmq

    ctx = zmq.Context.instance()
    rx, tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (rx, tx):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1e3))
        s.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1e3))
    try:
        port = rx.bind_to_random_port("tcp://127.0.0.1")
        tx.connect(f"tcp://127.0.0.1:{port}")
        payload = np.ones(size_bytes, dtype=np.uint8)

        def echo() -> None:  # the far end of the pings
            with contextlib.suppress(zmq.ZMQError):
                for _ in range(pings + 1):
                    rx.send(rx.recv())

        t = threading.Thread(target=echo, daemon=True, name="edgepart-calibrate-echo")
        t.start()
        rtts = []
        for i in range(pings + 1):
            t0 = time.perf_counter()
            tx.send(b"p")
            tx.recv()
            if i:  # the first includes the connection
                rtts.append((time.perf_counter() - t0) * 1e3)
        t.join(timeout_s)
        tx.send_multipart([b"h", payload], copy=False)  # warm the path with one large message
        rx.recv_multipart()
        t0 = time.perf_counter()

        def send() -> None:
            with contextlib.suppress(zmq.ZMQError):
                for _ in range(messages):
                    tx.send_multipart([b"h", payload], copy=False)

        t = threading.Thread(target=send, daemon=True, name="edgepart-calibrate-send")
        t.start()
        for _ in range(messages):
            rx.recv_multipart(copy=False)
        elapsed = time.perf_counter() - t0
        t.join(timeout_s)
    except zmq.Again:
        raise TimeoutError(f"loopback calibration got no answer within {timeout_s:g} s") from None
    finally:
        rx.close()
        tx.close()
    latency_ms = statistics.median(rtts) / 2
    # the one-way messages' time less one latency is what the bytes took
    busy_s = max(elapsed - latency_ms * 1e-3, 1e-9)
    link = Link(size_bytes * messages * 8 / busy_s / 1e6, latency_ms)
    log.info("loopback link: %.0f Mbit/s, %.3f ms", link.bandwidth_mbps, link.latency_ms)
    return link


def calibrated(cluster: Cluster, gflops: Mapping[str, float] | float, link: Link | None = None,
               fixed: "Fixed | None" = None) -> Cluster:
    """`cluster` with the measured speeds (one figure for all devices, or device -> GFLOP/s) and,
    given `link`, that link between every pair of devices; given `fixed`, its per-step cost on every
    device and its per-message cost on the link (or on every link of `cluster`)."""
    devices = tuple(dataclasses.replace(d, gflops=float(gflops if isinstance(gflops, (int, float)) else gflops.get(d.name, d.gflops)))
                    for d in cluster.devices)
    if fixed is not None:
        devices = tuple(dataclasses.replace(d, step_ms=fixed.step_ms) for d in devices)
        link = dataclasses.replace(link, message_ms=fixed.message_ms) if link is not None else None
        cluster = dataclasses.replace(cluster, default_link=dataclasses.replace(cluster.default_link, message_ms=fixed.message_ms),
                                      pair_links=tuple((a, b, dataclasses.replace(lk, message_ms=fixed.message_ms))
                                                       for a, b, lk in cluster.pair_links))
    if link is None:
        return dataclasses.replace(cluster, devices=devices)
    return dataclasses.replace(cluster, devices=devices, default_link=link, pair_links=())


@dataclass(frozen=True)
class Fixed:
    """The fixed costs the cost model adds per step and per message (docs/planning.md, "Fixed costs"),
    and the bandwidth between two agents, measured through real agents on this machine, with what
    they were derived from."""
    step_ms: float  # one onnxruntime step of one tiny op, in this process
    message_ms: float  # the rest of one hop between two agents with a tiny tensor, per message
    hop_ms: float  # one hop with a tiny tensor: (chain - alone) / hops
    bandwidth_mbps: float  # what a hop's extra time with `big_bytes` says of the bytes between agents
    solo: Timing  # caller -> A -> caller, tiny tensor
    chain: Timing  # caller -> A -> B -> A -> ... -> caller, tiny tensor
    hops: int
    big_bytes: int = 0

    def link(self, latency_ms: float) -> Link:
        """The link between two agents of this machine as the cost model should see it: the agents'
        bandwidth, `latency_ms` (measure_loopback's), this message cost."""
        return Link(self.bandwidth_mbps, latency_ms, self.message_ms)


def _tiny_plan(out: Path, devices: Sequence[str], tag: str, elements: int = 256) -> Path:
    """A plan that sends a small tensor caller -> devices[0] -> devices[1] -> ... -> caller, one
    cheap op (Neg) per step: its time is the agents' fixed costs, not compute. Written from the
    packager's own parts, as a strategy writes one."""
    from onnx import TensorProto, helper

    from edgepart.plan import CALLER, Route, TensorSpec

    from edgepart.packager.bundles import StepModel, model_plan, write_bundles
    from edgepart.packager.cluster import Device
    from edgepart.packager.model.graph import analyse

    shape = [1, elements]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)  # noqa: E731
    ops = lambda i, o: helper.make_model(  # noqa: E731
        helper.make_graph([helper.make_node("Neg", [i], [o])], "fixed", [vi(i)], [vi(o)]),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = analyse(ops("x", "y"))
    names = [f"t{k}" for k in range(len(devices) - 1)]
    ins, outs = ["x", *names], [*names, "y"]
    steps = [StepModel(f"step{k}@{d}", d, f"step{k}.onnx", ops(i, o), (TensorSpec(i, "float32", tuple(shape)),),
                       (TensorSpec(o, "float32", tuple(shape)),), 1, 0.0)
             for k, (d, i, o) in enumerate(zip(devices, ins, outs))]
    srcs, dsts = [CALLER, *devices], [*devices, CALLER]
    routes = [Route(t, a, b) for t, a, b in zip(ins + ["y"], srcs, dsts)]
    cluster = Cluster(tuple(Device(d, 10.0, 1024) for d in dict.fromkeys(devices)), Link(1000.0, 0.1))
    write_bundles(steps, lambda st: model_plan("pipeline", graph, cluster, st, routes, f"edgepart-fixed-{tag}", "latency",
                                               ()), out)
    return out


def _lanes_plan(out: Path, tag: str, elements: int = 256) -> Path:
    """A plan with one source on device a (docs/priority.md, "Plans with sources"): caller -> a -> b ->
    caller, one Neg on each, so its agents run a source's lane, queue and choice of helper, as a
    camera and its helper do. Planned by the allocator itself: a is made too slow to run both ops."""
    from onnx import TensorProto, helper

    from edgepart.sources import sources_from_dict

    from edgepart.packager.api import package
    from edgepart.packager.cluster import Device

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, elements])  # noqa: E731
    model = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["y"])],
                                                "handling", [vi("x")], [vi("y")]), opset_imports=[helper.make_opsetid("", 17)])
    cluster = Cluster((Device("a", 1e-6, 1024), Device("b", 1000.0, 1024)), Link(100000.0, 0.01))
    sources = sources_from_dict({"sources": [{"name": "s", "device": "a", "priority": 1, "rate_hz": 1}]})
    res = package(model, cluster, out=out, sources=sources, schedule="blind", model_name=f"edgepart-handling-{tag}")
    cut = res.planned.allocation.get("s").cut
    if cut != 1:  # the measurement is of a head on a and a tail on b
        raise RuntimeError(f"the handling plan put {cut} of 2 ops on its source's device, not 1")
    return out


def _agents(dist: Path, cpus: Sequence[int]) -> list:
    """`edgepart run` for every device folder of `dist`, on loopback, 1 thread, device k on cpus[k]."""
    import subprocess
    import sys

    procs = []
    for k, b in enumerate(sorted(p for p in dist.iterdir() if (p / "manifest.json").is_file())):
        argv = [sys.executable, "-m", "edgepart", "run", str(b), "--threads", "1", "--interface", "127.0.0.1"]
        if hasattr(os, "sched_setaffinity") and cpus:
            argv = ["taskset", "-c", str(cpus[k % len(cpus)]), *argv]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    return procs


def _stop(procs: Sequence) -> None:
    """Stop agents `_agents` started: terminate all, wait for each, kill one that will not stop."""
    for pr in procs:
        pr.terminate()
    for pr in procs:
        try:
            pr.wait(10)
        except Exception:  # noqa: BLE001 - a process that will not stop is killed
            pr.kill()


def measure_fixed_costs(cpus: Sequence[int] = (0, 1), *, hops: int = 8, runs: int = 40, blocks: int = 5,
                        big_bytes: int = 1 << 20, timeout_s: float = 60.0,
                        started: Callable[[Sequence[int]], None] | None = None) -> Fixed:
    """The fixed costs of a step and of a message between agents on this machine (docs/planning.md,
    "Fixed costs"). Two agents (`edgepart run`, 1 thread, pinned to `cpus`) and this process as the
    caller time a tensor through caller -> A -> caller and through caller -> A -> B -> A ... -> caller
    with `hops` hops between the agents, in alternating blocks; one hop (a step and a message) is the
    difference over `hops`. A step is onnxruntime's run of one tiny op, timed here; the message is the
    rest of a hop with a tiny tensor (receiving, decoding, handing over, framing, sending). The same
    with a tensor of `big_bytes` gives the bandwidth between agents: its extra time per hop, less
    its step's, is what the bytes took (agents move fewer bytes per second than raw ZeroMQ, which
    measure_loopback times: docs/agents.md, "Measured"). `started(pids)` is called with the agents'
    process ids once they answer (a benchmark caps their CPU there, as its devices' are)."""
    import tempfile

    import edgepart

    sizes = (256, max(big_bytes // 4, 256))
    chain = ["a", *(["b", "a"] * (hops // 2)), *(["b"] if hops % 2 else [])]
    times: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgepart-fixed-") as tmp:
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        plans = {(n, kind): _tiny_plan(Path(tmp) / f"{kind}{n}", devs, f"{kind}{n}-{tag}", n)
                 for n in sizes for kind, devs in (("solo", ["a"]), ("chain", chain))}
        procs = [pr for dist in plans.values() for pr in _agents(dist, cpus)]
        try:
            sessions = {k: edgepart.InferenceSession(d, interface="127.0.0.1", timeout_s=timeout_s)
                        for k, d in plans.items()}
            if started is not None:  # once they answer: their start-up ran at full speed
                started([pr.pid for pr in procs])
            feeds = {n: {"x": np.ones((1, n), np.float32)} for n in sizes}
            with pinned(cpus[:1] if cpus else None):
                for (n, _), s in sessions.items():
                    for _ in range(10):  # warm up: links, sessions
                        s.run(None, feeds[n])
                for _ in range(blocks):
                    for (n, kind), s in sessions.items():
                        out = times.setdefault((n, kind), [])
                        for _ in range(max(runs // blocks, 1)):
                            t0 = time.perf_counter()
                            s.run(None, feeds[n])
                            out.append((time.perf_counter() - t0) * 1e3)
            for s in sessions.values():
                s.close()
        finally:
            _stop(procs)
    step = {n: time_session(session(_tiny_model(n)), feeds[n], runs=100, warmup=10, cpus=cpus[:1] if cpus else None)
            for n in sizes}
    t = {k: Timing.of(v) for k, v in times.items()}
    hop = {n: max((t[(n, "chain")].median_ms - t[(n, "solo")].median_ms) / hops, 0.0) for n in sizes}
    small, big = sizes
    byte_ms = max(hop[big] - hop[small] - (step[big].median_ms - step[small].median_ms), 1e-6)
    fixed = Fixed(step[small].median_ms, max(hop[small] - step[small].median_ms, 0.0), hop[small],
                  (big - small) * 4 * 8 / (byte_ms * 1e-3) / 1e6, t[(small, "solo")], t[(small, "chain")], hops, big * 4)
    log.info("fixed costs: %.3f ms per step, %.3f ms per message (one hop %.3f ms); between agents %.0f Mbit/s",
             fixed.step_ms, fixed.message_ms, fixed.hop_ms, fixed.bandwidth_mbps)
    return fixed


@dataclass(frozen=True)
class Handling:
    """What an agent's CPU spends per request beside compute (docs/priority.md, "Costs per request"),
    measured on this machine: the cost model's `step_ms` and `handling_mbps` for a device whose agent
    has a core like this one's (a device with a share of it: request_ms / share, mbps * share)."""
    request_ms: float  # CPU per request and agent, tiny tensors: one step, a message in, one out; less the op
    mbps: float  # message bytes taken in or sent on per second of CPU, in Mbit/s (half local, half between agents)
    per_request: tuple[tuple[str, float], ...]  # CPU ms per request: (a|b)-(small|big)
    runs: int
    big_bytes: int


def cpu_s(pid: int) -> float:
    """A process's CPU time (user + system, all its threads) so far, in s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_handling(cpus: Sequence[int] = (0, 1), *, big_bytes: int = 1 << 20, runs: int = 600, blocks: int = 3,
                     rate_hz: float | None = None, lanes: bool = False, timeout_s: float = 60.0) -> Handling:
    """The CPU agents (`edgepart run`, 1 thread, pinned to `cpus`) spend per request beside their
    steps' ops. This process sends `runs` requests through caller -> A -> B -> caller, one Neg step per
    agent, first with a tiny tensor, then with `big_bytes`, and reads each agent's CPU time (/proc)
    around each batch, in `blocks` alternating blocks (medians). The tiny batch gives the fixed part per agent (a step, a message in, one out);
    the growth with the bytes, less the ops' own, is what the messages' bytes cost: each agent takes
    the tensor in and sends it on, one side over the app's local socket, the other to or from the
    other agent (framing, CURVE, TCP), as a source device and its helper do. `rate_hz`: requests sent
    open loop at that rate (an agent's periodic work is spread over them), else back to back. `lanes`:
    the chain is a plan with one source (its head on A, its tail on B), so the agents also keep their
    queues, report them and choose the helper, as in plans with sources. Linux only."""
    import tempfile

    import edgepart

    sizes = (256, max(big_bytes // 4, 256))
    with tempfile.TemporaryDirectory(prefix="edgepart-handling-") as tmp:
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        plans = {n: (_lanes_plan(Path(tmp) / f"lanes{n}", f"{n}-{tag}", n) if lanes else
                     _tiny_plan(Path(tmp) / f"chain{n}", ["a", "b"], f"handling{n}-{tag}", n)) for n in sizes}
        procs = {n: _agents(dist, cpus) for n, dist in plans.items()}
        try:
            sessions = {n: edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=timeout_s,
                                                     **({"source": "s"} if lanes else {}))
                        for n, dist in plans.items()}
            feeds = {n: {"x": np.ones((1, n), np.float32)} for n in sizes}
            for n, s in sessions.items():
                for _ in range(10):  # warm up: links, sessions, the steps' first (cold) runs
                    s.run(None, feeds[n])
            got: dict[tuple[str, int], list[float]] = {}
            for _ in range(blocks):  # alternating, so a disturbance hits both sizes alike
                for n, s in sessions.items():
                    pids = [pr.pid for pr in procs[n]]
                    c0 = [cpu_s(p) for p in pids]
                    if rate_hz:  # open loop, as apps send: each request wakes the agents
                        futs, t0 = [], time.perf_counter()
                        for k in range(runs // blocks):
                            time.sleep(max(0.0, t0 + k / rate_hz - time.perf_counter()))
                            futs.append(s.submit(feeds[n]))
                        for f in futs:
                            f.result(timeout_s)
                    else:
                        for _ in range(runs // blocks):
                            s.run(None, feeds[n])
                    for name, p, c in zip("ab", pids, c0):
                        got.setdefault((name, n), []).append((cpu_s(p) - c) * 1e3 / (runs // blocks))
            for s in sessions.values():
                s.close()
            per = {k: statistics.median(v) for k, v in got.items()}
        finally:
            _stop([pr for ps in procs.values() for pr in ps])
    op = {n: time_session(session(_tiny_model(n)), {"x": np.ones((1, n), np.float32)}, runs=100, warmup=10,
                          cpus=cpus[:1] or None).median_ms for n in sizes}
    small, big = sizes
    bytes_ms = max(sum(per[(k, big)] - per[(k, small)] for k in "ab") - 2 * (op[big] - op[small]), 1e-6)
    nbits = 4 * (big - small) * 4 * 8  # each agent takes the tensor in and sends it on
    h = Handling(max((per[("a", small)] + per[("b", small)]) / 2 - op[small], 0.0), nbits / (bytes_ms * 1e-3) / 1e6,
                 tuple((f"{k}-{'small' if n == small else 'big'}", round(v, 4)) for (k, n), v in sorted(per.items())),
                 runs, big * 4)
    log.info("an agent's handling: %.3f ms of CPU per request, message bytes at %.0f Mbit/s", h.request_ms, h.mbps)
    return h


def _tiny_model(elements: int = 256) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, elements])  # noqa: E731
    return helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "step", [vi("x")], [vi("y")]),
                             opset_imports=[helper.make_opsetid("", 17)])

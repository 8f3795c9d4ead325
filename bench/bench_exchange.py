"""What one exchange between devices costs, and what a within-layer split pays for its exchanges.

    python bench/bench_exchange.py [--quick] [--rounds 5] [--only exchange,minilm,efficientnet]

exchange      one round trip between two agents (`edgepart run` processes, default flags, each
              pinned to its core): a tiny plan whose device A sends a 1 KiB tensor to B and waits for
              B's answer (caller -> A -> B -> A -> caller), minus the same plan without B
              (caller -> A -> caller); beside a raw pyzmq round trip on loopback (DEALER/ROUTER, a
              msgpack header + one raw frame, one thread each, the echo pinned to the other core)
minilm        MiniLM (zoo.minilm(), 1 sentence of 24 tokens) as a 3-device channel split
efficientnet  EfficientNet-Lite0 (zoo.efficientnet_lite0(), 1 image) as a 2-device channel split
before-after  (not by default) both splits packaged with and without the packager's round removal
              (`package_channel(..., fewer_rounds=False)`), both sets of agents at once, interleaved

For each split, in interleaved blocks (so every figure sees the same moments of a shared machine):
agents with DEFAULT flags and with `--threads 1` (each agent pinned to a core, as many cores as
there are; the app is this process), one onnxruntime session of the whole model with 1 thread,
and the raw round trip. Their floor is computed from figures measured in the same run:

    floor (serial)  = sum of every step's compute (each step timed alone, 1 thread) + rounds x RTT
    floor (path)    = the critical path of the steps, each device running its steps in order and
                      each cross-device input arriving one RTT after its producer finished

where rounds is the depth of the cross-device dependency chain. The serial floor is the one for a
cluster with fewer cores than devices (this 2-core machine and 3 agents); the path floor assumes a
core per device. Goals (issue 10): MiniLM <= 2x one session and within 1.3x of its floor,
EfficientNet-Lite0 <= 1.5x one session and within 1.3x of its floor. Medians of per-block medians,
with the spread (lowest and highest block median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import msgpack
import numpy as np
import onnx
import yaml
import zmq
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=170)
CORES = sorted(os.sched_getaffinity(0))
ECHO = r"""
import sys, msgpack, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    ident, head, frame = s.recv_multipart(copy=False)
    h = msgpack.unpackb(head.bytes)
    if h["r"] < 0:
        break
    s.send_multipart([ident, msgpack.packb({"r": h["r"], "t": h["t"]}), frame], copy=False)
"""


# -- raw pyzmq ---------------------------------------------------------------------------------------

class RawEcho:
    """A DEALER in this process, a ROUTER echo in another (pinned to the last core)."""

    def __init__(self, nbytes: int = 1024):
        argv = [sys.executable, "-c", ECHO]
        if len(CORES) > 1:
            argv = ["taskset", "-c", str(CORES[-1]), *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.x = np.ones(nbytes // 4, np.float32)
        self.rid = 0
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def one(self) -> None:
        self.rid += 1
        self.sock.send_multipart([msgpack.packb({"r": self.rid, "t": [["x", "float32", list(self.x.shape)]]}), self.x])
        if not self.poller.poll(10_000):  # every wait has a deadline
            raise TimeoutError("the raw echo did not answer within 10 s")
        frames = self.sock.recv_multipart(copy=False)
        assert msgpack.unpackb(frames[0].bytes)["r"] == self.rid
        np.frombuffer(frames[1].buffer, np.float32)

    def close(self) -> None:
        self.sock.send_multipart([msgpack.packb({"r": -1, "t": []}), b""])
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.ctx.destroy(linger=0)


# -- plans -------------------------------------------------------------------------------------------

def _cluster(out: Path, names: list[str]):
    from edgepart.packager.cluster import load_cluster

    doc = {"devices": [{"name": n, "gflops": 10.0, "memory_mb": 1024} for n in names],
           "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    (out / "cluster.yaml").write_text(yaml.safe_dump(doc))
    return load_cluster(out / "cluster.yaml")


def exchange_plan(out: Path, with_peer: bool, tag: str) -> Path:
    """caller -> A -> B -> A -> caller (with_peer) or caller -> A -> caller: 1 KiB float32 tensors,
    each step one cheap op. Written by hand from the packager's own parts, as a strategy would."""
    from edgepart.packager.bundles import StepModel, model_plan, write_bundles
    from edgepart.packager.model.graph import analyse
    from edgepart.plan import CALLER, Route, TensorSpec

    out.mkdir(parents=True, exist_ok=True)
    shape = [1, 256]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)  # noqa: E731
    whole = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "exchange", [vi("x")], [vi("y")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    graph = analyse(whole)

    def step(name, dev, file, op, i, o):
        m = helper.make_model(helper.make_graph([helper.make_node(op, [i], [o])], name, [vi(i)], [vi(o)]),
                              opset_imports=[helper.make_opsetid("", 17)])
        return StepModel(name, dev, file, m, (TensorSpec(i, "float32", tuple(shape)),),
                         (TensorSpec(o, "float32", tuple(shape)),), 1, 0.0)

    if with_peer:
        names = ["a", "b"]
        steps = [step("step0@a", "a", "step0.onnx", "Identity", "x", "x1"),
                 step("step0@b", "b", "step0.onnx", "Neg", "x1", "x2"),
                 step("step1@a", "a", "step1.onnx", "Identity", "x2", "y")]
        routes = [Route("x", CALLER, "a"), Route("x1", "a", "b"), Route("x2", "b", "a"), Route("y", "a", CALLER)]
    else:
        names = ["a"]
        steps = [step("step0@a", "a", "step0.onnx", "Neg", "x", "y")]
        routes = [Route("x", CALLER, "a"), Route("y", "a", CALLER)]
    cluster = _cluster(out, names)
    write_bundles(steps, lambda st: model_plan("channel", graph, cluster, st, routes, f"exchange-{tag}", "latency", ()),
                  out / "dist")
    return out / "dist"


def split_plan(which: str, n: int, out: Path, tag: str, fewer_rounds: bool = True) -> tuple[Path, Path, dict]:
    """A channel split of a zoo model: (dist, the whole model, feeds)."""
    from edgepart.testing import zoo
    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.model.graph import analyse, load_model

    out.mkdir(parents=True, exist_ok=True)
    if which == "minilm":
        path = zoo.minilm()
        ids = np.random.default_rng(0).integers(1000, 20000, (1, 24)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, 24), np.int64)}
        shapes = {"input_ids": (1, 24), "attention_mask": (1, 24)}
    else:
        path = zoo.efficientnet_lite0()
        feeds = zoo.imagenet_inputs(1)
        shapes = {"input": (1, 3, 224, 224)}
    model = load_model(path)
    graph = analyse(model, shapes)
    cluster = _cluster(out, [f"dev{i}" for i in range(n)])
    package_channel(model, graph, cluster, out / "dist", None, model_name=f"{which}-{n}-{tag}", fewer_rounds=fewer_rounds)
    return out / "dist", path, feeds


# -- the floor ---------------------------------------------------------------------------------------

def step_times(dist: Path, feeds: dict, n: int) -> dict[str, float]:
    """Each step's compute alone, 1 thread: the median over n runs of the whole plan in this process."""
    from edgepart.local import LocalCluster

    lc = LocalCluster.from_dist(dist, threads=1)
    for _ in range(n + 5):
        lc.run(feeds)
    return {k: statistics.median(v[5:]) for k, v in lc.step_ms.items()}


def floors(plan, ms: dict[str, float], rtt_ms: float) -> dict:
    """Rounds (depth of the cross-device chain), the serial floor and the critical-path floor."""
    made_by = {o.name: st for st in plan.steps for o in st.outputs}
    level: dict[str, int] = {}
    finish: dict[str, float] = {}
    free: dict[str, float] = defaultdict(float)
    pending = list(plan.steps)
    while pending:
        st = next(s for s in pending if all(i.name not in made_by or made_by[i.name].name in level for i in s.inputs))
        pending.remove(st)
        lv, start = 0, free[st.device]
        for i in st.inputs:
            src = made_by.get(i.name)
            if src is not None:
                cross = src.device != st.device
                lv = max(lv, level[src.name] + cross)
                start = max(start, finish[src.name] + (rtt_ms if cross else 0.0))
        level[st.name] = lv
        finish[st.name] = start + ms[st.name]
        free[st.device] = finish[st.name]
    rounds = max(level.values())
    compute = sum(ms.values())
    per_device = defaultdict(float)
    for st in plan.steps:
        per_device[st.device] += ms[st.name]
    return {"rounds": rounds, "steps": len(plan.steps), "compute_ms": compute, "device_compute_ms": dict(per_device),
            "floor_serial_ms": compute + rounds * rtt_ms, "floor_path_ms": max(finish.values())}


# -- timing ------------------------------------------------------------------------------------------

def block(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def agents(dist: Path, threads: int):
    from edgepart.testing.emulate import AgentProcesses

    devices = sorted(p.name for p in dist.iterdir() if (p / "manifest.json").is_file())
    cpus = {d: CORES[i % len(CORES)] for i, d in enumerate(devices)}
    return AgentProcesses(dist, interface="127.0.0.1", threads=threads, cpus=cpus)


def whole_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def spread(v: list[float]) -> str:
    return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"


def bench_exchange(tmp: Path, rounds: int, n: int) -> dict:
    import edgepart

    pair = exchange_plan(tmp / "pair", True, str(os.getpid()))
    solo = exchange_plan(tmp / "solo", False, str(os.getpid()))
    procs = [agents(pair, 0).start(), agents(solo, 0).start()]
    raw = RawEcho()
    res: dict[str, list[float]] = {"raw_rtt_ms": [], "pair_ms": [], "solo_ms": []}
    try:
        for p in procs:
            p.wait_ready(30)
        sp = edgepart.InferenceSession(pair, interface="127.0.0.1", timeout_s=10)
        ss = edgepart.InferenceSession(solo, interface="127.0.0.1", timeout_s=10)
        x = {"x": np.ones((1, 256), np.float32)}
        for s in (sp, ss):
            for _ in range(20):
                s.run(None, x)
        for _ in range(rounds):
            res["raw_rtt_ms"].append(block(raw.one, n))
            res["pair_ms"].append(block(lambda: sp.run(None, x), n))
            res["solo_ms"].append(block(lambda: ss.run(None, x), n))
        sp.close()
        ss.close()
    finally:
        raw.close()
        for p in procs:
            p.stop()
    res["exchange_ms"] = [a - b for a, b in zip(res["pair_ms"], res["solo_ms"])]
    return res


def bench_split(which: str, n_dev: int, tmp: Path, rounds: int, n: int) -> dict:
    import edgepart

    tag = str(os.getpid())
    dist, path, feeds = split_plan(which, n_dev, tmp / f"{which}-default", f"{tag}-d")
    dist1, _, _ = split_plan(which, n_dev, tmp / f"{which}-t1", f"{tag}-1")  # another plan id: both sets run at once
    ms = step_times(dist, feeds, max(10, n))
    whole = whole_session(path)
    raw = RawEcho()
    procs = [agents(dist, 0).start(), agents(dist1, 1).start()]
    keys = ("whole_ms", "default_ms", "threads1_ms", "raw_rtt_ms")
    res: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for p in procs:
            p.wait_ready(60)
        s0 = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=60)
        s1 = edgepart.InferenceSession(dist1, interface="127.0.0.1", timeout_s=60)
        for _ in range(5):
            s0.run(None, feeds), s1.run(None, feeds), whole.run(None, feeds)
        for _ in range(rounds):
            res["whole_ms"].append(block(lambda: whole.run(None, feeds), n))
            res["default_ms"].append(block(lambda: s0.run(None, feeds), n))
            res["threads1_ms"].append(block(lambda: s1.run(None, feeds), n))
            res["raw_rtt_ms"].append(block(raw.one, 4 * n))
        s0.close()
        s1.close()
    finally:
        raw.close()
        for p in procs:
            p.stop()
    plan = edgepart.load_bundle(next(p for p in dist.iterdir() if (p / "manifest.json").is_file())).plan
    res["floor"] = floors(plan, ms, statistics.median(res["raw_rtt_ms"]))
    return res


def bench_before_after(which: str, n_dev: int, tmp: Path, rounds: int, n: int) -> dict:
    """The same split packaged with and without the packager's round removal, both sets of
    default-flag agents up at once, blocks interleaved (and one session for scale)."""
    import edgepart

    tag = str(os.getpid())
    old, path, feeds = split_plan(which, n_dev, tmp / f"{which}-before", f"{tag}-b", fewer_rounds=False)
    new, _, _ = split_plan(which, n_dev, tmp / f"{which}-after", f"{tag}-a")
    whole = whole_session(path)
    procs = [agents(old, 0).start(), agents(new, 0).start()]
    res: dict = {"whole_ms": [], "before_ms": [], "after_ms": []}
    try:
        for p in procs:
            p.wait_ready(60)
        so = edgepart.InferenceSession(old, interface="127.0.0.1", timeout_s=60)
        sn = edgepart.InferenceSession(new, interface="127.0.0.1", timeout_s=60)
        for _ in range(5):
            so.run(None, feeds), sn.run(None, feeds)
        for _ in range(rounds):
            res["whole_ms"].append(block(lambda: whole.run(None, feeds), n))
            res["before_ms"].append(block(lambda: so.run(None, feeds), n))
            res["after_ms"].append(block(lambda: sn.run(None, feeds), n))
        so.close()
        sn.close()
    finally:
        for p in procs:
            p.stop()
    res["steps"] = {k: len(edgepart.load_bundle(next(x for x in d.iterdir() if (x / "manifest.json").is_file())).plan.steps)
                    for k, d in (("before", old), ("after", new))}
    return res


def report_before_after(title: str, r: dict) -> None:
    t = Table(title=f"{title}: steps {r['steps']['before']} -> {r['steps']['after']}, default flags, side by side")
    for c in ("figure", "ms: median of block medians (spread)", "/ one session"):
        t.add_column(c)
    w = statistics.median(r["whole_ms"])
    for k, label in (("whole_ms", "one onnxruntime session, 1 thread"), ("before_ms", "agents, plan without round removal"),
                     ("after_ms", "agents, plan with round removal")):
        t.add_row(label, spread(r[k]), f"{statistics.median(r[k]) / w:.2f}")
    per = [a / b for a, b in zip(r["after_ms"], r["before_ms"])]
    t.add_row("after / before, per block", f"{statistics.median(per):.2f} ({min(per):.2f}-{max(per):.2f})", "")
    console.print(t)


def report_split(title: str, r: dict, goal_whole: float) -> None:
    f = r["floor"]
    m = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
    t = Table(title=f"{title}: {f['steps']} steps, {f['rounds']} exchange rounds, steps' compute {f['compute_ms']:.2f} ms "
                    f"({', '.join(f'{d} {v:.2f}' for d, v in f['device_compute_ms'].items())})")
    for c in ("figure", "ms: median of block medians (spread)", "/ one session", "/ floor serial", "/ floor path"):
        t.add_column(c)
    t.add_row("one onnxruntime session, 1 thread", spread(r["whole_ms"]), "1.00", "", "")
    t.add_row("raw pyzmq round trip", spread(r["raw_rtt_ms"]), "", "", "")
    t.add_row("floor serial: compute + rounds x RTT", f"{f['floor_serial_ms']:.3f}", f"{f['floor_serial_ms'] / m['whole_ms']:.2f}", "1.00", "")
    t.add_row("floor path: critical path, RTT per hop", f"{f['floor_path_ms']:.3f}", f"{f['floor_path_ms'] / m['whole_ms']:.2f}", "", "1.00")
    for k, label in (("default_ms", "agents, default flags"), ("threads1_ms", "agents, --threads 1")):
        t.add_row(label, spread(r[k]), f"{m[k] / m['whole_ms']:.2f} (goal <= {goal_whole})",
                  f"{m[k] / f['floor_serial_ms']:.2f} (goal <= 1.3)", f"{m[k] / f['floor_path_ms']:.2f}")
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer blocks and requests")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved blocks per figure")
    ap.add_argument("--only", default="exchange,minilm,efficientnet",
                    help="any of exchange, minilm, efficientnet, before-after (the splits packaged with and "
                         "without the packager's round removal, side by side)")
    a = ap.parse_args()
    rounds, n = (3, 10) if a.quick else (a.rounds, 30)
    only = set(a.only.split(","))
    out: dict = {"cores": CORES}
    console.print(f"cores {CORES}, load average {os.getloadavg()[0]:.1f} (a busy machine stretches every figure)")
    with tempfile.TemporaryDirectory(prefix="edgepart-exchange-") as tmpdir:
        tmp = Path(tmpdir)
        if "exchange" in only:
            r = bench_exchange(tmp, rounds, 10 * n)
            out["exchange"] = r
            t = Table(title="one exchange: A sends 1 KiB to B and waits for its answer")
            t.add_column("figure")
            t.add_column("ms: median of block medians (spread)")
            t.add_row("raw pyzmq DEALER/ROUTER round trip", spread(r["raw_rtt_ms"]))
            t.add_row("agents: caller -> A -> B -> A -> caller", spread(r["pair_ms"]))
            t.add_row("agents: caller -> A -> caller", spread(r["solo_ms"]))
            t.add_row("agents: the exchange A -> B -> A (the difference)", spread(r["exchange_ms"]))
            ratio = statistics.median(r["exchange_ms"]) / statistics.median(r["raw_rtt_ms"])
            t.add_row("exchange / raw round trip", f"{ratio:.2f}")
            console.print(t)
        if "minilm" in only:
            out["minilm"] = r = bench_split("minilm", 3, tmp, rounds, n)
            report_split("MiniLM, 24 tokens, 3-device channel split", r, 2.0)
        if "efficientnet" in only:
            out["efficientnet"] = r = bench_split("efficientnet", 2, tmp, rounds, n)
            report_split("EfficientNet-Lite0, 224x224, 2-device channel split", r, 1.5)
        if "before-after" in only:
            for which, n_dev, title in (("minilm", 3, "MiniLM, 3 devices"), ("efficientnet", 2, "EfficientNet-Lite0, 2 devices")):
                out[f"before_after_{which}"] = r = bench_before_after(which, n_dev, tmp, rounds, n)
                report_before_after(title, r)
    console.print(f"written to {save('exchange', out)}")


if __name__ == "__main__":
    main()

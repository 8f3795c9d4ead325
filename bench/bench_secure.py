"""What encrypting the links costs: CURVE (the default) vs --insecure, side by side in one run (issue 15).

    python bench/bench_secure.py [--quick] [--rounds N] [--only pipeline,wire,agents-wire]

pipeline     EfficientNet-Lite0 split after block 8 over 2 devices, both `edgepart run` (1 thread each,
             device-a pinned to core 0, device-b to core 1), the app in this process on core 0: sequential
             latency (median of single InferenceSession.run calls) and throughput (img/s with 8 requests
             in flight via submit). The model is packaged twice, under two model names so the two plans
             have different plan ids and both clusters run at once without seeing each other: one sealed
             as `edgepart package` does by default (CURVE keys), one sealed Sealing(insecure=True) and run
             with --insecure. Three sessions: on the CURVE cluster as an app on device-a's host reaches it
             (its local socket, docs/agents.md "On one host": the default for an app beside its first
             stage), on the CURVE cluster as an app on another host does (EDGEPART_LOCAL_IPC=0: CURVE on
             TCP), and on the --insecure cluster. Goals, each CURVE session against --insecure: latency
             <= +0.2 ms, throughput >= 0.95x.
wire         raw pyzmq DEALER (this process, core 0) <-> ROUTER (a process on core 1) on loopback, 8 MB
             messages, plaintext vs CURVE (keys from zmq.curve_keypair(), no ZAP): MB/s up (DEALER ->
             ROUTER, then one ack) and down (one request, then the ROUTER sends them all).
agents-wire  8 MB float32 tensors one way into an `edgepart run` agent (core 1) from a session (core 0),
             the same three sessions (the agent does an O(1) Slice on the frame and answers one float).

Every comparison runs in rounds, the sides interleaved and their order rotated each round, so a
shared, noisy machine hits them alike; the figures are
medians over rounds, with the spread (min..max of the round figures). Results: bench/results/secure.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_s, image, median_ms, save, self_cpu_s, wire_model  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console()
SIDES = ("curve", "insecure")  # the two clusters
# the sessions compared: the app on device-a's host (CURVE cluster, its local socket: docs/agents.md,
# "On one host"), the app on another host (the same cluster over CURVE on TCP), and --insecure
SESSIONS = ("curve", "curve-tcp", "insecure")
LABELS = {"curve": "CURVE, app on the host", "curve-tcp": "CURVE, app elsewhere", "insecure": "--insecure"}
LAT_GOAL_MS = 0.2
TPUT_GOAL = 0.95


def pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def unpin() -> None:
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))




def order(r: int, sides: tuple[str, ...] = SIDES) -> tuple[str, ...]:
    """The sides in round r, each round rotated by one and every other one reversed, so none is
    always first or last."""
    k = r % len(sides)
    rot = sides[k:] + sides[:k]
    return rot if r % 2 == 0 else rot[::-1]


def spread(v: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}..{max(v):{fmt}})"


# -- packaging: the same split twice, one plan sealed with keys, one --insecure ----------------------------

def package_pair(model_path: Path, shapes: dict, out: Path, name: str, devices: tuple[str, ...], cut: int | None = None) -> dict:
    """Package `model_path` into out/<name>-curve (default sealing: link keys) and out/<name>-insecure
    (Sealing(insecure=True)); the model names differ, so the plan ids differ. `cut`: split there over
    `devices` (2), else the whole model on the one device. Returns {side: dist}, plan ids."""
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.cost import CostModel
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.seal import Sealing, apply
    from edgepart.packager.strategies.pipeline.compiler import package
    from edgepart.packager.strategies.pipeline.planner import evaluate, plan_pipeline

    model = load_model(model_path)
    graph = analyse(model, shapes)
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": 10} for d in devices],
                                 "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}})
    pp = evaluate(CostModel(graph, cluster), (cut,), devices) if cut is not None else plan_pipeline(graph, cluster)
    dists, ids = {}, {}
    for side in SIDES:
        d = out / f"{name}-{side}"
        pk = package(model, graph, cluster, pp, d, model_name=f"{name}-{side}")
        if side == "insecure":
            apply(d, pk.bundle_dirs, pk.plan, Sealing(insecure=True))
        dists[side], ids[side] = d, pk.plan.plan_id
    assert ids["curve"] != ids["insecure"], "both plans got the same plan id"
    assert (dists["curve"] / "app.key").is_file() and not (dists["insecure"] / "app.key").exists()
    return {"dists": dists, "plan_ids": ids, "graph": graph}


def block8_cut(graph) -> int:
    """The first cut where exactly one [1,112,14,14] float32 tensor crosses (as common.efficientnet_block8_split)."""
    for c in range(1, graph.n):
        big = [t for t in graph.crossing(c) if graph.tensor_bytes.get(t, 0) > 64]
        if len(big) == 1 and graph.tensor_bytes[big[0]] == 112 * 14 * 14 * 4 and graph.specs[big[0]].shape[1] == 112:
            return c
    raise AssertionError("no cut with exactly one [1,112,14,14] tensor crossing")


def start_clusters(stack: ExitStack, dists: dict, cpus: dict, devices=None, timeout_s: float = 30) -> dict:
    """Both clusters' agents (`edgepart run`, 1 thread, pinned) and a session on each, all stopped by `stack`."""
    import edgepart
    from edgepart.testing.emulate import AgentProcesses

    out = {}
    for side in SIDES:
        extra = ["--insecure"] if side == "insecure" else []
        procs = AgentProcesses(dists[side], interface="127.0.0.1", threads=1, cpus=cpus, extra=extra, devices=devices)
        stack.callback(procs.stop)  # registered first: stop() is safe on agents never started
        procs.start()
        procs.wait_ready(30)
        sess = edgepart.InferenceSession(dists[side], interface="127.0.0.1", timeout_s=timeout_s,
                                         insecure=side == "insecure")
        stack.callback(sess.close)
        out[side] = (procs, sess)
        if side == "curve":  # the same cluster, as an app on another host reaches it
            os.environ["EDGEPART_LOCAL_IPC"] = "0"
            try:
                tcp = edgepart.InferenceSession(dists[side], interface="127.0.0.1", timeout_s=timeout_s)
            finally:
                del os.environ["EDGEPART_LOCAL_IPC"]
            stack.callback(tcp.close)
            out["curve-tcp"] = (procs, tcp)
    return out


# -- 1. the 2-device pipeline ------------------------------------------------------------------------------

def stream(sess, feed: dict, n: int, window: int = 8) -> float:
    """img/s with `window` requests in flight."""
    q: deque = deque()
    t0 = time.perf_counter()
    for _ in range(n):
        if len(q) >= window:
            q.popleft().result(60)
        q.append(sess.submit(feed))
    while q:
        q.popleft().result(60)
    return n / (time.perf_counter() - t0)


def bench_pipeline(tmp: Path, rounds: int, n_lat: int, n_stream: int) -> dict:
    from edgepart.testing import zoo
    from edgepart.packager.model.graph import analyse, load_model

    path = zoo.efficientnet_lite0()
    shapes = {"input": (1, 3, 224, 224)}
    cut = block8_cut(analyse(load_model(path), shapes))
    pk = package_pair(path, shapes, tmp, "efficientnet-lite0-block8", ("device-a", "device-b"), cut)
    x = {"input": image()}
    res: dict[str, dict[str, list]] = {s: {k: [] for k in ("ms", "tput", "app_cpu", "s0_cpu", "s1_cpu")} for s in SESSIONS}
    pin(0)  # the app shares device-a's core, as bench_agents' plain path
    try:
        with ExitStack() as stack:
            cl = start_clusters(stack, pk["dists"], {"device-a": 0, "device-b": 1})
            ref = None
            for side in SESSIONS:  # warm each, and check they compute the same thing
                sess = cl[side][1]
                for _ in range(5):
                    y = sess.run(None, x)[0]
                stream(sess, x, 16)
                ref = y if ref is None else ref
                assert np.allclose(y, ref, atol=1e-5), "the two clusters disagree"
            for r in range(rounds):
                for side in order(r, SESSIONS):
                    sess = cl[side][1]
                    res[side]["ms"].append(median_ms(lambda: sess.run(None, x), n_lat, warmup=3))
                for side in order(r, SESSIONS):
                    procs, sess = cl[side]
                    pa, pb = procs.agents["device-a"].proc.pid, procs.agents["device-b"].proc.pid
                    before = (self_cpu_s(), cpu_s(pa), cpu_s(pb))
                    res[side]["tput"].append(stream(sess, x, n_stream))
                    after = (self_cpu_s(), cpu_s(pa), cpu_s(pb))
                    for k, b, a in zip(("app_cpu", "s0_cpu", "s1_cpu"), before, after):
                        res[side][k].append((a - b) * 1e3 / n_stream)
                console.print(f"  pipeline round {r + 1}/{rounds}: " + ", ".join(
                    f"{s} {res[s]['ms'][-1]:.2f} ms {res[s]['tput'][-1]:.1f} img/s" for s in SESSIONS))
    finally:
        unpin()
    m: dict = {"cut": cut, "plan_ids": pk["plan_ids"], "n_lat": n_lat, "n_stream": n_stream, "in_flight": 8, "rounds": res}
    for s in SESSIONS:
        for k, v in res[s].items():
            m[f"{s}_{k}"] = statistics.median(v)
    for s, tag in (("curve", ""), ("curve-tcp", "_tcp")):  # each CURVE session against --insecure
        m[f"latency_diff{tag}_ms"] = m[f"{s}_ms"] - m["insecure_ms"]
        m[f"latency_diff{tag}_paired_ms"] = statistics.median(c - p for c, p in zip(res[s]["ms"], res["insecure"]["ms"]))
        m[f"throughput_ratio{tag}"] = m[f"{s}_tput"] / m["insecure_tput"]
        m[f"throughput_ratio{tag}_paired"] = statistics.median(c / p for c, p in zip(res[s]["tput"], res["insecure"]["tput"]))
        m[f"latency_goal{tag}_met"] = m[f"latency_diff{tag}_ms"] <= LAT_GOAL_MS
        m[f"throughput_goal{tag}_met"] = m[f"throughput_ratio{tag}"] >= TPUT_GOAL
    return m


# -- 2. raw pyzmq, 8 MB, plaintext vs CURVE ----------------------------------------------------------------

WIRE_SERVER = r"""
import os, sys, zmq
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
pub = b"-"
if mode == "curve":  # a CURVE server without a ZAP handler accepts any client key
    pub, sec = zmq.curve_keypair()
    s.curve_server = True
    s.curve_secretkey = sec
    s.curve_publickey = pub
s.bind(f"tcp://127.0.0.1:{port}")
print("ready", pub.decode(), flush=True)
payload = b""
while True:
    f = s.recv_multipart(copy=False)
    ident, cmd = f[0].bytes, f[1].bytes
    if cmd == b"up":
        continue
    if cmd == b"ack":
        s.send_multipart([ident, b"ok"])
    elif cmd == b"down":
        n, size = map(int, f[2].bytes.split())
        if len(payload) != size:
            payload = os.urandom(size)
        for _ in range(n):
            s.send_multipart([ident, b"data", payload], copy=False)
    elif cmd == b"quit":
        s.send_multipart([ident, b"bye"])
        break
ctx.destroy(linger=0)
"""


class WireClient:
    def __init__(self, ctx, port: int, server_key: str):
        import zmq

        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        if server_key != "-":
            pub, sec = zmq.curve_keypair()
            self.s.curve_serverkey = server_key.encode()
            self.s.curve_publickey = pub
            self.s.curve_secretkey = sec
        self.s.connect(f"tcp://127.0.0.1:{port}")
        self.s.rcvtimeo = 60_000

    def up(self, payload: bytes, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.s.send_multipart([b"up", payload], copy=False)
        self.s.send(b"ack")
        assert self.s.recv() == b"ok"
        return n * len(payload) / (time.perf_counter() - t0) / 1e6

    def down(self, size: int, n: int) -> float:
        t0 = time.perf_counter()
        self.s.send_multipart([b"down", f"{n} {size}".encode()])
        for _ in range(n):
            f = self.s.recv_multipart(copy=False)
            assert len(f[1]) == size
        return n * size / (time.perf_counter() - t0) / 1e6

    def quit(self) -> None:
        self.s.send(b"quit")
        self.s.recv()


def bench_wire(rounds: int, n: int, size: int = 8 * 1024 * 1024) -> dict:
    import zmq

    ports = {"insecure": 5811, "curve": 5812}
    res = {s: {"up": [], "down": []} for s in SIDES}
    payload = os.urandom(size)
    ctx = zmq.Context()
    servers: dict[str, subprocess.Popen] = {}
    clients: dict[str, WireClient] = {}
    pin(0)
    try:
        for side in SIDES:
            servers[side] = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", WIRE_SERVER, str(ports[side]),
                                              "curve" if side == "curve" else "plain"], stdout=subprocess.PIPE, text=True)
            line = servers[side].stdout.readline().split()
            assert line and line[0] == "ready", f"wire server ({side}) did not start"
            clients[side] = WireClient(ctx, ports[side], line[1])
            clients[side].up(payload, 2)  # handshake and warm-up
            clients[side].down(size, 2)
        for r in range(rounds):
            for side in order(r):
                res[side]["up"].append(clients[side].up(payload, n))
            for side in order(r):
                res[side]["down"].append(clients[side].down(size, n))
        for side in SIDES:
            clients[side].quit()
    finally:
        for p in servers.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        ctx.destroy(linger=0)
        unpin()
    m: dict = {"size_bytes": size, "messages": n, "rounds": res}
    for s in SIDES:
        for k, v in res[s].items():
            m[f"{s}_{k}_MBps"] = statistics.median(v)
    for k in ("up", "down"):
        m[f"{k}_ratio"] = m[f"curve_{k}_MBps"] / m[f"insecure_{k}_MBps"]
    return m


# -- 3. 8 MB into an agent, CURVE vs --insecure ---------------------------------------------------------------

def bench_agents_wire(tmp: Path, rounds: int, n: int, mb: int = 8) -> dict:
    nf = mb * 1024 * 1024 // 4
    pk = package_pair(wire_model(tmp / f"wire{mb}.onnx", nf), {"x": (nf,)}, tmp, f"wire{mb}", ("device-b",))
    x = {"x": np.random.default_rng(0).standard_normal(nf).astype(np.float32)}
    res: dict[str, list] = {s: [] for s in SESSIONS}
    pin(0)
    try:
        with ExitStack() as stack:
            cl = start_clusters(stack, pk["dists"], {"device-b": 1}, timeout_s=120)
            for side in SESSIONS:
                for _ in range(3):
                    cl[side][1].run(None, x)
            for r in range(rounds):
                for side in order(r, SESSIONS):
                    sess = cl[side][1]
                    t0 = time.perf_counter()
                    futs = [sess.submit(x) for _ in range(n)]
                    for f in futs:
                        f.result(120)
                    res[side].append(n * x["x"].nbytes / (time.perf_counter() - t0) / 1e6)
    finally:
        unpin()
    m: dict = {"size_bytes": x["x"].nbytes, "messages": n, "plan_ids": pk["plan_ids"], "rounds": res}
    for s in SESSIONS:
        m[f"{s}_MBps"] = statistics.median(res[s])
    m["ratio"] = m["curve_MBps"] / m["insecure_MBps"]
    m["ratio_tcp"] = m["curve-tcp_MBps"] / m["insecure_MBps"]
    return m


def yes(ok: bool) -> str:
    return "[green]MET[/]" if ok else "[red]NOT MET[/]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run to check it works (2 rounds, few requests)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of each comparison (default 6, --quick 2)")
    ap.add_argument("--n-lat", type=int, default=None, help="single requests per latency figure (default 60, --quick 20)")
    ap.add_argument("--n-stream", type=int, default=None, help="requests per throughput figure (default 150, --quick 40)")
    ap.add_argument("--n-wire", type=int, default=20, help="8 MB messages per wire figure, each way (default 20)")
    ap.add_argument("--only", default="pipeline,wire,agents-wire")
    a = ap.parse_args()
    only = set(a.only.split(","))
    rounds = a.rounds or (2 if a.quick else 6)
    n_lat = a.n_lat or (20 if a.quick else 60)
    n_stream = a.n_stream or (40 if a.quick else 150)
    n_wire = a.n_wire if not a.quick else min(a.n_wire, 10)
    out: dict = {"cpus": os.cpu_count(), "quick": a.quick, "rounds": rounds, "loadavg_before": os.getloadavg()}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        if "pipeline" in only:
            m = bench_pipeline(tmp, rounds, n_lat, n_stream)
            out["pipeline"] = m
            r = m["rounds"]
            t = Table(title=f"EfficientNet-Lite0, 2 devices (`edgepart run`, 1 thread, cores 0/1), app on core 0; "
                            f"median (min..max) of {rounds} rounds", title_justify="left")
            for c in ("", f"latency ms (median of {n_lat})", f"img/s ({n_stream}, 8 in flight)",
                      "CPU ms/img: app", "device-a", "device-b"):
                t.add_column(c, justify="right")
            for s in SESSIONS:
                t.add_row(LABELS[s], spread(r[s]["ms"]), spread(r[s]["tput"], ".1f"),
                          f"{m[f'{s}_app_cpu']:.2f}", f"{m[f'{s}_s0_cpu']:.2f}", f"{m[f'{s}_s1_cpu']:.2f}")
            console.print(t)
            for s, tag in (("curve", ""), ("curve-tcp", "_tcp")):
                console.print(f"{LABELS[s]}: latency - insecure {m[f'latency_diff{tag}_ms']:+.3f} ms (paired per round: "
                              f"{m[f'latency_diff{tag}_paired_ms']:+.3f}), goal <= +{LAT_GOAL_MS} ms: "
                              f"{yes(m[f'latency_goal{tag}_met'])}; throughput / insecure {m[f'throughput_ratio{tag}']:.3f}x "
                              f"(paired {m[f'throughput_ratio{tag}_paired']:.3f}x), goal >= {TPUT_GOAL}: "
                              f"{yes(m[f'throughput_goal{tag}_met'])}")
        if "wire" in only:
            w = bench_wire(rounds, n_wire)
            out["wire"] = w
            t = Table(title=f"raw pyzmq DEALER (core 0) <-> ROUTER (core 1), loopback, {n_wire} x 8 MB each way; "
                            f"MB/s median (min..max) of {rounds} rounds", title_justify="left")
            for c in ("", "plaintext MB/s", "CURVE MB/s", "CURVE / plaintext"):
                t.add_column(c, justify="right")
            for k, label in (("up", "DEALER -> ROUTER"), ("down", "ROUTER -> DEALER")):
                t.add_row(label, spread(w["rounds"]["insecure"][k], ".0f"), spread(w["rounds"]["curve"][k], ".0f"),
                          f"{w[f'{k}_ratio']:.3f}")
            console.print(t)
        if "agents-wire" in only:
            g = bench_agents_wire(tmp, rounds, n_wire)
            out["agents_wire"] = g
            t = Table(title=f"8 MB float32 into an `edgepart run` agent (core 1) from a session (core 0), {n_wire} "
                            f"per figure; MB/s median (min..max) of {rounds} rounds", title_justify="left")
            for c in ("session -> agent", "MB/s", "/ insecure"):
                t.add_column(c, justify="right")
            for s, ratio in (("insecure", 1.0), ("curve", g["ratio"]), ("curve-tcp", g["ratio_tcp"])):
                t.add_row(LABELS[s], spread(g["rounds"][s], ".0f"), f"{ratio:.3f}")
            console.print(t)
    out["loadavg_after"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - t_start
    console.print(f"cores {os.cpu_count()}, load average before {out['loadavg_before'][0]:.1f}, after "
                  f"{out['loadavg_after'][0]:.1f} (a busy machine stretches every figure); {out['seconds']:.0f} s")
    p = save("secure", out)
    console.print(f"results: {p}")


if __name__ == "__main__":
    main()

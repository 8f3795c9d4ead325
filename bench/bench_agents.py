"""Agents vs the bare floor, each figure a ratio measured side by side in one run.

    python bench/bench_agents.py [--quick] [--only plain,wire,overhead,pipeline,slowlink]

plain      the path users meet first: EfficientNet-Lite0 split after block 8, both devices
           `edgepart run` with DEFAULT flags, each pinned to its own core, the app a separate
           process (this one) on the first device's core calling InferenceSession.run / submit;
           vs the bare pipe of the same shape (app + one process per stage, raw pyzmq, 1 thread
           each; goal: latency <= bare + 0.3 ms, throughput >= 0.95x) and vs the 2-process bare
           pipe whose driver is stage 0 (bench/bare_pipe.py's BareHead)
wire       one-way throughput of 1 MB and 8 MB float32 tensors between two agents on loopback, as a
           fraction of a raw pyzmq zero-copy send of the same bytes (goal >= 0.9)
overhead   EfficientNet-Lite0 split after block 8 through agents (the caller's process embeds the
           first agent; the second is an `edgepart run` process; 1 thread each, pinned to its own
           core) vs the bare 2-process pipe of bench/bare_pipe.py (goal: latency <= bare + 0.3 ms,
           throughput >= 0.95x bare), and vs one onnxruntime session with 2 threads
pipeline   streamed throughput of the same 2-device split as a fraction of 1 / (slowest stage time),
           the stage times measured in the same run (goal >= 0.95)
slowlink   the same over a 50 Mbit/s tbf-shaped link between network namespaces: latency and
           throughput vs the physical floor, stage compute + bytes / bandwidth (goal: within 1.1x)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_s, efficientnet_block8_split, image, median_ms, save, self_cpu_s  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console()


def pin(core: int) -> None:
    os.sched_setaffinity(0, {core})




def bench_overhead(dist: Path, rounds: int, n_lat: int, n_stream: int) -> dict:
    import edgepart
    from edgepart.agent import Agent
    from edgepart.testing.emulate import AgentProcesses

    from bare_pipe import BareHead, session

    a_model = str(dist / "device-a" / "stage0.onnx")
    b_model = str(dist / "device-b" / "stage1.onnx")
    x = image()
    res = {"bare_ms": [], "agents_ms": [], "bare_tput": [], "agents_tput": [], "single_ms": [], "single_tput": [],
           "stage0_ms": [], "stage1_ms": [], "bare_core1_ms": [], "agents_core1_ms": []}
    s0, s1 = session(a_model, 1), session(b_model, 1)
    mid = dict(zip([o.name for o in s0.get_outputs()], s0.run(None, {"input": x})))
    pin(0)
    port = 5590
    tail = subprocess.Popen(["taskset", "-c", "1", sys.executable, str(REPO / "bench" / "bare_pipe.py"), "tail",
                             "--model", b_model, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    tail.stdout.readline()
    bare = BareHead(a_model, port)
    procs = AgentProcesses(dist, interface="127.0.0.1", threads=1, cpus={"device-b": 1}, devices=["device-b"]).start()
    b_pid = procs.agents["device-b"].proc.pid
    agent = Agent(dist / "device-a", interface="127.0.0.1", threads=1).start()
    sess = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=30)
    from edgepart.testing import zoo

    single = session(str(zoo.efficientnet_lite0()), 2)
    try:
        for r in range(rounds):
            res["bare_ms"].append(median_ms(lambda: bare.one(x), n_lat))
            res["agents_ms"].append(median_ms(lambda: sess.run(None, {"input": x}), n_lat))
            c0 = cpu_s(tail.pid)
            res["bare_tput"].append(bare.stream(x, n_stream))
            res["bare_core1_ms"].append((cpu_s(tail.pid) - c0) * 1e3 / n_stream)
            c0 = cpu_s(b_pid)
            t0 = time.perf_counter()
            futs = [sess.submit({"input": x}) for _ in range(n_stream)]
            for f in futs:
                f.result(60)
            res["agents_tput"].append(n_stream / (time.perf_counter() - t0))
            res["agents_core1_ms"].append((cpu_s(b_pid) - c0) * 1e3 / n_stream)
            res["stage0_ms"].append(median_ms(lambda: s0.run(None, {"input": x}), n_lat))
            pin(1)
            res["stage1_ms"].append(median_ms(lambda: s1.run(None, mid), n_lat))
            os.sched_setaffinity(0, {0, 1})
            res["single_ms"].append(median_ms(lambda: single.run(None, {"input": x}), n_lat))
            t0 = time.perf_counter()
            for _ in range(n_stream):
                single.run(None, {"input": x})
            res["single_tput"].append(n_stream / (time.perf_counter() - t0))
            pin(0)
    finally:
        sess.close()
        agent.stop()
        procs.stop()
        bare.close()
        tail.wait(10)
        os.sched_setaffinity(0, {0, 1})
    m = {k: statistics.median(v) for k, v in res.items()}
    m["latency_over_bare_ms"] = m["agents_ms"] - m["bare_ms"]
    m["throughput_vs_bare"] = m["agents_tput"] / m["bare_tput"]
    m["floor_tput"] = 1e3 / max(m["stage0_ms"], m["stage1_ms"])
    m["pipeline_fraction"] = m["agents_tput"] / m["floor_tput"]
    m["bare_pipeline_fraction"] = m["bare_tput"] / m["floor_tput"]
    m["rounds"] = res
    return m


RAW_RECEIVER = r"""
import sys, time, zmq
n, port = int(sys.argv[1]), int(sys.argv[2])
ctx = zmq.Context(); s = ctx.socket(zmq.PULL); s.bind(f"tcp://127.0.0.1:{port}")
print("ready", flush=True)
s.recv_multipart(copy=False)  # warm-up message
t0 = time.perf_counter()
for _ in range(n):
    s.recv_multipart(copy=False)
print(time.perf_counter() - t0, flush=True)
"""


def bench_plain(dist: Path, rounds: int, n_lat: int, n_stream: int, threads: int = 0) -> dict:
    """Default-flag agents and a separate app process, against bare pipes, in alternating blocks."""
    import edgepart
    from edgepart.testing.emulate import AgentProcesses

    from bare_pipe import BareApp, BareHead

    a_model = str(dist / "device-a" / "stage0.onnx")
    b_model = str(dist / "device-b" / "stage1.onnx")
    x = image()
    pin(0)  # the app shares the first device's core, as on a camera board running device-a
    script = str(REPO / "bench" / "bare_pipe.py")
    bare = [subprocess.Popen(["taskset", "-c", "1", sys.executable, script, "tail", "--model", b_model, "--port", "5630"],
                             stdout=subprocess.PIPE, text=True),
            subprocess.Popen(["taskset", "-c", "0", sys.executable, script, "tail", "--model", a_model, "--port", "5620",
                              "--to", "5630"], stdout=subprocess.PIPE, text=True),
            subprocess.Popen(["taskset", "-c", "1", sys.executable, script, "tail", "--model", b_model, "--port", "5640"],
                             stdout=subprocess.PIPE, text=True)]
    for p in bare:
        p.stdout.readline()
    app3 = BareApp(5620, 5631)
    head2 = BareHead(a_model, 5640)
    procs = AgentProcesses(dist, interface="127.0.0.1", threads=threads, cpus={"device-a": 0, "device-b": 1}).start()
    procs.wait_ready(30)
    sess = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=30)
    keys = ("bare_ms", "agents_ms", "bare2_ms", "bare_tput", "agents_tput", "bare2_tput",
            "bare_app_cpu", "bare_s0_cpu", "bare_s1_cpu", "agents_app_cpu", "agents_s0_cpu", "agents_s1_cpu")
    res: dict[str, list] = {k: [] for k in keys}
    pids = {"agents": (procs.agents["device-a"].proc.pid, procs.agents["device-b"].proc.pid),
            "bare": (bare[1].pid, bare[0].pid)}

    def with_cpu(what: str, stream) -> float:
        """Run a streamed block; record each process's CPU ms per request (the app's, each stage's):
        what the throughput gap costs in work, which the machine's load does not move much."""
        s0, s1 = pids[what]
        before = (self_cpu_s(), cpu_s(s0), cpu_s(s1))
        tput = stream()
        after = (self_cpu_s(), cpu_s(s0), cpu_s(s1))
        for k, b, a in zip(("app", "s0", "s1"), before, after):
            res[f"{what}_{k}_cpu"].append((a - b) * 1e3 / n_stream)
        return tput

    def stream_agents() -> float:
        t0 = time.perf_counter()
        futs = [sess.submit({"input": x}) for _ in range(n_stream)]
        for f in futs:
            f.result(60)
        return n_stream / (time.perf_counter() - t0)

    try:
        for _ in range(rounds):  # blocks alternate, so all three see the same moments of the machine
            res["bare_ms"].append(median_ms(lambda: app3.one(x), n_lat))
            res["agents_ms"].append(median_ms(lambda: sess.run(None, {"input": x}), n_lat))
            res["bare2_ms"].append(median_ms(lambda: head2.one(x), n_lat))
            res["bare_tput"].append(with_cpu("bare", lambda: app3.stream(x, n_stream)))
            res["agents_tput"].append(with_cpu("agents", stream_agents))
            res["bare2_tput"].append(head2.stream(x, n_stream))
        line = next(x for x in procs.agents["device-a"].lines if x.startswith("edgepart-agent device="))
        agent_threads = int(line.split("threads=")[1].split()[0])
    finally:
        sess.close()
        procs.stop()
        app3.close()
        head2.close()
        for p in bare:
            p.wait(10)
        os.sched_setaffinity(0, {0, 1})
    m = {k: statistics.median(v) for k, v in res.items()}
    m["latency_over_bare_ms"] = m["agents_ms"] - m["bare_ms"]
    m["throughput_vs_bare"] = m["agents_tput"] / m["bare_tput"]
    m["latency_over_bare2_ms"] = m["agents_ms"] - m["bare2_ms"]
    m["throughput_vs_bare2"] = m["agents_tput"] / m["bare2_tput"]
    m["agent_threads"] = agent_threads
    m["rounds"] = res
    return m


def bench_wire(tmp: Path, sizes_mb=(1, 8), n: int = 200, rounds: int = 3) -> dict:
    """Bytes per second into an agent vs a raw pyzmq zero-copy PUSH/PULL of the same bytes.

    The sender is the caller's link (the same DEALER link and framing an agent uses to send to a
    peer); the receiver is a real `edgepart run` process that validates the message and runs its step
    (an O(1) Slice on a view of the frame). Sender on core 0, receiver on core 1, as for raw pyzmq."""
    import edgepart
    from common import package_one, wire_model
    from edgepart.testing.emulate import AgentProcesses

    import msgpack
    import zmq

    out = {}
    pin(0)
    for mb in sizes_mb:
        nf = mb * 1024 * 1024 // 4
        dist = tmp / f"wire{mb}"
        package_one(wire_model(tmp / f"wire{mb}.onnx", nf), dist, {"x": (nf,)})
        x = np.random.default_rng(0).standard_normal(nf).astype(np.float32)
        raw, ours = [], []
        procs = AgentProcesses(dist, interface="127.0.0.1", threads=1, cpus={"device-b": 1}).start()
        sess = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=60)
        try:
            for _ in range(rounds):
                port = 5700 + mb
                rx = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", RAW_RECEIVER, str(n), str(port)],
                                      stdout=subprocess.PIPE, text=True)
                rx.stdout.readline()
                ctx = zmq.Context()
                tx = ctx.socket(zmq.PUSH)
                tx.connect(f"tcp://127.0.0.1:{port}")
                head = msgpack.packb({"n": "y", "d": "float32", "sh": [nf]})
                for _ in range(n + 1):
                    tx.send_multipart([head, x], copy=False)
                secs = float(rx.stdout.readline())
                rx.wait(30)
                ctx.destroy(linger=1000)
                raw.append(n * x.nbytes / secs)
                sess.run(None, {"x": x})
                t0 = time.perf_counter()
                futs = [sess.submit({"x": x}) for _ in range(n)]
                for f in futs:
                    f.result(120)
                ours.append(n * x.nbytes / (time.perf_counter() - t0))
        finally:
            sess.close()
            procs.stop()
        r, o = statistics.median(raw), statistics.median(ours)
        out[f"{mb}MB"] = {"raw_GBps": r / 1e9, "agents_GBps": o / 1e9, "fraction": o / r, "rounds_raw": raw, "rounds_agents": ours}
    os.sched_setaffinity(0, {0, 1})
    return out


def bench_slowlink(dist: Path, crossing: dict, rate_mbit: float = 50.0, n_lat: int = 20, n_stream: int = 60) -> dict:
    """Two namespaces joined by a tbf-shaped link; the caller (with device-a embedded) in one,
    device-b in the other: measured vs the physical floor, stage times measured in the same run."""
    from edgepart.testing import netns
    from edgepart.testing.emulate import AgentProcesses

    why = netns.available()
    if why:
        raise SystemExit(f"slowlink needs network namespaces: {why}")
    with netns.EmulatedLan(2, rate_mbit=rate_mbit) as lan:
        caller, far = lan.hosts
        procs = AgentProcesses(dist, hosts={"device-b": far}, threads=1, cpus={"device-b": 1}, devices=["device-b"]).start()
        try:
            res = caller.run([sys.executable, str(REPO / "bench" / "slowlink_client.py"), str(dist), caller.ip,
                              str(n_lat), str(n_stream)], timeout_s=600, capture_output=True, text=True)
        finally:
            procs.stop()
    if res.returncode != 0:
        raise SystemExit(f"slowlink client failed:\n{res.stdout}\n{res.stderr}")
    m = json.loads(res.stdout.strip().splitlines()[-1])
    cut_bytes = sum(crossing.values())
    link_ms = cut_bytes * 8 / (rate_mbit * 1e6) * 1e3
    out_ms = 1000 * 4 * 8 / (rate_mbit * 1e6) * 1e3  # the logits back to the caller
    m["link_ms"] = link_ms
    m["floor_latency_ms"] = m["stage0_ms"] + link_ms + m["stage1_ms"] + out_ms
    m["floor_throughput"] = 1e3 / max(m["stage0_ms"], m["stage1_ms"], link_ms)
    m["latency_vs_floor"] = m["latency_ms"] / m["floor_latency_ms"]
    m["throughput_floor_ratio"] = m["floor_throughput"] / m["throughput"]
    m["rate_mbit"] = rate_mbit
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="plain,wire,overhead,pipeline,slowlink")
    a = ap.parse_args()
    only = set(a.only.split(","))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp) / "dist"
        _, info = efficientnet_block8_split(dist)
        out["split"] = info
        if "plain" in only:
            out["plain"] = {}
            for threads, label in ((0, "default flags"), (1, "--threads 1")):
                m = bench_plain(dist, 2 if a.quick else 5, 30 if a.quick else 100, 100 if a.quick else 300, threads)
                out["plain"][label] = m
                t = Table(title=f"the plain path ({label}): 2 `edgepart run`, the app in its own process",
                          title_justify="left")
                for c in ("", "latency ms", "img/s", "CPU ms/img: app", "stage 0", "core 0 (app + stage 0)", "core 1"):
                    t.add_column(c, justify="right")

                def cpu(what):
                    app, s0, s1 = (m[f"{what}_{k}_cpu"] for k in ("app", "s0", "s1"))
                    return f"{app:.2f}", f"{s0:.2f}", f"{app + s0:.2f}", f"{s1:.2f}"

                t.add_row("bare, same shape (app + 2 stages)", f"{m['bare_ms']:.2f}", f"{m['bare_tput']:.1f}", *cpu("bare"))
                t.add_row(f"edgepart ({m['agent_threads']} thread/agent)", f"{m['agents_ms']:.2f}", f"{m['agents_tput']:.1f}",
                          *cpu("agents"))
                t.add_row("bare 2-process, stage 0 drives", f"{m['bare2_ms']:.2f}", f"{m['bare2_tput']:.1f}", "", "", "", "")
                console.print(t)
                console.print(f"vs bare of the same shape: latency {m['latency_over_bare_ms']:+.3f} ms (goal <= +0.3), "
                              f"throughput {m['throughput_vs_bare']:.3f}x (goal >= 0.95); vs the 2-process pipe: "
                              f"{m['latency_over_bare2_ms']:+.3f} ms, {m['throughput_vs_bare2']:.3f}x")
        if "wire" in only:
            w = bench_wire(Path(tmp), n=60 if a.quick else 200, rounds=2 if a.quick else 3)
            out["wire"] = w
            t = Table(title="wire: one-way throughput into an agent vs raw pyzmq zero-copy", title_justify="left")
            for c in ("size", "raw pyzmq GB/s", "agents GB/s", "fraction (goal >= 0.9)"):
                t.add_column(c, justify="right")
            for k, v in w.items():
                t.add_row(k, f"{v['raw_GBps']:.2f}", f"{v['agents_GBps']:.2f}", f"{v['fraction']:.2f}")
            console.print(t)
        if "overhead" in only:
            m = bench_overhead(dist, 2 if a.quick else 5, 30 if a.quick else 100, 100 if a.quick else 300)
            out["overhead"] = m
            t = Table(title="EfficientNet-Lite0 split after block 8: agents vs bare pipe vs one session", title_justify="left")
            for c in ("", "latency ms", "throughput img/s"):
                t.add_column(c, justify="right")
            t.add_row("bare 2-process pipe", f"{m['bare_ms']:.2f}", f"{m['bare_tput']:.1f}")
            t.add_row("edgepart agents", f"{m['agents_ms']:.2f}", f"{m['agents_tput']:.1f}")
            t.add_row("one session, 2 threads", f"{m['single_ms']:.2f}", f"{m['single_tput']:.1f}")
            console.print(t)
            console.print(f"latency over bare: {m['latency_over_bare_ms']:+.3f} ms (goal <= +0.3); "
                          f"throughput vs bare: {m['throughput_vs_bare']:.3f}x (goal >= 0.95)")
            console.print(f"pipelining: stages {m['stage0_ms']:.2f} / {m['stage1_ms']:.2f} ms (1 thread, own core) -> floor "
                          f"{m['floor_tput']:.1f} img/s; agents stream {m['pipeline_fraction']:.3f} of it (goal >= 0.95), "
                          f"the bare pipe {m['bare_pipeline_fraction']:.3f}")
            console.print(f"while streaming, core 1's process used {m['bare_core1_ms']:.2f} ms of CPU per image in the bare "
                          f"pipe and {m['agents_core1_ms']:.2f} ms in device-b's agent, against the stage's "
                          f"{m['stage1_ms']:.2f} ms alone")
        if "slowlink" in only:
            m = bench_slowlink(dist, info["crossing_bytes"], 50.0, 10 if a.quick else 30, 40 if a.quick else 100)
            out["slowlink"] = m
            t = Table(title="over a 50 Mbit/s tbf-shaped link between namespaces vs the physical floor", title_justify="left")
            for c in ("", "measured", "floor", "ratio (goal <= 1.1)"):
                t.add_column(c, justify="right")
            t.add_row("latency ms", f"{m['latency_ms']:.2f}", f"{m['floor_latency_ms']:.2f}", f"{m['latency_vs_floor']:.3f}")
            t.add_row("throughput img/s", f"{m['throughput']:.1f}", f"{m['floor_throughput']:.1f}", f"{m['throughput_floor_ratio']:.3f}")
            console.print(t)
            console.print(f"stages {m['stage0_ms']:.2f} + {m['stage1_ms']:.2f} ms, link {m['link_ms']:.2f} ms for "
                          f"{sum(info['crossing_bytes'].values())} bytes at 50 Mbit/s")
    save("agents", out)


if __name__ == "__main__":
    main()

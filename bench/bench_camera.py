"""The camera detection sample's frame rate and latency for 1, 2 and 3 emulated devices, side by side.

    python bench/bench_camera.py [--quick] [--only loopback,lan]

RetinaFace-MobileNet0.25 at 480x640 (samples/camera_detection), packaged by the sample for N equal
devices (the default pipeline strategy, objective throughput). Each device is an `edgepart run`
process with one onnxruntime thread pinned to one core. Frames are the sample's synthetic scenes,
read as fast as the cluster takes them (no drops), through the sample's own Stream: the app's
pre-processing (scale, mean) and post-processing (priors, decoding, NMS) are in every figure.

loopback   all clusters up at once, on 127.0.0.1; the app (this process) pinned to core 0. One device
           has core 1 to itself (the app's work is on another core: the conservative comparison);
           with N devices stage k is on core k mod (cores), so the first stage shares core 0 with
           the app, as a camera board running the first stage would. On a 2-core machine the third
           device shares a core: the 3-device figures measure sharing there, not scaling. The
           configurations take turns in every round (latency: one frame at a time, capture to boxes;
           frame rate: N + 1 frames in flight), so each sees the same moments of a shared machine;
           the figures are the medians over rounds, the ratios are over one device's.
lan        the same over a 100 Mbit/s tbf-shaped link (network namespaces, edgepart.testing.netns):
           the app is `demo.py --bundle` in a namespace of its own, each device in one of its own;
           read from the demo's summary.json. Needs root.

Goal (issue 14): 2 devices' frame rate >= 1.6x one device's on loopback. Writes
bench/results/camera.json and bench/results/camera.png.
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
from common import REPO, RESULTS, save  # noqa: E402

SAMPLE = REPO / "samples" / "camera_detection"
sys.path.insert(0, str(SAMPLE))

import demo  # noqa: E402
import sources  # noqa: E402
import stream  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console()
HW = (480, 640)
GOAL = 1.6
COUNTS = (1, 2, 3)


class Replay:
    live, name = False, "replay"

    def __init__(self, frames, n):
        self.frames, self.n, self.k = frames, n, 0

    def read(self):
        if self.k >= self.n:
            return None
        f = self.frames[self.k % len(self.frames)]
        self.k += 1
        return sources.Frame(self.k - 1, f.image, truth=f.truth)

    def close(self):
        pass


def stage_devices(dist: Path) -> list[str]:
    """The devices in stage order (the packager names devices; the planner orders them)."""
    plan = next(iter(demo.bundles_of(dist).values())).plan
    order = []
    for s in plan.steps:
        if s.device not in order:
            order.append(s.device)
    return order


def run_stream(sess, frames, n_frames: int, in_flight: int) -> tuple[float, list[float]]:
    st = stream.Stream(sess, hw=HW, in_flight=in_flight, deadline_s=30)
    t0 = time.perf_counter()
    lat = []
    for r in st.results(Replay(frames, n_frames), frames=n_frames):
        if r.error:
            raise SystemExit(f"frame {r.frame.index} failed: {r.error}")
        lat.append(r.latency_ms)
    return n_frames / (time.perf_counter() - t0), lat


def bench_loopback(tmp: Path, rounds: int, n_lat: int, n_stream: int) -> dict:
    import edgepart
    from edgepart.testing.emulate import AgentProcesses

    cores = sorted(os.sched_getaffinity(0))
    frames = [sources.Synthetic(HW, seed=0).read() for _ in range(30)]
    clusters, sessions = {}, {}
    all_procs = []
    try:
        for n in COUNTS:
            dist = demo.package_local(n, HW, tmp / f"dist{n}")
            order = stage_devices(dist)
            if n == 1:
                pins = {order[0]: cores[1 % len(cores)]}
            else:
                pins = {d: cores[k % len(cores)] for k, d in enumerate(order)}
            procs = AgentProcesses(dist, interface="127.0.0.1", threads=1, cpus=pins)
            all_procs.append(procs)
            procs.start(60)
            procs.wait_ready(30)
            clusters[n] = {"dist": dist, "pins": pins}
        os.sched_setaffinity(0, {cores[0]})  # the app
        for n in COUNTS:
            sessions[n] = edgepart.InferenceSession(clusters[n]["dist"], interface="127.0.0.1", timeout_s=30)
            run_stream(sessions[n], frames, 4, n + 1)  # warm-up
        res = {n: {"fps": [], "latency_ms": [], "stream_latency_ms": []} for n in COUNTS}
        for r in range(rounds):
            for n in (COUNTS if r % 2 == 0 else COUNTS[::-1]):  # alternate the order too
                _, lat = run_stream(sessions[n], frames, n_lat, 1)
                res[n]["latency_ms"].append(statistics.median(lat))
                fps, lat = run_stream(sessions[n], frames, n_stream, n + 1)
                res[n]["fps"].append(fps)
                res[n]["stream_latency_ms"].append(statistics.median(lat))
            console.print(f"round {r + 1}/{rounds}: " + "  ".join(f"{n} dev {res[n]['fps'][-1]:.1f} FPS" for n in COUNTS))
    finally:
        for s in sessions.values():
            s.close()
        for p in all_procs:
            p.stop()
        os.sched_setaffinity(0, set(cores))
    prof = {n: demo.profile(demo.bundles_of(clusters[n]["dist"]), HW) for n in COUNTS}
    out = {}
    for n in COUNTS:
        m = {k: statistics.median(v) for k, v in res[n].items()}
        m["rounds"] = res[n]
        m["ratio_fps"] = m["fps"] / statistics.median(res[1]["fps"])
        m["round_ratios"] = [a / b for a, b in zip(res[n]["fps"], res[1]["fps"])]
        m["pins"] = clusters[n]["pins"]
        m["device_ms_alone"] = prof[n]["device_ms"]
        m["link_bytes_per_frame"] = prof[n]["link_bytes"]
        out[str(n)] = m
    return out


def bench_lan(tmp: Path, rate_mbit: float, n_frames: int) -> dict:
    from edgepart.testing import netns
    from edgepart.testing.emulate import AgentProcesses

    why = netns.available()
    if why:
        return {"skipped": why}
    cores = sorted(os.sched_getaffinity(0))
    out = {}
    for n in COUNTS:
        dist = demo.package_local(n, HW, tmp / f"lan{n}")
        order = stage_devices(dist)
        pins = {order[0]: cores[1 % len(cores)]} if n == 1 else {d: cores[k % len(cores)] for k, d in enumerate(order)}
        with netns.EmulatedLan(n + 1, rate_mbit=rate_mbit, prefix="epc") as lan:
            app, hosts = lan.hosts[0], lan.hosts[1:]
            procs = AgentProcesses(dist, hosts=dict(zip(order, hosts)), threads=1, cpus=pins).start(60)
            try:
                procs.wait_ready(30)
                save_dir = tmp / f"lan{n}-out"
                r = app.run(["taskset", "-c", str(cores[0]), sys.executable, str(SAMPLE / "demo.py"), "--bundle", str(dist),
                             "--interface", app.ip, "--headless", "--no-profile", "--frames", str(n_frames),
                             "--deadline-ms", "10000", "--save", str(save_dir)], timeout_s=600, capture_output=True,
                            text=True)
            finally:
                procs.stop()
        if r.returncode != 0:
            raise SystemExit(f"the demo failed over the shaped link:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        s = json.loads((save_dir / "summary.json").read_text())
        out[str(n)] = {"fps": s["fps"], "latency_ms": s["latency_ms"]["p50"], "frames": s["frames_answered"]}
        console.print(f"{rate_mbit:g} Mbit/s, {n} device(s): {s['fps']:.2f} FPS, latency p50 {s['latency_ms']['p50']:.0f} ms")
    for n in COUNTS:
        out[str(n)]["ratio_fps"] = out[str(n)]["fps"] / out["1"]["fps"]
    out["rate_mbit"] = rate_mbit
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [k for k in ("loopback", "lan") if k in data and "skipped" not in data[k]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    w = 0.8 / max(1, len(parts))
    for i, k in enumerate(parts):
        xs = np.arange(len(COUNTS)) + i * w
        label = "loopback" if k == "loopback" else f"{data[k]['rate_mbit']:g} Mbit/s link"
        fps = [data[k][str(n)]["fps"] for n in COUNTS]
        lat = [data[k][str(n)]["latency_ms"] for n in COUNTS]
        bars = axes[0].bar(xs, fps, w, label=label)
        for b, n in zip(bars, COUNTS):
            axes[0].annotate(f"{data[k][str(n)]['ratio_fps']:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                             ha="center", va="bottom", fontsize=8)
        axes[1].bar(xs, lat, w, label=label)
    for ax, t in zip(axes, ("frames per second (streamed)", "latency, capture to boxes, ms")):
        ax.set_xticks(np.arange(len(COUNTS)) + w * (len(parts) - 1) / 2, [f"{n} device{'s' if n > 1 else ''}" for n in COUNTS])
        ax.set_title(t, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"RetinaFace-MobileNet0.25 480x640 split across emulated devices (1 core, 1 thread each; "
                 f"{os.cpu_count()}-core machine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 40 frames (a check, not a figure)")
    ap.add_argument("--only", default="loopback,lan")
    ap.add_argument("--rate-mbit", type=float, default=100.0)
    a = ap.parse_args()
    only = set(a.only.split(","))
    data: dict = {"hw": HW, "cpus": os.cpu_count(), "quick": a.quick}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if "loopback" in only:
            lb = data["loopback"] = bench_loopback(Path(tmp), 2 if a.quick else 5, 10 if a.quick else 30,
                                                   40 if a.quick else 150)
            t = Table(title="RetinaFace 480x640 on loopback: N emulated devices, 1 core + 1 thread each", title_justify="left")
            for c in ("devices", "FPS", "vs 1 device", "worst round", "latency ms (1 in flight)", "latency ms (streaming)",
                      "each device alone, ms", "cores"):
                t.add_column(c, justify="right")
            for n in COUNTS:
                m = lb[str(n)]
                t.add_row(str(n), f"{m['fps']:.1f}", f"{m['ratio_fps']:.2f}x", f"{min(m['round_ratios']):.2f}x",
                          f"{m['latency_ms']:.1f}", f"{m['stream_latency_ms']:.1f}",
                          " / ".join(f"{v:.1f}" for v in m["device_ms_alone"].values()),
                          ",".join(str(c) for c in m["pins"].values()))
            console.print(t)
            r2 = lb["2"]["ratio_fps"]
            console.print(f"2 devices over 1: {r2:.2f}x frame rate (goal >= {GOAL}) -> {'met' if r2 >= GOAL else 'NOT met'}; "
                          f"the app (pre/post-processing) shares core 0 with the first stage")
        if "lan" in only:
            data["lan"] = bench_lan(Path(tmp), a.rate_mbit, 10 if a.quick else 30)
            if "skipped" in data["lan"]:
                console.print(f"lan skipped: {data['lan']['skipped']}")
    data["seconds"] = time.time() - t0
    p = save("camera", data)
    plot(data, RESULTS / "camera.png")
    console.print(f"wrote {p} and {RESULTS / 'camera.png'}")


if __name__ == "__main__":
    main()

"""Two cameras, two helpers, real agents: priority-aware against the priority-blind baseline and local-only
(issue 13's "must show"), with the simulator run on the same cluster, sources and allocations.

    .venv/bin/python bench/bench_priority_agents.py                 # 40 s per mode, all three modes
    .venv/bin/python bench/bench_priority_agents.py --quick         # a smoke run: 8 s per mode
    .venv/bin/python bench/bench_priority_agents.py --modes priority,blind --seconds 60
    .venv/bin/python bench/bench_priority_agents.py --sim-only      # calibration, packaging, simulator (nothing written)

The cluster: door-cam and yard-cam (Pi-like cameras), helper-a (fast) and helper-b (slow), each an
`edgepart run` in a network namespace of its own (netns.EmulatedLan: one host per device, every host's
link shaped to --rate-mbit each way with tc tbf; this kernel has no netem, so no latency is added: the
link's latency in cluster.yaml is --latency-ms, the bridge's and ZeroMQ's) and capped to a share of
one core (a CPU cgroup per agent, sdk/testing/cpucap.py, set once the agent has started). The
sources: door on door-cam (priority 10) and yard on yard-cam (priority 1), at a load near saturation:
together they send --load times the frames per second that helper-a can compute alone (the whole model,
with its agent's work per request, from the calibrated figures), door --door-share of them (by default
1.0 and 0.1; --door-rate and --yard-rate set them outright). The rates follow from the calibration, so
the load is the same on a faster or slower machine.

cluster.yaml says what the emulated devices are: each device's GFLOP/s is measured at its cap (one
onnxruntime session of EfficientNet-Lite0, 1 thread, timed in a child process inside a cgroup with that
cap), the links are --rate-mbit (times 1448/1514: the TCP payload of a full frame) with --latency-ms. The same cluster.yaml and sources.yaml are packaged
three times (`package(..., sources=, schedule=priority|blind|local)`), and for each plan:

- the simulator (edgepart.packager.sim.simulate) runs the plan's allocation on the same costs
  (--sim-seconds simulated s, Poisson arrivals), each device a CPU quota as emulated (it runs in
  bursts at the core's speed, `quotas=`), and again at the devices' even speed (the cost model's);
- the agents run it: one app per source (bench/priority_client.py) in its device's namespace opens
  `edgepart.InferenceSession(dist, source=...)` and sends Poisson arrivals at the source's rate with
  `submit` for --seconds; requests sent in the first --warmup-s are not counted.

Printed: per mode and source, real and simulated mean, p50, p95, p99 latency, throughput (answers per
second), deadline misses (answered after the deadline), refusals (DeadlineExceeded at once), timeouts;
then the comparisons of issue 13: door's mean latency priority against blind (goal: at least 50 %
lower), total throughput priority against blind (goal: within 10 %), per-source latencies ordered by
priority, priority against local-only, and the simulator's mean over the real one per source and mode
(goal: within 20 %). Writes bench/results/priority_agents.json and priority_agents.png.

The defaults (door-cam 0.1 of a core, yard-cam 0.2, helper-a 0.5, helper-b 0.05, 200 Mbit/s, --load 1,
no deadline) load helper-a, which both sources want, to about 0.8 under either allocation: the load
where priority matters (docs/priority.md, "Measured: real agents"). No deadline by default: a refused
request has no latency, so refusals in one mode and not the other would make the means unlike; with
--door-deadline-ms they are counted apart (`refused`). Also printed per mode: each agent's CPU
while the apps sent, as a share of its cap (1.00: that device was saturated). Before packaging, the bench
measures an agent's work per request beside compute (packager/calibrate.py, measure_handling, open loop
at yard's rate) and writes each device's step_ms and handling_mbps for its cap (over the cap times how fast the
calibration found the capped device against its share of the full core), which the allocator and
the simulator count (docs/priority.md, "Costs per request"; --no-handling leaves them out).

Needs root (namespaces, tc, cgroups). Cleans up its namespaces, cgroups and processes on the way out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, cpu_s, save  # noqa: E402
from priority_setup import DEVICES, SHAPES, emulated_devices, quotas  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=170)
CLIENT = REPO / "bench" / "priority_client.py"
MODES = ("priority", "blind", "local")


# -- metrics ------------------------------------------------------------------------------------------------
def metrics(records: list, deadline_ms: float | None, warmup_s: float, seconds: float) -> dict:
    """Per-source figures from the client's records [sent_s, latency_ms | None, status]: latencies of the
    requests sent after `warmup_s` (answered, also after the window), throughput the answers received
    between `warmup_s` and `seconds` per second."""
    rec = [r for r in records if r[0] >= warmup_s]
    ok = np.array([r[1] for r in rec if r[2] == "ok"], dtype=np.float64)
    span = max(seconds - warmup_s, 1e-9)
    # throughput: answers that came within the counted window (as the simulator counts them), whenever sent
    answered = sum(1 for r in records if r[2] == "ok" and warmup_s <= r[0] + r[1] / 1e3 <= seconds)
    count = {s: sum(1 for r in rec if r[2] == s) for s in ("ok", "refused", "timeout", "error", "unfinished")}
    pct = (lambda q: float(np.percentile(ok, q))) if ok.size else (lambda q: float("nan"))
    return {"made": len(rec), "done": int(ok.size), "refused": count["refused"], "timeouts": count["timeout"],
            "errors": count["error"], "unfinished": count["unfinished"],
            "mean_ms": float(ok.mean()) if ok.size else float("nan"), "p50_ms": pct(50), "p95_ms": pct(95),
            "p99_ms": pct(99), "throughput_per_s": answered / span,
            "deadline_misses": int((ok > deadline_ms).sum()) if deadline_ms else 0}


# -- one plan through real agents -------------------------------------------------------------------------
def run_agents(dist: Path, a, fractions: dict[str, float], sources, inputs: Path, work: Path, mode: str) -> dict:
    """Every device's agent in its namespace, capped; one app per source in its device's namespace;
    their records. Everything started here is stopped before returning."""
    from edgepart.testing import netns
    from edgepart.testing.cpucap import CpuCap
    from edgepart.testing.emulate import AgentProcesses

    out: dict = {}
    caps: list = []
    clients: dict[str, subprocess.Popen] = {}
    with netns.EmulatedLan(len(DEVICES), rate_mbit=a.rate_mbit, prefix="epp") as lan:
        hosts = dict(zip(DEVICES, lan.hosts))
        procs = AgentProcesses(dist, interface=None, hosts=hosts, threads=1, extra=["--insecure"] if a.insecure else ())
        try:
            t0 = time.perf_counter()
            procs.start(timeout_s=120)
            for d, ag in procs.agents.items():  # capped once started: the imports run at full speed
                cap = CpuCap.create(d, fractions[d])
                caps.append(cap)
                cap.add(ag.proc.pid)
            try:
                procs.wait_ready(60)
            except Exception as e:  # noqa: BLE001 - the sessions' warm-up says whether it works
                console.print(f"[yellow]  {e}[/]")
            console.print(f"  agents up in {time.perf_counter() - t0:.1f} s (capped: "
                          + ", ".join(f"{d} {fractions[d]:.3f}" for d in DEVICES) + ")")
            for i, s in enumerate(sources):
                h = hosts[s.device]
                argv = [sys.executable, str(CLIENT), str(dist), h.ip, ("plain:" if a.plain else "") + s.name, str(s.rate_hz), str(a.seconds),
                        str(a.seed + 17 * i), str(a.timeout_s), str(inputs), str(work / f"{mode}-{s.name}.json"),
                        *(["--insecure"] if a.insecure else [])]
                clients[s.name] = h.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
            # every app warmed up (its path works), then all start at once
            for name, p in clients.items():
                line = _read_until(p, ("ready", "fatal"), timeout_s=240)
                if not line.startswith("ready"):
                    raise RuntimeError(f"the app of {name} did not start: {line.strip()}\n"
                                       + "\n".join(f"  [{d}] " + "\n  ".join(ag.lines[-6:]) for d, ag in procs.agents.items()))
            cpu0 = {d: cpu_s(ag.proc.pid) for d, ag in procs.agents.items()}
            t_go = time.perf_counter()
            for p in clients.values():
                p.stdin.write("go\n")
                p.stdin.flush()
            cpu1: dict = {}  # at the end of the sending window (the apps may wait for late answers after it)
            timer = threading.Timer(a.seconds, lambda: cpu1.update({d: cpu_s(ag.proc.pid) for d, ag in procs.agents.items()}))
            timer.start()
            console.print(f"  {', '.join(f'{s.name} {s.rate_hz:g}/s' for s in sources)} for {a.seconds:g} s ...")
            for name, p in clients.items():
                try:
                    rest, _ = p.communicate(timeout=a.seconds + a.timeout_s + 60)
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"the app of {name} did not finish") from None
                if p.returncode != 0:
                    raise RuntimeError(f"the app of {name} failed (exit {p.returncode}):\n{rest[-3000:]}")
                out[name] = json.loads((work / f"{mode}-{name}.json").read_text())
            timer.join()
            # each agent's CPU while the apps sent, as a share of its cap (1: the device was busy all the
            # time), and how often its cgroup throttled it over its life
            out["_cpu"] = {d: {"cpu_s": cpu1[d] - cpu0[d], "wall_s": a.seconds,
                               "of_cap": (cpu1[d] - cpu0[d]) / (a.seconds * fractions[d]),
                               "cgroup": _cap_usage(caps[i])}
                           for i, (d, ag) in enumerate(procs.agents.items()) if d in cpu1}
        finally:
            for p in clients.values():
                if p.poll() is None:
                    p.kill()
            try:
                procs.stop()
            finally:
                for cap in caps:
                    cap.remove()
    return out


def _read_until(p: subprocess.Popen, prefixes: tuple[str, ...], timeout_s: float) -> str:
    """The first line of p's stdout that starts with one of `prefixes` (its output meanwhile is echoed
    when it fails)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    end, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < end:
        if not sel.select(timeout=max(end - time.monotonic(), 0.01)):
            continue
        line = p.stdout.readline()
        if not line:
            return "exited: " + "".join(seen[-30:])
        seen.append(line)
        if line.startswith(prefixes):
            return line if not line.startswith("fatal") else "".join(seen[-30:])
    return "no answer in time: " + "".join(seen[-30:])


def _cap_usage(cap) -> dict | None:
    """How often the cgroup throttled its agent (cpu.stat: periods, throttled periods, time), None when
    not readable."""
    try:
        st = dict(line.split() for line in (cap.path / "cpu.stat").read_text().splitlines())
        return {"periods": int(st.get("nr_periods", 0)), "throttled": int(st.get("nr_throttled", 0)),
                "throttled_s": int(st.get("throttled_time", st.get("throttled_usec", 0))) / 1e9}
    except (OSError, ValueError):
        return None


# -- printing ----------------------------------------------------------------------------------------------
def _f(x, nd=1) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def show(results: dict, sources) -> None:
    t = Table(title="per mode and source: real agents (sim: the simulator on the same allocation)", title_justify="left")
    for c in ("mode", "source", "prio", "cut", "helpers", "expected", "mean", "p50", "p95", "p99", "done/s",
              "misses", "refused", "timeouts", "sim mean", "sim p95", "sim done/s", "sim/real"):
        t.add_column(c, justify="left" if c in ("mode", "source", "helpers") else "right")
    for mode, r in results.items():
        for s in sources:
            p, real, sim = r["allocation"][s.name], r["real"].get(s.name), r["sim"][s.name]
            ratio = sim["mean_ms"] / real["mean_ms"] if real and real["done"] and real["mean_ms"] > 0 else None
            t.add_row(mode, s.name, f"{s.priority:g}", str(p["cut"]), ",".join(p["helpers"][:2]) or "—",
                      _f(p["expected_ms"]), *(_f(real[k]) if real else "—" for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms",
                                                                                      "throughput_per_s")),
                      *(str(real[k]) if real else "—" for k in ("deadline_misses", "refused", "timeouts")),
                      _f(sim["mean_ms"]), _f(sim["p95_ms"]), _f(sim["throughput_per_s"]), _f(ratio, 2))
        t.add_section()
    console.print(t)


def comparisons(results: dict, sources) -> dict:
    """Issue 13's comparisons, each with its goal and whether it is met (None: not measured)."""
    top = max(sources, key=lambda s: s.priority).name
    c: dict = {}

    def real(mode, src, key):
        r = results.get(mode, {}).get("real", {}).get(src)
        return r[key] if r and r["done"] else None

    def sim(mode, src, key):
        r = results.get(mode, {}).get("sim", {}).get(src)
        return r[key] if r else None

    for what, get in (("real", real), ("sim", sim)):
        p, b, lo = get("priority", top, "mean_ms"), get("blind", top, "mean_ms"), get("local", top, "mean_ms")
        row: dict = {}
        if p is not None and b is not None:
            row["top_saved_vs_blind_pct"] = 100 * (1 - p / b)
            row["top_saved_vs_blind_ok"] = row["top_saved_vs_blind_pct"] >= 50
        if p is not None and lo is not None:
            row["top_saved_vs_local_pct"] = 100 * (1 - p / lo)
        tp = {m: sum(get(m, s.name, "throughput_per_s") or 0.0 for s in sources) for m in MODES
              if m in results and all(get(m, s.name, "throughput_per_s") is not None for s in sources)}
        row["total_throughput"] = tp
        if "priority" in tp and "blind" in tp and tp["blind"] > 0:
            row["throughput_vs_blind_pct"] = 100 * (tp["priority"] / tp["blind"] - 1)
            row["throughput_within_10pct"] = abs(row["throughput_vs_blind_pct"]) <= 10
        if "priority" in results:
            means = [(s.priority, get("priority", s.name, "mean_ms")) for s in sources]
            if all(m is not None for _, m in means):
                order = sorted(means, key=lambda x: -x[0])
                row["ordered_by_priority"] = all(a[1] <= b[1] for a, b in zip(order, order[1:]))
        c[what] = row
    ratios = {}
    for mode in results:
        for s in sources:
            r, m = real(mode, s.name, "mean_ms"), sim(mode, s.name, "mean_ms")
            ev = results[mode].get("sim_even", {}).get(s.name, {}).get("mean_ms")
            if r and m is not None:
                # past capacity (the allocator's expected latency has no bound) a queue grows with the run's
                # length: the means are not comparable, the row says so
                over = results[mode]["allocation"][s.name]["expected_ms"] is None
                ratios[f"{mode}/{s.name}"] = {"sim_ms": m, "real_ms": r, "ratio": m / r, "overloaded": over,
                                              "even_ms": ev, "even_ratio": ev / r if ev is not None else None,
                                              "within_20pct": None if over else abs(m / r - 1) <= 0.2}
    c["sim_vs_real"] = ratios
    c["top_source"] = top
    return c


def show_comparisons(c: dict) -> None:
    top = c["top_source"]
    yes = lambda v: "—" if v is None else ("[green]yes[/]" if v else "[red]NO[/]")  # noqa: E731
    for what in ("real", "sim"):
        r = c[what]
        console.print(f"[bold]{what}[/]:")
        if "top_saved_vs_blind_pct" in r:
            console.print(f"  {top}'s mean latency, priority against blind: {r['top_saved_vs_blind_pct']:.1f} % lower "
                          f"(goal ≥ 50 %): {yes(r['top_saved_vs_blind_ok'])}")
        if "top_saved_vs_local_pct" in r:
            console.print(f"  {top}'s mean latency, priority against local-only: {r['top_saved_vs_local_pct']:.1f} % lower")
        if not r["total_throughput"]:
            console.print("  not measured")
            continue
        tp = ", ".join(f"{m} {v:.1f}/s" for m, v in r["total_throughput"].items())
        console.print(f"  total throughput: {tp}")
        if "throughput_vs_blind_pct" in r:
            console.print(f"  priority's against blind's: {r['throughput_vs_blind_pct']:+.1f} % (goal within 10 %): "
                          f"{yes(r['throughput_within_10pct'])}")
        if "ordered_by_priority" in r:
            console.print(f"  per-source mean latencies ordered by priority (priority mode): {yes(r['ordered_by_priority'])}")
    if c["sim_vs_real"]:
        console.print("[bold]simulator against real[/] (mean latency; goal: within 20 %):")
        for k, v in c["sim_vs_real"].items():
            console.print(f"  {k:16} sim {v['sim_ms']:8.1f} ms  real {v['real_ms']:8.1f} ms  sim/real {v['ratio']:.2f}  "
                          + ("expected past capacity: not compared" if v["overloaded"] else yes(v["within_20pct"]))
                          + (f"  (without the quotas' bursts: {v['even_ratio']:.2f})" if v.get("even_ratio") else ""))


def plot(results: dict, sources, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results)
    names = [s.name for s in sources]
    width = 0.8 / max(len(modes), 1)
    colours = {"priority": "tab:green", "blind": "tab:orange", "local": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for j, mode in enumerate(modes):
        xs = np.arange(len(names)) + (j - (len(modes) - 1) / 2) * width
        real = [results[mode]["real"].get(n, {}) for n in names]
        mean = [r.get("mean_ms", np.nan) if r and r.get("done") else np.nan for r in real]
        p95 = [r.get("p95_ms", np.nan) if r and r.get("done") else np.nan for r in real]
        ax.bar(xs, mean, width, color=colours.get(mode), label=f"{mode}: real mean (whisker: p95)",
               yerr=[np.zeros(len(mean)), np.maximum(np.nan_to_num(np.array(p95) - np.array(mean)), 0)], capsize=3)
        ax.plot(xs, [results[mode]["sim"][n]["mean_ms"] for n in names], "kD", ms=5,
                label="simulated mean" if j == 0 else None)
    for i, s in enumerate(sources):
        if s.deadline_ms:
            ax.hlines(s.deadline_ms, i - 0.45, i + 0.45, colors="red", linestyles="--",
                      label="deadline" if i == 0 else None)
    ax.set_xticks(range(len(names)), [f"{s.name} (priority {s.priority:g}, {s.rate_hz:g}/s)" for s in sources])
    vals = [v for mode in modes for n in names for v in (results[mode]["sim"][n]["mean_ms"],
                                                          results[mode]["real"].get(n, {}).get("p95_ms"))
            if v is not None and math.isfinite(v) and v > 0]
    if vals and max(vals) / min(vals) > 20:  # local-only past capacity: seconds against tens of ms
        ax.set_yscale("log")
    ax.set_ylabel("latency, ms")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# -- main ----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0, help="how long each source sends, per mode")
    ap.add_argument("--warmup-s", type=float, default=None, help="requests sent before this are not counted "
                    "(default: 10 %% of --seconds, as the simulator)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 8 s per mode, short calibration and simulation")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of priority, blind, local")
    ap.add_argument("--sim-only", action="store_true", help="no agents: calibration, packaging and the simulator")
    ap.add_argument("--sim-seconds", type=float, default=120.0, help="simulated seconds per mode")
    ap.add_argument("--rate-mbit", type=float, default=200.0, help="every host's link, each way (tc tbf)")
    ap.add_argument("--latency-ms", type=float, default=0.2, help="the links' latency in cluster.yaml (none is added)")
    ap.add_argument("--cam-cap", type=float, default=0.1, help="door-cam's share of one core")
    ap.add_argument("--yard-cap", type=float, default=0.2, help="yard-cam's share of one core")
    ap.add_argument("--fast-cap", type=float, default=0.5, help="helper-a's share of one core")
    ap.add_argument("--slow-cap", type=float, default=0.05, help="helper-b's share of one core")
    ap.add_argument("--load", type=float, default=1.0, help="both sources' frames/s as a share of what helper-a computes alone")
    ap.add_argument("--door-share", type=float, default=0.1, help="door's share of the frames")
    ap.add_argument("--door-rate", type=float, default=None, help="door's frames per second (default: from --load)")
    ap.add_argument("--yard-rate", type=float, default=None, help="yard's frames per second (default: from --load)")
    ap.add_argument("--door-deadline-ms", type=float, default=0.0, help="door's deadline (0: none)")
    ap.add_argument("--timeout-s", type=float, default=20.0, help="a request's timeout in the apps")
    ap.add_argument("--calib-runs", type=int, default=12, help="timed runs per cap in the calibration")
    ap.add_argument("--gflops", default="", help="skip the calibration: door-cam=…,yard-cam=…,helper-a=…,helper-b=…")
    ap.add_argument("--no-handling", action="store_true", help="the cost model without the agents' work per request "
                    "beside compute (no step_ms, handling_mbps in cluster.yaml; nominal message_ms): as before it was counted")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--insecure", action="store_true", help="plans packaged --insecure and agents run --insecure: "
                    "plaintext links, no CurveZMQ encryption (its cost per byte is no part of the cost model)")
    ap.add_argument("--plain", action="store_true", help="a check of the bench itself: the agents run a plan without "
                    "sources (the pipeline planner's, for the same cluster) and the apps open sessions without source=")
    ap.add_argument("--keep", default="", help="a folder to keep cluster.yaml, sources.yaml, the plans and the records in")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.sim_seconds, a.calib_runs = min(a.seconds, 8.0), min(a.sim_seconds, 30.0), min(a.calib_runs, 5)
        a.timeout_s = min(a.timeout_s, 10.0)
    if a.warmup_s is None:
        a.warmup_s = 0.1 * a.seconds
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {', '.join(bad)} (of {', '.join(MODES)})")

    from edgepart.testing import netns, zoo
    from edgepart.testing.cpucap import cleanup_stale

    why = None if a.sim_only else netns.available()
    if why:
        raise SystemExit(f"cannot emulate the devices here: {why} (--sim-only runs the rest)")
    if not a.sim_only:
        netns.cleanup_stale("epp")
        cleanup_stale()
    fractions = {"door-cam": a.cam_cap, "yard-cam": a.yard_cap, "helper-a": a.fast_cap, "helper-b": a.slow_cap}
    model = zoo.efficientnet_lite0()
    feeds = {"input": zoo.imagenet_inputs(1)["input"][:1]}
    tmp = tempfile.TemporaryDirectory(prefix="edgepart-prio-")
    work = Path(a.keep).resolve() if a.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs.npz"
    np.savez(inputs, **feeds)
    t_all = time.perf_counter()
    try:
        # 1. what the emulated devices are
        gflops, calib, handling, cluster_path, sources_path = emulated_devices(a, fractions, model, inputs, work, console)
        # 2. three plans from the same files, and the simulator on each allocation
        import edgepart.packager as p
        from edgepart.packager.priority import StageCosts
        from edgepart.packager.sim import simulate

        results: dict = {}
        sources = None
        for mode in modes:
            t0 = time.perf_counter()
            res = p.package(model, cluster_path, out=work / f"dist-{mode}", sources=sources_path, schedule=mode,
                            input_shapes=SHAPES, insecure=a.insecure)
            planned = res.planned
            sources, alloc = planned.sources, planned.allocation
            costs = StageCosts(planned.graph, planned.cluster)
            # the devices as emulated: CPU quotas, which run a short step in a burst at the core's speed
            # (docs/priority.md, "The simulator"); and as the cost model has them, at their speed throughout
            sim = simulate(costs, sources, alloc, duration_s=a.sim_seconds, seed=a.seed, quotas=quotas(fractions))
            even = simulate(costs, sources, alloc, duration_s=a.sim_seconds, seed=a.seed)
            results[mode] = {"plan_id": res.plan.plan_id, "allocation": {pl.source: pl.to_dict() for pl in alloc.placements},
                             "utilisation": dict(alloc.utilisation), "sim": {m.source: m.to_dict() for m in sim.sources},
                             "sim_even": {m.source: m.to_dict() for m in even.sources},
                             "sim_run": {"rule": sim.rule, "duration_s": sim.duration_s, "requests": sim.requests,
                                         "requests_per_wall_s": sim.requests_per_wall_s},
                             "real": {}}
            busiest = alloc.utilisation[0]
            console.print(f"{mode}: plan {res.plan.plan_id} (" + "; ".join(
                f"{pl.source} first {pl.cut} on {pl.device}" + (f", the rest on {'/'.join(pl.helpers)}" if pl.helpers else "")
                + f", expected {_f(pl.expected_ms)} ms" for pl in alloc.placements)
                + f"; busiest {busiest[0]} ρ {busiest[1]:.2f}) [{time.perf_counter() - t0:.1f} s]")

        # 3. the real agents, one plan after the other
        if not a.sim_only:
            for mode in modes:
                console.print(f"[bold]{mode}[/]: running the agents")
                t0 = time.perf_counter()
                dist = work / f"dist-{mode}"
                if a.plain:
                    dist = work / "dist-plain"
                    if not dist.exists():
                        p.package(model, cluster_path, out=dist, input_shapes=SHAPES, insecure=a.insecure)
                try:
                    got = run_agents(dist, a, fractions, sources, inputs, work, mode)
                except RuntimeError as e:  # one mode that cannot run (an app refused at warm-up): the others still do
                    results[mode]["failed"] = str(e).splitlines()[0]
                    console.print(f"[red]  {mode} did not run: {e}[/]")
                    continue
                results[mode]["cpu"] = cpu = got.pop("_cpu", None)
                if cpu:
                    console.print("  agents' CPU over the run, as a share of their cap: " + ", ".join(
                        f"{d} {v['of_cap']:.2f}" for d, v in cpu.items()))
                for s in sources:
                    r = got[s.name]
                    m = metrics(r["records"], s.deadline_ms, a.warmup_s, a.seconds)
                    m["error_kinds"] = r.get("errors", {})
                    results[mode]["real"][s.name] = m
                    if r.get("errors"):
                        console.print(f"  {s.name}: " + "; ".join(f"{k} ×{v['count']} ({v['first'][:160]})"
                                                                  for k, v in r["errors"].items()))
                console.print(f"  [{time.perf_counter() - t0:.0f} s]")

        show(results, sources)
        comp = comparisons(results, sources)
        show_comparisons(comp)
        if a.sim_only or a.plain:  # not the bench's figures: nothing written
            console.print(f"[{time.perf_counter() - t_all:.0f} s; nothing written: --sim-only / --plain]")
            return
        name = "priority_agents"
        data = {"args": vars(a), "devices": {d: {"cap": fractions[d], "gflops": gflops[d]} for d in DEVICES},
                "calibration": calib, "cluster_yaml": cluster_path.read_text(), "sources_yaml": sources_path.read_text(),
                "modes": results, "comparisons": comp, "seconds": time.perf_counter() - t_all}
        path = save(name, data)
        png = RESULTS / f"{name}.png"
        plot(results, sources, png, f"EfficientNet-Lite0, real agents ({a.seconds:g} s per mode) over {a.rate_mbit:g} Mbit/s; "
                                    f"caps cam {a.cam_cap:g}/{fractions['yard-cam']:g}, helpers {a.fast_cap:g}/{a.slow_cap:g} of a core")
        console.print(f"wrote {path} and {png}  [{time.perf_counter() - t_all:.0f} s]")
    finally:
        tmp.cleanup()
        if not a.sim_only:
            left = netns.cleanup_stale("epp")
            if left:
                console.print(f"[yellow]removed leftovers: {left}[/]")


if __name__ == "__main__":
    main()

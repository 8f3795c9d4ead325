"""What `--strategy auto` picks against every other candidate, measured through real agents (issue 16).

    .venv/bin/python bench/bench_auto.py                    # EfficientNet-Lite0, 2 devices, objective latency
    .venv/bin/python bench/bench_auto.py --pi-gflops 3 -n 8 --skip-netns

Four settings side by side in one run: devices at full core speed or capped to a Raspberry-Pi-like
speed (a CPU cgroup per agent, sdk/testing/cpucap.py: --pi-gflops over this core's measured speed
on the model), and the link on loopback or shaped to --rate Mbit/s (netns.EmulatedLan: the caller
on a host of its own, dev0 and dev1 on theirs, tc tbf each way). For each setting the cluster says
what the setting is (each device's GFLOP/s: this core's measured speed, or --pi-gflops; the link:
loopback as agents see it, or --rate with 0.2 ms; the fixed costs per step and per message,
docs/planning.md "Fixed costs": measured through two agents by packager/calibrate.py, with the agents
capped like the devices for the Pi-like settings; --fixed nominal|none for cost.py's nominal
figures or none), auto ranks every candidate by its own estimate, every
candidate that plans is packaged (the same plan once) and run: `edgepart run` per device, pinned
to its core, 1 thread, the caller a separate process (bench/auto_client.py) on core 0; the median
of -n requests one at a time.

Printed per setting: each candidate's estimate and measurement and their ratio, auto's pick, the
measured best, and whether the pick was the measured best or within 10 % of it. Every answer is
checked against one onnxruntime session of the model (max abs diff). Results go to
bench/results/auto.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=160)
CLIENT = REPO / "bench" / "auto_client.py"
SHAPES = {"input": (1, 3, 224, 224)}


def cluster_for(gflops: float, bandwidth_mbps: float, latency_ms: float, step_ms: float | None = None,
                message_ms: float | None = None, n: int = 2, caller: str | None = None,
                handling_mbps: float | None = None):
    """`n` alike devices and their links; `step_ms` / `message_ms`: the fixed costs (docs/planning.md, "Fixed
    costs"; None: cost.py's nominal figures); `caller`: the device the app runs on (None: a host of its own);
    `handling_mbps`: each device's agent's CPU per byte of its messages (None: not counted)."""
    from edgepart.packager.cluster import cluster_from_dict

    step = {} if step_ms is None else {"step_ms": round(step_ms, 4)}
    if handling_mbps is not None:
        step["handling_mbps"] = round(handling_mbps, 3)
    msg = {} if message_ms is None else {"message_ms": round(message_ms, 4)}
    return cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": round(gflops, 4), "memory_mb": 4096, **step}
                                          for i in range(n)],
                              "links": {"default": {"bandwidth_mbps": round(bandwidth_mbps, 3),
                                                    "latency_ms": round(latency_ms, 4), **msg}},
                              **({} if caller is None else {"caller": caller})})


def run_candidates(model_path: Path, cluster, objective: str, work: Path, shapes: dict = SHAPES,
                   by_id: dict | None = None) -> tuple[object, list[dict]]:
    """auto's ranking, and every candidate that plans packaged (one folder per distinct plan; `by_id`:
    the folders of plans packaged already, by plan id, filled in)."""
    import edgepart.packager as p

    auto = p.plan(model_path, cluster, strategy="auto", objective=objective, input_shapes=shapes)
    rows = []
    by_id = {} if by_id is None else by_id
    for i, c in enumerate(x for x in auto.ranking if x.ok):
        out = work / f"{objective}{i}"
        res = p.package(model_path, c.cluster, out=out, strategy=c.strategy, objective=objective, input_shapes=shapes,
                        **c.options)
        pid = res.plan.plan_id
        rows.append({"candidate": c.name, "strategy": c.strategy, "devices": list(c.devices), "plan_id": pid,
                     "estimate_ms": c.latency_ms, "estimate_req_s": c.throughput_per_s, "own_req_s": c.headroom(), "dist": str(by_id.get(pid, out)),
                     "auto_pick": i == 0})
        by_id.setdefault(pid, out)
    return auto, rows


def measure(rows: list[dict], feeds: dict, ref: list, n: int, fraction: float | None, lan, work: Path) -> None:
    """Fill in each row's measured latency (plans measured once) and the max abs diff against `ref`."""
    from edgepart.testing.cpucap import CpuCap
    from edgepart.testing.emulate import AgentProcesses

    inputs = work / "inputs.npz"
    np.savez(inputs, **feeds)
    done: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r["plan_id"] in done:
            r["measured_ms"], r["max_abs_diff"] = done[r["plan_id"]]
            continue
        dist = Path(r["dist"])
        hosts = {"dev0": lan.hosts[1], "dev1": lan.hosts[2]} if lan is not None else None
        procs = AgentProcesses(dist, interface="127.0.0.1" if lan is None else None, hosts=hosts, threads=1,
                               cpus={"dev0": 0, "dev1": 1})
        caps = []
        try:
            procs.start(timeout_s=120)
            if fraction is not None:  # capped once started: the import and load run at full speed
                for d, a in procs.agents.items():
                    cap = CpuCap.create(d, fraction)
                    caps.append(cap)
                    cap.add(a.proc.pid)
            out = work / "answer.npz"
            argv = ["taskset", "-c", "0", sys.executable, str(CLIENT), str(dist),
                    "127.0.0.1" if lan is None else lan.hosts[0].ip, str(inputs), str(n), "2", str(out)]
            if lan is None:
                res = subprocess.run(argv, capture_output=True, text=True, timeout=900)
            else:
                res = lan.hosts[0].run(argv, timeout_s=900, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"client failed on {r['candidate']}:\n{res.stdout}\n{res.stderr}")
            lat = json.loads(res.stdout.strip().splitlines()[-1])["latency_ms"]
            got = np.load(out)
            diff = max(float(np.max(np.abs(got[f"arr_{i}"] - w))) for i, w in enumerate(ref))
        finally:
            procs.stop()
            for cap in caps:
                cap.remove()
        r["measured_ms"], r["max_abs_diff"] = done[r["plan_id"]] = (lat, diff)


def _cap(pids, fraction: float) -> list:
    """Each of `pids` in a CPU cgroup of its own, capped to `fraction` of a core."""
    from edgepart.testing.cpucap import CpuCap

    caps = []
    for i, pid in enumerate(pids):
        cap = CpuCap.create(f"fixed{i}", fraction)
        cap.add(pid)
        caps.append(cap)
    return caps


def verdict(rows: list[dict]) -> dict:
    pick = next(r for r in rows if r["auto_pick"])
    best = min(rows, key=lambda r: r["measured_ms"])
    within = pick["measured_ms"] <= 1.10 * best["measured_ms"]
    return {"pick": pick["candidate"], "pick_ms": pick["measured_ms"], "best": best["candidate"],
            "best_ms": best["measured_ms"], "pick_is_best": pick["plan_id"] == best["plan_id"], "within_10pct": within}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50.0, help="shaped link rate, Mbit/s (tc tbf)")
    ap.add_argument("--pi-gflops", type=float, default=3.0, help="a Raspberry-Pi-like device's GFLOP/s on the model "
                    "(1 core; the cap is this over this machine's core speed)")
    ap.add_argument("-n", type=int, default=10, help="requests timed per candidate (median)")
    ap.add_argument("--objective", default="latency", choices=("latency", "throughput"))
    ap.add_argument("--skip-netns", action="store_true", help="loopback only")
    ap.add_argument("--fixed", default="measured", choices=("measured", "nominal", "none"),
                    help="the fixed costs per step and per message in the clusters (docs/planning.md, \"Fixed costs\"): "
                         "measured here through two agents (packager/calibrate.py), cost.py's nominal figures, or none "
                         "(0: the cost model before them)")
    ap.add_argument("--only", default="", help="run only the settings whose 'link, speed' contains this (e.g. 'loopback, full')")
    a = ap.parse_args()

    import onnxruntime as ort

    from edgepart.packager.calibrate import measure_device, measure_fixed_costs, measure_loopback
    from edgepart.testing import netns, zoo

    model_path = zoo.efficientnet_lite0()
    x = zoo.imagenet_inputs(1)
    feeds = {"input": x["input"][:1]}
    ref = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    # the core's speed: the best of three calibrations (others' work on this shared machine only slows it)
    core = max(measure_device(str(model_path), feeds, threads=1, cpus={1}).gflops for _ in range(3))
    loop = measure_loopback()
    frac = a.pi_gflops / core
    fixed = measure_fixed_costs(cpus=(0, 1)) if a.fixed == "measured" else None
    step_ms, message_ms = (fixed.step_ms, fixed.message_ms) if fixed is not None else (None, None)
    if a.fixed == "none":
        step_ms, message_ms = 0.0, 0.0
    # the loopback link as agents see it: their bandwidth (measured with the fixed costs), raw ZeroMQ's latency
    loop_bw = fixed.bandwidth_mbps if fixed is not None else loop.bandwidth_mbps
    console.print(f"this machine's core: {core:.1f} GFLOP/s on EfficientNet-Lite0 (1 thread); loopback "
                  f"{loop.bandwidth_mbps:,.0f} Mbit/s, {loop.latency_ms:.3f} ms; a Pi-like device: {a.pi_gflops:g} GFLOP/s "
                  f"= {frac:.3f} of a core (CPU cgroup)")
    if fixed is not None:
        console.print(f"fixed costs, measured through two agents: {fixed.step_ms:.3f} ms per step, {fixed.message_ms:.3f} ms "
                      f"per message (one hop {fixed.hop_ms:.3f} ms: chain of {fixed.hops} hops {fixed.chain.median_ms:.2f} ms, "
                      f"alone {fixed.solo.median_ms:.2f} ms); {fixed.bandwidth_mbps:,.0f} Mbit/s between agents on "
                      f"loopback (a Pi-like device's: measured again with the agents capped)")
    else:
        console.print(f"fixed costs: {a.fixed}")
    settings = [("loopback", "full core"), ("loopback", "pi-like")]
    why = netns.available()
    if a.skip_netns or why:
        if why and not a.skip_netns:
            console.print(f"[yellow]no shaped link: {why}[/]")
    else:
        settings += [(f"{a.rate:g} Mbit/s", "full core"), (f"{a.rate:g} Mbit/s", "pi-like")]
    results = []
    capped, caps = None, []  # the fixed costs measured with the agents capped (Pi-like settings)
    settings = [st for st in settings if a.only in f"{st[0]}, {st[1]}"]
    for link, speed in settings:
        t0 = time.perf_counter()
        shaped = link != "loopback"
        # a capped device runs its agent's own work capped too: its fixed costs and the bandwidth between
        # its agents are measured with the agents capped as the devices are (once per cap)
        step, msg, bw_agents = step_ms, message_ms, loop_bw
        if speed != "full core" and fixed is not None:
            if capped is None:
                capped = measure_fixed_costs(cpus=(0, 1), runs=20, started=lambda pids: caps.extend(_cap(pids, frac)))
                for cap in caps:
                    cap.remove()
                console.print(f"fixed costs with the agents capped to {frac:.3f} of a core: {capped.step_ms:.3f} ms per "
                              f"step (uncapped: this process), {capped.message_ms:.3f} ms per message (one hop "
                              f"{capped.hop_ms:.3f} ms); {capped.bandwidth_mbps:,.0f} Mbit/s between agents")
            # the step's own part of a hop is onnxruntime's run, timed uncapped here: over the cap on the device
            step = capped.step_ms / frac
            msg, bw_agents = max(capped.hop_ms - step, 0.0), capped.bandwidth_mbps
        bw, lat = (a.rate, 0.2) if shaped else (bw_agents, loop.latency_ms)
        cl = cluster_for(core if speed == "full core" else a.pi_gflops, bw, lat, step, msg)
        with tempfile.TemporaryDirectory() as tmp:
            auto, rows = run_candidates(model_path, cl, a.objective, Path(tmp))
            fraction = None if speed == "full core" else frac
            if shaped:
                with netns.EmulatedLan(3, rate_mbit=a.rate) as lan:
                    measure(rows, feeds, ref, a.n, fraction, lan, Path(tmp))
            else:
                measure(rows, feeds, ref, a.n, fraction, None, Path(tmp))
        v = verdict(rows)
        for r in rows:
            r.pop("dist")
            r["estimate_over_measured"] = r["estimate_ms"] / r["measured_ms"]
        cannot = [{"candidate": c.name, "why": c.why_not} for c in auto.ranking if not c.ok]
        results.append({"link": link, "speed": speed, "rows": rows, "verdict": v, "cannot_plan": cannot,
                        "reason": auto.reason, "seconds": time.perf_counter() - t0})
        t = Table(title=f"{link}, devices at {speed} ({cl.devices[0].gflops:g} GFLOP/s each), objective {a.objective}",
                  title_justify="left")
        for c in ("candidate", "devices", "estimated ms", "measured ms", "est/measured", "max abs diff", ""):
            t.add_column(c, justify="left" if c in ("candidate", "devices", "") else "right")
        for r in sorted(rows, key=lambda r: r["measured_ms"]):
            t.add_row(r["candidate"], ",".join(r["devices"]), f"{r['estimate_ms']:.2f}", f"{r['measured_ms']:.2f}",
                      f"{r['estimate_over_measured']:.2f}", f"{r['max_abs_diff']:.1e}", "auto's pick" if r["auto_pick"] else "")
        console.print(t)
        for c in cannot:
            console.print(f"  {c['candidate']} cannot plan: {c['why']}")
        ok = "yes" if v["pick_is_best"] else ("within 10 %" if v["within_10pct"] else "NO")
        console.print(f"  auto picked {v['pick']} ({v['pick_ms']:.2f} ms measured); measured best {v['best']} "
                      f"({v['best_ms']:.2f} ms): pick is the best: {ok}  [{time.perf_counter() - t0:.0f} s]")
    fixed_d = ({"step_ms": fixed.step_ms, "message_ms": fixed.message_ms, "hop_ms": fixed.hop_ms, "hops": fixed.hops,
                "chain_ms": fixed.chain.median_ms, "solo_ms": fixed.solo.median_ms, "bandwidth_mbps": fixed.bandwidth_mbps,
                "capped": None if capped is None else {"step_ms": capped.step_ms, "message_ms": capped.message_ms,
                                                       "hop_ms": capped.hop_ms, "bandwidth_mbps": capped.bandwidth_mbps}}
               if fixed is not None else a.fixed)
    console.print(f"wrote {save('auto', {'core_gflops': core, 'pi_gflops': a.pi_gflops, 'cap_fraction': frac, 'rate_mbit': a.rate, 'objective': a.objective, 'fixed': fixed_d, 'settings': results})}")


if __name__ == "__main__":
    main()

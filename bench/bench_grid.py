"""The grid of issue 16: does `--strategy auto` pick the measured best, and does its ranking agree?

    .venv/bin/python bench/bench_grid.py                       # every cell (hours on 2 cores); resumable
    .venv/bin/python bench/bench_grid.py --models retinaface-640x480 --rates 100 --devices 2
    .venv/bin/python bench/bench_grid.py --report              # the table, figures and plot from what is saved
    .venv/bin/python bench/bench_grid.py --models retinaface-640x480 --rates 100 --devices 2 --speeds pi --caller dev0

Cells: a model (EfficientNet-Lite0 at 224x224; the camera demo's detector, RetinaFace-MobileNet0.25,
at 640x480 and at 1280x736; MiniLM at 24 tokens) x 2 or 3 devices x 2 device speeds x 3 link
rates (20, 100, 1000 Mbit/s, tc tbf between network namespaces: the caller on a host of its own, each
device on its own). Device speeds:

  fast      2 devices: a whole core each (dev0 on core 0 beside the caller, dev1 on core 1). 3 devices
            do not fit whole on 2 cores: each gets --fast3-cap of a core (a CPU cgroup), dev1 and
            dev2 sharing core 1.
  pi        every device capped (a CPU cgroup, sdk/testing/cpucap.py) to --pi-gflops over this core's
            measured speed on EfficientNet-Lite0: a Raspberry-Pi-class core. The same fraction of a
            core for every model.

In each cell the cluster says what the cell is (each device's GFLOP/s on that model: measured on a
whole core, or for a capped device in a child process inside such a cgroup, as `edgepart profile`
would on the device; the link's rate with 0.2 ms; the fixed costs per step and per message
measured through two agents capped as the devices are, docs/planning.md "Fixed costs"), auto ranks
every candidate under the latency objective and under the throughput objective, and every
distinct plan either ranking holds is packaged once and run through `edgepart run` agents (1
thread each) with the app a separate process (bench/auto_client.py) on the caller's host: the median
latency of up to -n requests one at a time, then the rate of up to --stream requests with 2 per
device in flight, each within --budget seconds. Every answer is checked against onnxruntime.

With `--bytes` the cluster also gives each device's `handling_mbps` (an agent's CPU per byte of its
messages, measured through two agents on a whole core, times the device's share of a core), so every
estimate counts the bytes at both ends (docs/planning.md, "Fixed costs"); such cells end "| bytes
priced" and are kept apart too. With `--caller dev0` the app runs in the first device's namespace instead (a camera's board: cluster.yaml's
`caller`, docs/planning.md "Where the app runs"), beside its agent on core 0 but not under its cap; such
cells are saved apart (their key ends "| app on dev0") and left out of the grid's figures.

Per cell and objective: auto's pick, the measured best, whether the pick is the best or within 10 %
of it, and Spearman's rank correlation between the candidates' estimates and their measurements
(distinct plans only; a plan two candidates share counts once). The issue's goals: the pick within
10 % of the best in >= 90 % of cells; Spearman >= 0.9. Also: on pi devices at 100 Mbit/s, the camera
detector's best split against one device in frame rate (goal >= 1.5x).

Each finished cell is saved at once to bench/results/grid.json; a rerun skips the cells already
there (--fresh starts over), so the grid can be measured over several sittings (--recalibrate
measures the speeds and fixed costs again for a new sitting; each cell keeps the figures it was
planned with). A saved cell is planned again when the cost model changed since (COST_MODEL).
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_auto import _cap, cluster_for, run_candidates  # noqa: E402
from edgepart.packager.strategies.auto.rank import TIE  # noqa: E402
from priority_setup import measure_capped  # noqa: E402
from common import REPO, RESULTS, save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=170)
CLIENT = REPO / "bench" / "auto_client.py"
MODELS = ("efficientnet-lite0", "retinaface-640x480", "retinaface-1280x736", "minilm")
OBJECTIVES = ("latency", "throughput")


def model_of(name: str) -> tuple[Path, dict, dict]:
    """(the ONNX file, its input shapes, one request's feeds)."""
    from edgepart.testing import zoo

    if name == "efficientnet-lite0":
        return zoo.efficientnet_lite0(), {"input": (1, 3, 224, 224)}, {"input": zoo.imagenet_inputs(1)["input"][:1]}
    if name.startswith("retinaface-"):
        w, h = (int(v) for v in name.split("-")[1].split("x"))
        return zoo.retinaface(), {"input": (1, 3, h, w)}, zoo.face_inputs((h, w))
    if name == "minilm":
        ids = np.random.default_rng(0).integers(1000, 20000, (1, 24)).astype(np.int64)
        return (zoo.minilm(), {"input_ids": (1, 24), "attention_mask": (1, 24)},
                {"input_ids": ids, "attention_mask": np.ones((1, 24), np.int64)})
    raise SystemExit(f"unknown model {name!r}: one of {', '.join(MODELS)}")


def spearman(xs: list[float], ys: list[float], tie: float = 0.0) -> float | None:
    """Spearman's rank correlation (average ranks for ties; values of `xs` within a relative `tie` of
    the smallest of their run count as tied); None under 3 points or a constant side."""
    def ranks(v: list[float], tol: float) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] - v[order[i]] <= tol * max(abs(v[order[i]]), abs(v[order[j + 1]])):
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(xs) < 3:
        return None
    rx, ry = ranks(xs, tie), ranks(ys, 0.0)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)


def judge(rows: list[dict], objective: str) -> dict:
    """auto's pick against the measured best, and the ranking's agreement, for one objective's rows."""
    key = "latency_ms" if objective == "latency" else "throughput_per_s"
    est = "estimate_ms" if objective == "latency" else "estimate_req_s"
    better = (lambda a, b: a < b) if objective == "latency" else (lambda a, b: a > b)
    pick = next(r for r in rows if r["auto_pick"])
    best = rows[0]
    for r in rows[1:]:
        if better(r[key], best[key]):
            best = r
    ratio = pick[key] / best[key] if objective == "latency" else best[key] / pick[key]
    plans: dict[str, dict] = {}
    for r in rows:  # one point per distinct plan: the best-ranked candidate's estimate
        plans.setdefault(r["plan_id"], r)
    # estimates auto's ranking takes for a tie (rank.TIE: within a relative 1e-6, the rounding of
    # the strategies' figures) are a tie here too
    rho = spearman([p[est] for p in plans.values()], [p[key] for p in plans.values()], tie=TIE)
    # the estimate and the measurement are the same kind of figure (ms, or req/s): agreement is rho near 1
    return {"pick": pick["candidate"], "pick_value": pick[key], "best": best["candidate"],
            "best_value": best[key], "pick_is_best": pick["plan_id"] == best["plan_id"],
            "within_10pct": ratio <= 1.10, "pick_over_best": ratio, "spearman": rho, "plans": len(plans)}


def measure_plan(dist: Path, n_dev: int, feeds_path: Path, ref: list, fraction: dict, lan, a, work: Path,
                 caller: str | None = None) -> dict:
    """One plan through `edgepart run` agents and a separate app process (on a host of its own, or with
    `caller` in that device's namespace, beside its agent on core 0, not under its cap): latency,
    throughput, max abs diff."""
    from edgepart.testing.cpucap import CpuCap
    from edgepart.testing.emulate import AgentProcesses

    devs = [f"dev{i}" for i in range(n_dev)]
    hosts = {d: lan.hosts[i + 1] for i, d in enumerate(devs)}
    cpus = {d: (0 if i == 0 else 1) for i, d in enumerate(devs)}
    procs = AgentProcesses(dist, interface=None, hosts=hosts, threads=1, cpus=cpus)
    caps = []
    try:
        procs.start(timeout_s=180)
        for d, ag in procs.agents.items():  # capped once started: the import and load run at full speed
            if fraction.get(d) is not None:
                cap = CpuCap.create(f"grid-{d}", fraction[d])
                caps.append(cap)
                cap.add(ag.proc.pid)
        out = work / "answer.npz"
        app = hosts[caller] if caller else lan.hosts[0]
        argv = ["taskset", "-c", "0", sys.executable, str(CLIENT), str(dist), app.ip, str(feeds_path),
                str(a.n), "1", str(out), str(a.budget), str(a.stream), str(2 * n_dev)]
        res = app.run(argv, timeout_s=1800, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"client failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        got_json = json.loads(res.stdout.strip().splitlines()[-1])
        got = np.load(out)
        got_json["max_abs_diff"] = max(float(np.max(np.abs(got[f"arr_{i}"] - w))) for i, w in enumerate(ref))
        return got_json
    finally:
        procs.stop()
        for cap in caps:
            cap.remove()


def core_gflops(model: str) -> float:
    """This core's speed on `model` (1 thread, the best of 3: others' work on this shared machine only slows it)."""
    from edgepart.packager.calibrate import measure_device

    path, _, feeds = model_of(model)
    g = max(measure_device(str(path), feeds, threads=1, cpus={1}).gflops for _ in range(3))
    console.print(f"this core: {g:.1f} GFLOP/s on {model}")
    return g


def capped_gflops(model: str, fraction: float, runs: int, work: Path) -> float:
    """`model`'s speed on a device emulated with `fraction` of a core: timed in a child process inside
    such a CPU cgroup, as `edgepart profile` would time it on the device. A capped core is not this
    core scaled: its caches are cold after every pause of the cgroup's period, so it runs the model
    slower per FLOP than `fraction` of the full core's speed, more so for large activations."""
    path, _, feeds = model_of(model)
    inputs = work / f"{model}.npz"
    np.savez(inputs, **feeds)
    g = measure_capped(path, inputs, fraction, runs)["gflops"]
    console.print(f"capped to {fraction:.3f} of a core: {g:.2f} GFLOP/s on {model} "
                  f"({g / fraction:.1f} GFLOP/s per whole core)")
    return g


def calibrate(a) -> dict:
    """This core's speed on EfficientNet-Lite0 (the pi-class fraction) and the fixed costs at each cap;
    the speed on each other model is added when a cell first needs it (`core_gflops`)."""
    from edgepart.packager.calibrate import measure_fixed_costs

    eff = core_gflops("efficientnet-lite0")
    cal: dict = {"core_gflops": {"efficientnet-lite0": eff}, "fixed": {}}
    cal["pi_fraction"] = min(1.0, a.pi_gflops / eff)
    console.print(f"a pi-class device: {a.pi_gflops:g} GFLOP/s on EfficientNet-Lite0 = {cal['pi_fraction']:.3f} of a core")
    for label, frac in (("full", None), ("fast3", a.fast3_cap), ("pi", cal["pi_fraction"])):
        caps: list = []
        started = None if frac is None else (lambda pids, f=frac: caps.extend(_cap(pids, f)))
        f = measure_fixed_costs(cpus=(0, 1), runs=20 if frac else 40, started=started)
        for cap in caps:
            cap.remove()
        # the step's own part of a hop is onnxruntime's run, timed uncapped here: over the cap on the device
        step = f.step_ms / (frac or 1.0)
        cal["fixed"][label] = {"step_ms": step, "message_ms": max(f.hop_ms - step, 0.0) if frac else f.message_ms,
                               "hop_ms": f.hop_ms, "bandwidth_mbps": f.bandwidth_mbps}
        console.print(f"fixed costs, agents {'uncapped' if frac is None else f'capped to {frac:.3f}'}: "
                      f"{cal['fixed'][label]['step_ms']:.3f} ms per step, {cal['fixed'][label]['message_ms']:.3f} ms per "
                      f"message, {f.bandwidth_mbps:,.0f} Mbit/s between agents")
    return cal


def cell_key(model: str, n_dev: int, speed: str, rate: float, caller: str | None = None, bytes_priced: bool = False) -> str:
    return (f"{model} | {n_dev} devices | {speed} | {rate:g} Mbit/s" + (f" | app on {caller}" if caller else "")
            + (" | bytes priced" if bytes_priced else ""))


def run_cell(model: str, n_dev: int, speed: str, rate: float, caller: str | None, bytes_priced: bool, cal: dict,
             a) -> dict:
    import onnxruntime as ort

    from edgepart.testing import netns

    t0 = time.perf_counter()
    path, shapes, feeds = model_of(model)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    label = "pi" if speed == "pi" else ("fast3" if n_dev > 2 else "full")
    frac = {"pi": cal["pi_fraction"], "fast3": a.fast3_cap, "full": None}[label]
    fixed = cal["fixed"][label]
    gflops = cal["core_gflops"][model] if frac is None else cal["capped_gflops"][model][label]
    # an agent's CPU per byte is CPU time: on a device with a share of a core, that share of the rate
    handling = cal["handling_mbps"] * (frac or 1.0) if bytes_priced else None
    cl = cluster_for(gflops, rate, 0.2, fixed["step_ms"], fixed["message_ms"], n=n_dev, caller=caller,
                     handling_mbps=handling)
    rows: dict[str, list[dict]] = {}
    cannot: list[dict] = []
    measured: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        by_id: dict = {}
        for obj in OBJECTIVES:
            auto, rows[obj] = run_candidates(path, cl, obj, work, shapes, by_id)
            cannot += [{"objective": obj, "candidate": c.name, "why": c.why_not} for c in auto.ranking if not c.ok]
        feeds_path = work / "inputs.npz"
        np.savez(feeds_path, **feeds)
        fraction = {f"dev{i}": frac for i in range(n_dev)}
        with netns.EmulatedLan(n_dev + 1, rate_mbit=rate) as lan:
            for pid, dist in by_id.items():
                try:
                    measured[pid] = measure_plan(Path(dist), n_dev, feeds_path, ref, fraction, lan, a, work, caller)
                except Exception as e:  # a candidate that fails is reported, not dropped
                    measured[pid] = {"error": str(e)[-2000:]}
                    console.print(f"[red]{pid} failed[/]: {str(e)[-400:]}")
    cell = {"model": model, "devices": n_dev, "speed": speed, "rate_mbit": rate, "caller": caller,
            "handling_mbps": handling, "gflops": gflops,
            "cap_fraction": frac, "fixed": fixed, "cannot_plan": cannot, "objectives": {}, "cost_model": COST_MODEL}
    for obj in OBJECTIVES:
        rs = []
        for r in rows[obj]:
            r = {k: v for k, v in r.items() if k != "dist"}
            r.update(measured[r["plan_id"]])
            rs.append(r)
        ok = [r for r in rs if "error" not in r]
        cell["objectives"][obj] = {"rows": rs, "verdict": judge(ok, obj) if any(r["auto_pick"] for r in ok) else None}
    cell["seconds"] = time.perf_counter() - t0
    return cell


# which cost model the saved estimates come from: a cell saved under another is planned again
# (`rejudge`); change it whenever what auto estimates or how it ranks changes
COST_MODEL = "2026-12-07: one network interface per host; streamed, a message costs the CPU at both its ends"


def rejudge(cell: dict) -> bool:
    """A cell saved under another cost model (`COST_MODEL`) is planned again on its cluster, as saved:
    every candidate's estimates, auto's picks and the verdicts are taken from today's ranking. Each
    candidate is packaged again, and one whose plan is no longer the plan measured (another plan id)
    is set aside, saying so, rather than judged by another plan's figures. False where the cell is
    today's."""
    if cell.get("cost_model") == COST_MODEL:
        return False
    path, shapes, _ = model_of(cell["model"])
    fixed = cell["fixed"]
    cl = cluster_for(cell["gflops"], cell["rate_mbit"], 0.2, fixed["step_ms"], fixed["message_ms"], n=cell["devices"],
                     caller=cell.get("caller"), handling_mbps=cell.get("handling_mbps"))
    with tempfile.TemporaryDirectory() as tmp:
        for obj in OBJECTIVES:
            _, now = run_candidates(path, cl, obj, Path(tmp), shapes, {})
            now_by = {r["candidate"]: r for r in now}
            for r in cell["objectives"][obj]["rows"]:
                n = now_by.get(r["candidate"])
                if n is None or n["plan_id"] != r["plan_id"]:
                    r["error"] = "no longer planned" if n is None else f"its plan is now {n['plan_id']}: measure the cell again"
                    r["auto_pick"] = False
                    continue
                for k in ("estimate_ms", "estimate_req_s", "own_req_s", "auto_pick"):
                    r[k] = n[k]
            ok = [r for r in cell["objectives"][obj]["rows"] if "error" not in r]
            cell["objectives"][obj]["verdict"] = judge(ok, obj) if any(r["auto_pick"] for r in ok) else None
    cell["cost_model"] = COST_MODEL
    cell["rejudged"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return True


def show(cell: dict) -> None:
    t = Table(title=f"{cell_key(cell['model'], cell['devices'], cell['speed'], cell['rate_mbit'], cell.get('caller'), bool(cell.get('handling_mbps')))} "
                    f"({cell['gflops']:.1f} GFLOP/s per device)", title_justify="left")
    for c in ("candidate", "plan", "est ms", "meas ms", "est req/s", "meas req/s", "max abs diff", "auto picks"):
        t.add_column(c, justify="left" if c in ("candidate", "plan", "auto picks") else "right")
    seen = {}
    for obj in OBJECTIVES:
        for r in cell["objectives"][obj]["rows"]:
            k = (r["candidate"], r["plan_id"])
            seen.setdefault(k, [r, []])
            if r["auto_pick"]:
                seen[k][1].append(obj)
    for (name, pid), (r, picks) in seen.items():
        if "error" in r:
            t.add_row(name, pid[:8], f"{r['estimate_ms']:.1f}", "failed", f"{r['estimate_req_s']:.2f}", "", "", ",".join(picks))
            continue
        t.add_row(name, pid[:8], f"{r['estimate_ms']:.1f}", f"{r['latency_ms']:.1f}", f"{r['estimate_req_s']:.2f}",
                  f"{r['throughput_per_s']:.2f}", f"{r['max_abs_diff']:.1e}", ",".join(picks))
    console.print(t)
    for obj in OBJECTIVES:
        v = cell["objectives"][obj]["verdict"]
        if v is None:
            console.print(f"  {obj}: no verdict (auto's pick failed)")
            continue
        ok = "best" if v["pick_is_best"] else ("within 10 %" if v["within_10pct"] else "NO")
        rho = "n/a" if v["spearman"] is None else f"{v['spearman']:.2f}"
        console.print(f"  {obj}: auto picked {v['pick']}, measured best {v['best']} ({v['pick_over_best']:.2f}x): "
                      f"[bold]{ok}[/]; Spearman {rho} over {v['plans']} plans  [{cell['seconds']:.0f} s]")


def report(data: dict) -> dict:
    """The figures over every saved cell: the share of picks within 10 %, Spearman, the pi detector's gain."""
    out: dict = {}
    # the grid's cells: the app on a host of its own, the bytes unpriced
    grid = [c for c in data["cells"].values() if not c.get("caller") and not c.get("handling_mbps")]
    for obj in OBJECTIVES:
        vs = [c["objectives"][obj]["verdict"] for c in grid if c["objectives"][obj]["verdict"]]
        rhos = [v["spearman"] for v in vs if v["spearman"] is not None]
        out[obj] = {"cells": len(vs), "within_10pct": sum(v["within_10pct"] for v in vs),
                    "spearman_median": statistics.median(rhos) if rhos else None,
                    "spearman_min": min(rhos) if rhos else None,
                    "spearman_at_least_0.9": sum(r >= 0.9 for r in rhos), "spearman_cells": len(rhos)}
    gains = []
    for c in data["cells"].values():
        if c["model"].startswith("retinaface") and c["speed"] == "pi" and c["rate_mbit"] == 100:
            rows = [r for r in c["objectives"]["throughput"]["rows"] if "error" not in r]
            ones = [r for r in rows if r["candidate"].startswith("one device")]
            one = [r["throughput_per_s"] for r in ones]
            splits = [r for r in rows if r["strategy"] != "replicas" and r["plan_id"] not in {o["plan_id"] for o in ones}]
            reps = [r for r in rows if r["strategy"] == "replicas"]
            if one and splits:
                best = max(splits, key=lambda r: r["throughput_per_s"])
                gains.append({"cell": cell_key(c["model"], c["devices"], c["speed"], c["rate_mbit"], c.get("caller"),
                                               bool(c.get("handling_mbps"))),
                              "best_split": best["candidate"], "split_over_one": best["throughput_per_s"] / one[0],
                              "replicas_over_one": reps[0]["throughput_per_s"] / one[0] if reps else None})
    out["pi_detector_100mbit"] = gains
    ratios: dict[str, list[float]] = {}
    for c in grid:  # the cost model's accuracy per strategy: estimate / measured latency
        for r in {r["plan_id"]: r for r in c["objectives"]["latency"]["rows"] if "error" not in r}.values():
            key = "one device" if r["candidate"].startswith("one device") else r["candidate"]
            ratios.setdefault(key, []).append(r["estimate_ms"] / r["latency_ms"])
    # the noise floor: one device and replicas do the same work for one request at a time (the whole
    # model on one device), so their latencies differ by the measurement's noise alone
    noise = []
    for c in grid:
        rows = [r for r in c["objectives"]["latency"]["rows"] if "error" not in r]
        one = [r["latency_ms"] for r in rows if r["candidate"].startswith("one device")]
        rep = [r["latency_ms"] for r in rows if r["candidate"] == "replicas"]
        if one and rep:
            noise.append(max(one[0], rep[0]) / min(one[0], rep[0]))
    out["same_work_latency_ratio"] = {"median": statistics.median(noise), "max": max(noise)} if noise else None
    out["estimate_over_measured"] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
                                     for k, v in ratios.items()}
    t = Table(title="the grid so far", title_justify="left")
    for c in ("objective", "cells", "pick best or within 10 %", "Spearman median", "worst", "cells >= 0.9"):
        t.add_column(c, justify="left" if c == "objective" else "right")
    for obj in OBJECTIVES:
        o = out[obj]
        if not o["cells"]:
            continue
        t.add_row(obj, str(o["cells"]), f"{o['within_10pct']} ({o['within_10pct'] / o['cells']:.0%})",
                  "n/a" if o["spearman_median"] is None else f"{o['spearman_median']:.2f}",
                  "n/a" if o["spearman_min"] is None else f"{o['spearman_min']:.2f}",
                  f"{o['spearman_at_least_0.9']} of {o['spearman_cells']}")
    console.print(t)
    if out["same_work_latency_ratio"]:
        console.print(f"noise: one device and replicas (the same work per request) measured {out['same_work_latency_ratio']['median']:.2f}x "
                      f"apart in latency at the median, {out['same_work_latency_ratio']['max']:.2f}x at most")
    console.print("estimate / measured latency per candidate: " + "; ".join(
        f"{k} {v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f}, {v['n']} cells)"
        for k, v in out["estimate_over_measured"].items()), soft_wrap=True)
    for g in gains:
        rep = "" if g["replicas_over_one"] is None else f"; replicas {g['replicas_over_one']:.2f}x"
        console.print(f"  {g['cell']}: best split ({g['best_split']}) {g['split_over_one']:.2f}x one device's frame "
                      f"rate{rep} (goal >= 1.5x)")
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(data["cells"].values())
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    colours = {m: f"C{i}" for i, m in enumerate(MODELS)}
    ax = axes[0]
    for c in cells:
        rows = {r["plan_id"]: r for r in c["objectives"]["latency"]["rows"] if "error" not in r}
        ax.scatter([r["estimate_ms"] for r in rows.values()], [r["latency_ms"] for r in rows.values()], s=12,
                   color=colours[c["model"]], alpha=0.7)
    for m in MODELS:
        ax.scatter([], [], color=colours[m], label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="estimate = measured")
    ax.set_xlabel("estimated latency, ms")
    ax.set_ylabel("measured latency, ms")
    ax.set_title("every candidate in every cell (latency)")
    ax.legend(fontsize=8)
    ax = axes[1]
    labels, vals, cols = [], [], []
    for c in cells:
        for obj in OBJECTIVES:
            v = c["objectives"][obj]["verdict"]
            if v:
                labels.append(f"{c['model']} {c['devices']}d {c['speed']} {c['rate_mbit']:g} {obj[:3]}"
                              + (f" app@{c['caller']}" if c.get("caller") else "") + (" B" if c.get("handling_mbps") else ""))
                vals.append(v["pick_over_best"])
                cols.append(colours[c["model"]])
    ax.barh(range(len(vals)), vals, color=cols)
    ax.axvline(1.1, color="r", lw=0.8, ls="--", label="10 % over the best")
    ax.set_yticks(range(len(vals)), labels, fontsize=6)
    ax.set_xlabel("auto's pick / measured best (1 = the best)")
    ax.set_title("auto's pick against the measured best")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    ap.add_argument("--devices", default="2,3", help="device counts (2, 3)")
    ap.add_argument("--speeds", default="fast,pi", help="device speeds (fast, pi)")
    ap.add_argument("--rates", default="20,100,1000", help="link rates, Mbit/s")
    ap.add_argument("--caller", default="host", choices=("host", "dev0"),
                    help="where the app runs: `host`, a namespace of its own (the grid's cells), or `dev0`, the "
                         "first device's (a camera's board: cluster.yaml's `caller`; cells kept apart from the grid's)")
    ap.add_argument("--bytes", action="store_true",
                    help="price the agents' CPU per byte of their messages (each device's handling_mbps, measured on "
                         "a whole core and scaled by its share; cells kept apart from the grid's)")
    ap.add_argument("--pi-gflops", type=float, default=3.0, help="a pi-class device's GFLOP/s on EfficientNet-Lite0")
    ap.add_argument("--fast3-cap", type=float, default=0.45, help="the fast speed's cap with 3 devices on 2 cores")
    ap.add_argument("-n", type=int, default=8, help="requests timed one at a time per plan (median; fewer past --budget)")
    ap.add_argument("--stream", type=int, default=24, help="requests streamed per plan for its rate (fewer past --budget)")
    ap.add_argument("--budget", type=float, default=12.0, help="seconds per plan for each of the two measurements")
    ap.add_argument("--fresh", action="store_true", help="forget the cells saved in bench/results/grid.json")
    ap.add_argument("--report", action="store_true", help="only print the figures and plot from what is saved")
    ap.add_argument("--recalibrate", action="store_true",
                    help="measure this core's speeds and the fixed costs again before the cells still to measure "
                         "(a shared machine's speed drifts between sittings; each saved cell keeps the figures it was "
                         "planned with)")
    a = ap.parse_args()
    # a stopped run (kill, Ctrl-C) unwinds: its namespaces, agents and CPU cgroups are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a.models = [m for m in a.models.split(",") if m]
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}: one of {', '.join(MODELS)}")
    saved = RESULTS / "grid.json"
    data = json.loads(saved.read_text()) if saved.exists() and not a.fresh else {"cells": {}}
    if not a.report:
        from edgepart.testing import netns

        why = netns.available()
        if why:
            raise SystemExit(f"the grid needs network namespaces: {why}")
        caller = None if a.caller == "host" else a.caller
        cells = [(m, int(d), s, float(r), caller, a.bytes) for m, d, s, r in itertools.product(
            a.models, a.devices.split(","), a.speeds.split(","), a.rates.split(","))]
        todo = [c for c in cells if cell_key(*c) not in data["cells"]]
        console.print(f"{len(cells)} cells asked, {len(cells) - len(todo)} saved already, {len(todo)} to measure")
        if todo:
            cal = data.get("calibration")
            other = cal is not None and (cal.get("pi_gflops") != a.pi_gflops or cal.get("fast3_cap") != a.fast3_cap)
            if cal is None or other or a.recalibrate:
                if data["cells"] and other:
                    raise SystemExit("the saved cells were measured with another --pi-gflops or --fast3-cap: "
                                     "give the same, or --fresh to start over")
                cal = calibrate(a)
                cal.update(pi_gflops=a.pi_gflops, fast3_cap=a.fast3_cap,
                           measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
                data["calibration"] = cal
            for m in {c[0] for c in todo} - set(cal["core_gflops"]):
                cal["core_gflops"][m] = core_gflops(m)
            capped = cal.setdefault("capped_gflops", {})
            if a.bytes and "handling_mbps" not in cal:  # (a calibration from before --bytes)
                from edgepart.packager.calibrate import measure_handling

                cal["handling_mbps"] = measure_handling(cpus=(0, 1), runs=300).mbps
                console.print(f"an agent's CPU per byte of its messages: {cal['handling_mbps']:,.0f} Mbit/s on a whole core")
            for m, d, s, _, _, _ in todo:
                label = "pi" if s == "pi" else ("fast3" if d > 2 else "full")
                if label != "full" and label not in capped.setdefault(m, {}):
                    frac = cal["pi_fraction"] if label == "pi" else a.fast3_cap
                    with tempfile.TemporaryDirectory() as tmp:
                        capped[m][label] = capped_gflops(m, frac, 4 if label == "pi" else 10, Path(tmp))
            for c in todo:
                cell = run_cell(*c, cal, a)
                cell["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                data["cells"][cell_key(*c)] = cell
                save("grid", data)
                show(cell)
    if not data["cells"]:
        raise SystemExit("no cell measured yet")
    for key, cell in data["cells"].items():  # every verdict by today's ranking rule
        if rejudge(cell):
            console.print(f"{key}: estimates and auto's picks taken again from today's cost model (measured {cell['measured_at']})")
            show(cell)
    for cell in data["cells"].values():  # judged by today's rule (judge, spearman) from the saved rows
        for obj in OBJECTIVES:
            ok = [r for r in cell["objectives"][obj]["rows"] if "error" not in r]
            cell["objectives"][obj]["verdict"] = judge(ok, obj) if any(r["auto_pick"] for r in ok) else None
    data["summary"] = report(data)
    save("grid", data)
    plot(data, RESULTS / "grid.png")
    console.print(f"wrote {RESULTS / 'grid.json'} and {RESULTS / 'grid.png'}")


if __name__ == "__main__":
    main()

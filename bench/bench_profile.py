"""A plan made from measured device profiles against one made from equal nominal speeds (issue 12).

    .venv/bin/python bench/bench_profile.py [--rounds 5] [-n 20] [--source model|set]

Two devices of different speed on this machine: one `edgepart run` on a core that a busy process
shares with it (a device running other work), one on the other core, free; once with dev0 busy and
once with dev1 (with equal nominal speeds, which device gets the big stage is the planner's tie-break,
so one of the two settings shows what a wrong guess costs). Each device is
profiled where it runs (`edgepart profile --model` on EfficientNet-Lite0, or `--source set`: the
shipped representative set), pinned like its agent. Two clusters: both devices at one nominal
speed (dev1's measured GFLOP/s for both), and each device with its `profile:`. Both are packaged
(pipeline, objective latency, a 1000 Mbit/s 0.1 ms link), their agents started side by side (1
thread each, pinned), and this process, pinned to core 1, sends -n requests one at a time to each
plan in turn for --rounds rounds: the medians are compared. Each plan's estimated stage times are
set against the stages measured where they run (each device's steps timed on the photo's real
activations, pinned the same way, 1 thread, the busy process still there).

Goals: the profiled plan's latency below the nominal plan's; its estimated stage times within 1.3x
of the measured ones. Writes bench/results/profile.json.
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=150)
SHAPES = {"input": (1, 3, 224, 224)}
CORES = {"dev0": 0, "dev1": 1}
SHORT_MS = 5.0  # a stage shorter than this runs at nearly full speed on a shared core (the scheduler favours a
                # task that just woke), so a sustained-speed profile overestimates it


def profile(core: int, out: Path, *args: str, seconds: float = 4.0) -> dict:
    r = subprocess.run(["taskset", "-c", str(core), sys.executable, "-m", "edgepart", "profile", "-o", str(out),
                        "--threads", "1", "--seconds", str(seconds), *args], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"edgepart profile failed:\n{r.stderr}")
    return yaml.safe_load(out.read_text())


STAGE_TIMER = r"""
import json, statistics, sys, time
from pathlib import Path
import numpy as np
from edgepart.bundle import load_dist
from edgepart.packager.formats import step_activations
from edgepart.runtime import make_session
dist, device, feeds = Path(sys.argv[1]), sys.argv[2], dict(np.load(sys.argv[3]))
bundles = load_dist(dist)
plan = next(iter(bundles.values())).plan
acts = step_activations(plan, {d: b.path for d, b in bundles.items()}, feeds)
out = {}
for st in plan.steps_of(device):
    sess = make_session(bundles[device].file(st.model_file), threads=1)
    f = {i.name: acts[i.name] for i in st.inputs}
    for _ in range(5):
        sess.run(None, f)
    ts = []
    for _ in range(40):
        t = time.perf_counter(); sess.run(None, f); ts.append((time.perf_counter() - t) * 1e3)
    out[st.name] = statistics.median(ts)
print(json.dumps(out))
"""


def stage_ms(core: int, dist: Path, device: str, feeds: Path) -> dict:
    """Each of `device`'s steps timed where it runs (pinned to `core`, 1 thread), on the real
    activations of the bench's photo (made-up inputs do not fit every step: a reshape's size)."""
    r = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c", STAGE_TIMER, str(dist), device, str(feeds)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"stage timing failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_setting(busy_dev: str, a, model: Path, feeds: dict) -> dict:
    """One setting: `busy_dev`'s core shared with a busy process, the other device's free."""
    import edgepart
    import edgepart.packager as p
    from edgepart.testing.emulate import AgentProcesses

    free_core = next(c for d, c in CORES.items() if d != busy_dev)
    busy = subprocess.Popen(["taskset", "-c", str(CORES[busy_dev]), sys.executable, "-c", "while True: pass"])
    procs, plans = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            np.savez(tmp / "feeds.npz", **feeds)
            what = ["--model", str(model)] if a.source == "model" else []
            profs = {d: profile(c, tmp / f"{d}.yaml", *what, "--name", d) for d, c in CORES.items()}
            for d, pr in profs.items():
                console.print(f"{d} (core {CORES[d]}{', shared with a busy process' if d == busy_dev else ', free'}): "
                              f"{pr['gflops']:.2f} GFLOP/s on {pr['source']}; "
                              + ", ".join(f"{k} {v:.2f}" for k, v in pr["speeds_gflops"].items()))
            link = {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}
            fast = max(pr["gflops"] for pr in profs.values())
            nominal = {"devices": [{"name": d, "gflops": round(fast, 3)} for d in CORES], "links": link}
            # runtime onnx: the plans here are packaged ONNX, so the profiles' onnxruntime figures
            profiled = {"devices": [{"name": d, "profile": f"{d}.yaml", "runtime": "onnx"} for d in CORES], "links": link}
            for label, doc in (("nominal", nominal), ("profiled", profiled)):
                (tmp / f"{label}.yaml").write_text(yaml.safe_dump(doc))
                res = p.package(model, tmp / f"{label}.yaml", out=tmp / label, input_shapes=SHAPES,
                                model_name=f"profile-bench-{label}-{busy_dev}")
                stages = res.planned.to_dict()["stages"]
                plans[label] = {"plan_id": res.plan.plan_id, "stages": [
                    {"device": s["device"], "estimated_ms": s["compute_ms"], "measured_rounds_ms": []} for s in stages],
                    "estimated_latency_ms": dict(res.plan.estimates).get("latency_ms")}
            # each stage timed where it runs, three times, the plans taking turns (a shared host's noise
            # comes and goes): the median of the three
            for _ in range(3):
                for label in plans:
                    for st in plans[label]["stages"]:
                        d = st["device"]
                        st["measured_rounds_ms"].append(sum(stage_ms(CORES[d], tmp / label, d, tmp / "feeds.npz").values()))
            for label in plans:
                for st in plans[label]["stages"]:
                    st["measured_ms"] = statistics.median(st["measured_rounds_ms"])
                    st["estimated_over_measured"] = st["estimated_ms"] / st["measured_ms"]
            for label in plans:
                procs.append(AgentProcesses(tmp / label, interface="127.0.0.1", threads=1, cpus=CORES).start(120))
            for pr_ in procs:
                pr_.wait_ready(60)
            os.sched_setaffinity(0, {free_core})
            sessions = {label: edgepart.InferenceSession(tmp / label, interface="127.0.0.1", timeout_s=60,
                                                         discover_timeout_s=60) for label in plans}
            ref = None
            for label, s in sessions.items():
                got = s.run(None, feeds)[0]
                ref = got if ref is None else ref
                plans[label]["max_abs_diff_vs_other"] = float(np.max(np.abs(got - ref)))
                for _ in range(3):
                    s.run(None, feeds)
            rounds = {label: [] for label in plans}
            for _ in range(a.rounds):
                for label, s in sessions.items():
                    ts = []
                    for _ in range(a.n):
                        t = time.perf_counter()
                        s.run(None, feeds)
                        ts.append((time.perf_counter() - t) * 1e3)
                    rounds[label].append(statistics.median(ts))
            for s in sessions.values():
                s.close()
    finally:
        for pr_ in procs:
            pr_.stop()
        busy.kill()
        busy.wait()
    t = Table(title=f"EfficientNet-Lite0, 2 devices ({busy_dev} shares its core with a busy process), profiles from "
                    f"{a.source}; medians of {a.rounds} rounds x {a.n} requests", title_justify="left")
    for c in ("plan", "stage", "estimated ms", "measured ms", "est/measured", "latency ms (rounds)"):
        t.add_column(c, justify="left" if c in ("plan", "stage") else "right")
    for label, pl in plans.items():
        pl["latency_ms"] = statistics.median(rounds[label])
        pl["latency_rounds_ms"] = rounds[label]
        for i, st in enumerate(pl["stages"]):
            lat = f"{pl['latency_ms']:.2f} ({', '.join(f'{x:.1f}' for x in rounds[label])})" if i == 0 else ""
            t.add_row(label if i == 0 else "", st["device"], f"{st['estimated_ms']:.2f}", f"{st['measured_ms']:.2f}",
                      f"{st['estimated_over_measured']:.2f}", lat)
    console.print(t)
    ratio = plans["profiled"]["latency_ms"] / plans["nominal"]["latency_ms"]
    long = [st for st in plans["profiled"]["stages"] if st["measured_ms"] >= SHORT_MS]
    off = lambda st: max(st["estimated_over_measured"], 1 / st["estimated_over_measured"])  # noqa: E731
    worst_all = max(off(st) for st in plans["profiled"]["stages"])
    worst_long = max((off(st) for st in long), default=float("nan"))
    console.print(f"profiled / nominal latency: {ratio:.2f} (goal < 1); profiled plan's stage estimates off by at most "
                  f"{worst_long:.2f}x on stages of {SHORT_MS:g} ms or more, {worst_all:.2f}x on all (goal <= 1.3x)")
    return {"busy": busy_dev, "profiles": profs, "plans": plans, "latency_ratio": ratio,
            "worst_stage_ratio": worst_all, "worst_long_stage_ratio": worst_long}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=20, help="requests per plan per round")
    ap.add_argument("--source", choices=("model", "set"), default="model",
                    help="profile on the model itself, or on the shipped representative set")
    ap.add_argument("--busy", choices=("dev0", "dev1", "both"), default="both",
                    help="which device shares its core with a busy process (both: one setting each)")
    a = ap.parse_args()
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    feeds = {"input": np.ascontiguousarray(zoo.imagenet_inputs(1)["input"][:1])}
    settings = [run_setting(b, a, model, feeds) for b in (("dev0", "dev1") if a.busy == "both" else (a.busy,))]
    console.print(f"wrote {save('profile', {'source': a.source, 'settings': settings})}")


if __name__ == "__main__":
    main()

"""The emulated devices of bench_priority_agents.py: each device's speed measured at its CPU cap, its
agent's work per request, the sources' rates for a load, and the cluster.yaml and sources.yaml that
say so (docs/priority.md, "Measured: real agents")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SHAPES = {"input": (1, 3, 224, 224)}
DEVICES = ("door-cam", "yard-cam", "helper-a", "helper-b")

# tc counts whole frames; what a link carries of the messages' bytes is the TCP payload of each: 1448 of
# 1514 bytes on the wire at MTU 1500 (Ethernet 14, IP 20, TCP with timestamps 32). cluster.yaml gets
# the shaped rate times this, the bandwidth the cost model's bytes see.
PAYLOAD = 1448 / 1514

_MEASURE = r"""
import json, sys
import numpy as np
from edgepart.packager.calibrate import measure_device
feeds = dict(np.load(sys.argv[2]))
s = measure_device(sys.argv[1], feeds, threads=1, runs=int(sys.argv[3]), warmup=2)
print(json.dumps({"gflops": s.gflops, "median_ms": s.timing.median_ms}))
"""


# -- calibration ----------------------------------------------------------------------------------------
def measure_capped(model: Path, inputs: Path, fraction: float | None, runs: int) -> dict:
    """One onnxruntime session of the model timed in a child process, inside a CPU cgroup of `fraction`
    of a core (None: uncapped): the GFLOP/s of a device emulated with that cap."""
    from edgepart.testing.cpucap import CpuCap

    cap = CpuCap.create("calib", fraction) if fraction is not None else None
    try:
        res = subprocess.run([sys.executable, "-c", _MEASURE, str(model), str(inputs), str(runs)],
                             capture_output=True, text=True, timeout=600,
                             preexec_fn=cap.enter if cap is not None else None)
    finally:
        if cap is not None:
            cap.remove()
    if res.returncode != 0:
        raise SystemExit(f"calibration failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_inputs(a, work: Path, gflops: dict[str, float], handling: dict[str, dict] | None = None) -> tuple[Path, Path]:
    """cluster.yaml and sources.yaml of the emulated devices, as measured. `handling`: per device its
    agent's step_ms and handling_mbps at its cap (docs/priority.md, "Costs per request"); the links'
    message_ms is then 0, its CPU being in the devices' figures."""
    import yaml

    cluster = {"devices": [{"name": d, "gflops": round(gflops[d], 3), "memory_mb": 4096, "threads": 1,
                            **(handling or {}).get(d, {})} for d in DEVICES],
               "links": {"default": {"bandwidth_mbps": round(a.rate_mbit * PAYLOAD, 2), "latency_ms": a.latency_ms,
                                     **({"message_ms": 0} if handling else {})}}}
    door = {"name": "door", "device": "door-cam", "priority": 10, "rate_hz": a.door_rate}
    if a.door_deadline_ms > 0:
        door["deadline_ms"] = a.door_deadline_ms
    sources = {"schema": 1, "sources": [door, {"name": "yard", "device": "yard-cam", "priority": 1,
                                               "rate_hz": a.yard_rate}]}
    cp, sp = work / "cluster.yaml", work / "sources.yaml"
    cp.write_text(yaml.safe_dump(cluster, sort_keys=False))
    sp.write_text(yaml.safe_dump(sources, sort_keys=False))
    return cp, sp


def helper_rate(model: Path, gflops: dict[str, float], handling: dict[str, dict] | None) -> float:
    """The frames per second helper-a computes alone (the whole model, one step's fixed cost and the frame's
    bytes in and the outputs out at its handling rate), by the cost model on the calibrated figures."""
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.priority import StageCosts

    d = {"name": "helper-a", "gflops": gflops["helper-a"], **(handling or {}).get("helper-a", {})}
    cl = cluster_from_dict({"devices": [d, {"name": "cam", "gflops": 1.0}]})
    return 1000.0 / float(StageCosts(analyse(load_model(model), SHAPES), cl).tail_ms("helper-a", 0))


def emulated_devices(a, fractions: dict[str, float], model: Path, inputs: Path, work: Path, console) -> tuple:
    """What the emulated devices are: (gflops, calibration, handling, cluster.yaml, sources.yaml) by
    device, measured (or --gflops), with the sources' rates set on `a` from --load where not given."""
    calib: dict = {}
    if a.gflops:
        gflops = {k: float(v) for k, v in (kv.split("=") for kv in a.gflops.split(","))}
    else:
        by_frac = {}
        for f in sorted(set(fractions.values())):
            by_frac[f] = measure_capped(model, inputs, f, a.calib_runs)
        full = measure_capped(model, inputs, None, max(a.calib_runs, 10))
        gflops = {d: by_frac[f]["gflops"] for d, f in fractions.items()}
        calib = {"uncapped": full, "capped": {str(f): v for f, v in by_frac.items()}}
        console.print(f"calibration (EfficientNet-Lite0, 1 thread): one core {full['gflops']:.1f} GFLOP/s "
                      f"({full['median_ms']:.1f} ms); capped " + ", ".join(
                          f"{f:g}: {v['gflops']:.2f} GFLOP/s ({v['median_ms']:.0f} ms, {v['gflops'] / full['gflops'] / f:.2f} "
                          f"of the cap's share)" for f, v in by_frac.items()))
    handling = None
    if not a.no_handling:
        from edgepart.packager.calibrate import measure_handling

        # CPU time at a full core, open loop at yard's rate (an agent's fixed part grows as requests thin
        # out), with a frame's bytes, through a plan with a source; the cgroup grants a device its cap
        # of CPU time a second, so its figures are the CPU's over its cap
        rate = a.yard_rate if a.yard_rate is not None else round(a.load * (1 - a.door_share) * helper_rate(model, gflops, None), 2)
        h = measure_handling(rate_hz=rate, big_bytes=int(np.prod(SHAPES["input"])) * 4, lanes=True)
        # a capped device is slower than its share of a core at everything it does, not at onnxruntime's
        # kernels alone (the calibration's "of the cap's share", 0.5-0.9 here): its agent's work per
        # request takes as much longer. Without a calibration (--gflops), its share.
        share = {d: f * (min(calib["capped"][str(f)]["gflops"] / (calib["uncapped"]["gflops"] * f), 1.0)
                         if "capped" in calib else 1.0) for d, f in fractions.items()}
        handling = {d: {"step_ms": round(h.request_ms / share[d], 4), "handling_mbps": round(h.mbps * share[d], 1)}
                    for d in DEVICES}
        calib["handling"] = {"request_ms": h.request_ms, "mbps": h.mbps, "per_request": dict(h.per_request),
                             "rate_hz": rate}
        console.print(f"an agent's work per request at a full core (open loop, {rate:g}/s): "
                      f"{h.request_ms:.2f} ms of CPU, message bytes at {h.mbps / 1000:.1f} Gbit/s"
                      + (" (CURVE: with --insecure the agents spend less)" if a.insecure else ""))
    if a.door_rate is None or a.yard_rate is None:
        # the load: --load times helper-a's frames/s for the whole model, with its agent's work per
        # request when measured (the rate the handling was measured at came from compute alone)
        full = helper_rate(model, gflops, handling)
        a.door_rate = a.door_rate if a.door_rate is not None else round(a.load * a.door_share * full, 2)
        a.yard_rate = a.yard_rate if a.yard_rate is not None else round(a.load * (1 - a.door_share) * full, 2)
        console.print(f"load {a.load:g}: helper-a computes {full:.1f} frames/s alone; door {a.door_rate:g}/s, "
                      f"yard {a.yard_rate:g}/s")
    cluster_path, sources_path = write_inputs(a, work, gflops, handling)
    console.print(f"cluster: " + ", ".join(
        f"{d} {gflops[d]:.2f} GFLOP/s (cap {fractions[d]:g}"
        + (f"; {handling[d]['step_ms']:.2f} ms, {handling[d]['handling_mbps']:.0f} Mbit/s per request" if handling else "")
        + ")" for d in DEVICES) + f"; links {a.rate_mbit:g} Mbit/s, {a.latency_ms:g} ms")

    return gflops, calib, handling, cluster_path, sources_path


def quotas(fractions: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Each device's CPU cap as the simulator's quota: (period ms, the share of it the device runs)."""
    from edgepart.testing.cpucap import quota_of

    out = {}
    for d, f in fractions.items():
        quota, period = quota_of(f)
        out[d] = (period / 1000.0, quota / period)
    return out

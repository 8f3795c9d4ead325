"""Several cameras, one set of devices, simulated (docs/priority.md): 3 sources of priority 10, 3 and 1
on 8 and 32 simulated devices at 3 loads, priority-aware against the priority-blind baseline and
local-only, on EfficientNet-Lite0's real costs (the pipeline cost model's per-node figures).

    .venv/bin/python bench/bench_priority_sim.py [--duration 60] [--seed 1]

Prints one table per cluster and load (per source: mean, p50, p95, p99 latency, throughput, deadline
misses), the simulator's speed, and writes bench/results/priority_sim.json and priority_sim.png.
The clusters: 3 cameras of 10 GFLOP/s; helpers of 40 GFLOP/s ("jetson") and 10 GFLOP/s ("pi");
1 Gbit/s links, 0.5 ms. Load: each source's rate as a fraction of what one jetson helper computes
(the allocator places a source's offloaded layers on one helper in its estimate: docs/priority.md,
"What is not built yet"), all sources at the same rate; the busiest server's expected utilisation
under each allocation is printed.
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from common import RESULTS

SOURCES = (("door", 10.0, 150.0), ("yard", 3.0, None), ("lot", 1.0, None))  # name, priority, deadline_ms
CLUSTERS = {8: (2, 3), 32: (6, 23)}  # devices -> (jetson helpers, pi helpers); plus 3 cameras
LOADS = (0.5, 0.75, 0.9)


def cluster(n_devices: int):
    from edgepart.packager.cluster import cluster_from_dict

    jet, pi = CLUSTERS[n_devices]
    devs = ([{"name": f"cam{i}", "gflops": 10} for i in range(3)] + [{"name": f"jetson{i}", "gflops": 40} for i in range(jet)]
            + [{"name": f"pi{i}", "gflops": 10} for i in range(pi)])
    return cluster_from_dict({"devices": devs, "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.5}}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds per run")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from edgepart.sources import sources_from_dict
    from edgepart.testing import zoo

    from edgepart.packager.model.fold import fold_constants
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.priority import StageCosts, allocate_all
    from edgepart.packager.sim import simulate

    con = Console(width=150)
    graph = analyse(fold_constants(load_model(zoo.efficientnet_lite0())), {"input": (1, 3, 224, 224)})
    gflop = 2 * graph.total_macs / 1e9
    results, speed = [], []
    for n_dev in CLUSTERS:
        cl = cluster(n_dev)
        costs = StageCosts(graph, cl)
        for load in LOADS:
            rate = load * 40.0 / gflop  # frames/s of one jetson helper
            srcs = sources_from_dict({"sources": [
                {"name": n, "device": f"cam{i}", "priority": w, "rate_hz": round(rate, 3),
                 **({"deadline_ms": dl} if dl else {})} for i, (n, w, dl) in enumerate(SOURCES)]})
            t0 = time.perf_counter()
            allocs = allocate_all(graph, cl, srcs, costs=costs, alternatives=3 if n_dev <= 8 else 8)
            t_alloc = time.perf_counter() - t0
            table = Table(title=f"{n_dev} devices, load {load:.2f} ({rate:.1f} frames/s per source; "
                                f"allocation {t_alloc:.2f} s)")
            for col in ("mode", "source", "prio", "cut", "helpers", "expected ms", "mean ms", "p50", "p95", "p99",
                        "done/s", "refused", "misses", "busiest rho"):
                table.add_column(col, justify="right" if col not in ("mode", "source", "helpers") else "left")
            for mode, a in allocs.items():
                r = simulate(costs, srcs, a, duration_s=args.duration, seed=args.seed)
                speed.append(r.requests_per_wall_s)
                busiest = a.utilisation[0]
                for m in r.sources:
                    p = a.get(m.source)
                    table.add_row(mode, m.source, f"{m.priority:g}", str(p.cut), ",".join(p.helpers[:3]),
                                  f"{p.expected_ms:.1f}", f"{m.mean_ms:.1f}", f"{m.p50_ms:.1f}", f"{m.p95_ms:.1f}",
                                  f"{m.p99_ms:.1f}", f"{m.throughput_per_s:.1f}", str(m.refused),
                                  str(m.deadline_misses), f"{busiest[0]} {busiest[1]:.2f}")
                results.append({"devices": n_dev, "load": load, "rate_hz": rate, "mode": mode,
                                "allocation": a.to_dict(), "sim": r.to_dict()})
            con.print(table)
    con.print(f"simulator: {min(speed):,.0f} to {max(speed):,.0f} simulated requests per wall second "
              f"(median {sorted(speed)[len(speed) // 2]:,.0f}; {args.duration:g} simulated s per run)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "priority_sim.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "priority_sim.png")
    con.print(f"wrote {RESULTS / 'priority_sim.json'} and {RESULTS / 'priority_sim.png'}")


def plot(results: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CLUSTERS), figsize=(6 * len(CLUSTERS), 4.2), squeeze=False)
    styles = {"priority": "-", "blind": "--", "local": ":"}
    for ax, n_dev in zip(axes[0], CLUSTERS):
        for mode, ls in styles.items():
            for (name, _, _), colour in zip(SOURCES, ("tab:red", "tab:orange", "tab:blue")):
                pts = [(r["load"], next(m["mean_ms"] for m in r["sim"]["sources"] if m["source"] == name))
                       for r in results if r["devices"] == n_dev and r["mode"] == mode]
                ax.plot([x for x, _ in pts], [y for _, y in pts], ls, color=colour, marker="o",
                        label=f"{name} ({mode})")
        ax.set_yscale("log")
        ax.set_xlabel("load (each source's rate / one jetson's frames/s)")
        ax.set_ylabel("mean latency, ms (simulated)")
        ax.set_title(f"{n_dev} devices, EfficientNet-Lite0")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

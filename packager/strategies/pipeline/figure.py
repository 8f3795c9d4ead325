"""A picture of a pipeline plan: a timeline of one request, and the bytes crossing every cut."""

from __future__ import annotations

from pathlib import Path

from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.pipeline.planner import PipelinePlan


def plot_pipeline(graph: Graph, pp: PipelinePlan, path: Path | str, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), gridspec_kw={"height_ratios": [1, 1.3]})
    t = 0.0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, st in enumerate(pp.stages):
        c = colors[i % len(colors)]
        ax1.barh(st.device, st.compute_ms, left=t, color=c)
        ax1.text(t + st.compute_ms / 2, st.device, f"stage{i}\n{st.compute_ms:.2f} ms", ha="center", va="center", fontsize=8)
        t += st.compute_ms
        if st.send_ms:
            ax1.barh(st.device, st.send_ms, left=t, color=c, alpha=0.35, hatch="//")
            t += st.send_ms
    ax1.set_xlabel("time for one request (ms): solid = compute, hatched = send to next stage")
    ax1.set_title(title or f"pipeline plan, objective {pp.objective}: latency {pp.latency_ms:.2f} ms, "
                  f"{pp.throughput_per_s:.1f} req/s pipelined")
    ax1.invert_yaxis()

    x = range(graph.n + 1)
    ax2.fill_between(x, graph.live_bytes / 1e3, step="mid", alpha=0.4, label="bytes crossing a cut here (kB)")
    for c in pp.cuts:
        ax2.axvline(c, color="red", lw=1.2)
    ax2.set_xlabel("cut position (node index, topological order); red = chosen cuts")
    ax2.set_ylabel("kB crossing")
    ax2.set_yscale("symlog", linthresh=1)
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

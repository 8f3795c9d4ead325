"""`edgepart plan --sources`: the allocator's three modes side by side, per source, with what priority buys
the most urgent source, optionally simulated (docs/priority.md, "From the command line").

    planned = plan_sources(graph, cluster, sources, simulate_s=30)
    planned.to_dict()            # the figures under `plan --json`'s "sources" key
    planned.show(console)        # the table, the sentence, and with simulate_s the simulated table
    planned.plot("sources.png")  # expected latency per source and mode, as grouped bars

The figures are those of packager/priority.py (expected latency from the cost model and M/G/1 waits)
and, with `simulate_s`, of packager/sim.py (the same allocation run for that many simulated seconds
under the scheduling rule). Nothing here prints unless asked through `show`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from edgepart.sources import Source, Sources

from edgepart.packager.cluster import Cluster
from edgepart.packager.model.graph import Graph
from edgepart.packager.priority import MODES, Allocation, Placement, StageCosts, allocate_all

LABELS = {"priority": "priority-aware", "blind": "blind", "local": "local-only"}
SHORT = {"priority": "aware", "blind": "blind", "local": "local"}
SIM_SEED = 0


def _num(x: float | None, nd: int = 4) -> float | None:
    """A figure for JSON: None for inf or nan (JSON has neither)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def _ms(x: float) -> str:
    """A latency for the tables: one decimal below a second, whole ms above; "overloaded" for inf."""
    if not math.isfinite(x):
        return "overloaded" if x == float("inf") else "—"
    return f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=0, show_edge=False)


def meets(p: Placement, deadline_ms: float | None) -> bool | None:
    """Whether the expected latency is within the deadline (None: the source has none)."""
    return None if deadline_ms is None else bool(p.expected_ms <= deadline_ms)


def where(p: Placement, n: int) -> str:
    """Where a source's layers run, in words: its own device ("here") the first k layers, a helper the rest."""
    alt = f" (or {', '.join(p.helpers[1:])})" if len(p.helpers) > 1 else ""
    if p.cut >= n or not p.helpers:
        return f"all {n} here"
    if p.cut == 0:
        return f"all {n} on {p.helpers[0]}{alt}"
    return f"first {p.cut} here, {n - p.cut} on {p.helpers[0]}{alt}"


@dataclass(frozen=True)
class SourcesPlanned:
    """The three allocations of one set of sources, and their simulation when one was asked for."""

    sources: Sources
    allocations: dict[str, Allocation]  # mode -> allocation, in MODES order
    n_nodes: int
    simulated: dict[str, Any] | None = None  # mode -> SimResult
    simulate_s: float | None = None
    seed: int = SIM_SEED

    @property
    def top(self) -> Source:
        """The most urgent source (the first written among equals)."""
        best = self.sources.sources[0]
        for s in self.sources:
            if s.priority > best.priority:
                best = s
        return best

    def expected(self, mode: str, source: str) -> float:
        return self.allocations[mode].get(source).expected_ms

    def summary(self) -> str:
        """One sentence: what priority buys the most urgent source against the priority-blind baseline."""
        s = self.top
        pri, blind = self.expected("priority", s.name), self.expected("blind", s.name)
        who = f"{s.name} (priority {s.priority:g})"
        if len(self.sources) == 1:
            return (f"With one source priority has nothing to reorder: {s.name} expects {_ms(pri)} ms either way.")
        if math.isinf(pri) and math.isinf(blind):
            return (f"Neither allocation keeps {who} within capacity: lower the rates in the sources file or add "
                    f"devices to the cluster.")
        if math.isinf(blind):
            return (f"Priority keeps {who} within capacity at {_ms(pri)} ms expected, where the priority-blind "
                    f"baseline overloads a device or link on its path.")
        if math.isinf(pri):
            return (f"The priority-aware allocation overloads {who}'s path where the priority-blind baseline "
                    f"expects {_ms(blind)} ms.")
        gain = blind - pri
        if abs(gain) <= max(0.05, 1e-6 * blind):
            return (f"Priority changes nothing for {who} here: {_ms(pri)} ms expected either way (the devices "
                    f"are not contended enough for the order to matter).")
        if gain > 0:
            return (f"Priority buys {who} {_ms(gain)} ms against the priority-blind baseline: {_ms(pri)} ms "
                    f"expected instead of {_ms(blind)} ms ({100 * gain / blind:.0f} % less).")
        return (f"Priority costs {who} {_ms(-gain)} ms against the priority-blind baseline ({_ms(pri)} ms "
                f"expected instead of {_ms(blind)} ms): the weighted objective favoured the others' total.")

    def to_dict(self) -> dict[str, Any]:
        s = self.top
        pri, blind = self.expected("priority", s.name), self.expected("blind", s.name)
        saved = blind - pri if math.isfinite(pri) and math.isfinite(blind) else None
        by_source = []
        for src in self.sources:
            modes: dict[str, Any] = {}
            for m, a in self.allocations.items():
                p = a.get(src.name)
                d = {"cut": p.cut, "helpers": list(p.helpers), "local_ms": _num(p.local_ms),
                     "remote_ms": _num(p.remote_ms), "transfer_ms": _num(p.transfer_ms), "wait_ms": _num(p.wait_ms),
                     "expected_ms": _num(p.expected_ms), "meets_deadline": meets(p, src.deadline_ms)}
                if self.simulated is not None:
                    r = self.simulated[m].get(src.name)
                    d["simulated"] = {k: (_num(v) if isinstance(v, float) else v) for k, v in r.__dict__.items()
                                      if k not in ("source", "priority")}
                modes[m] = d
            by_source.append({**src.to_dict(), "deadline_ms": src.deadline_ms, "modes": modes})
        out: dict[str, Any] = {
            "n_nodes": self.n_nodes,
            "by_source": by_source,
            "modes": {m: {"objective": _num(a.objective),
                          "utilisation": {k: round(v, 4) for k, v in a.utilisation}} for m, a in self.allocations.items()},
            "top": {"source": s.name, "priority": s.priority, "priority_ms": _num(pri), "blind_ms": _num(blind),
                    "saved_ms": _num(saved),
                    "saved_pct": _num(100 * saved / blind, 2) if saved is not None and blind > 0 else None},
            "summary": self.summary(),
            "simulation": None,
        }
        if self.simulated is not None:
            out["simulation"] = {"duration_s": self.simulate_s, "seed": self.seed,
                                 "modes": {m: {"rule": r.rule, "requests": r.requests, "events": r.events,
                                               "wall_s": round(r.wall_s, 4),
                                               "requests_per_wall_s": round(r.requests_per_wall_s, 1)}
                                           for m, r in self.simulated.items()}}
        return out

    def show(self, console) -> None:
        """Two tables (the figures, then where the layers run), the busiest servers and the sentence; with a
        simulation, its table. Narrow enough for an 80-column terminal."""
        n = self.n_nodes
        t = _table(f"{len(self.sources)} sources: expected latency, ms")
        for col in ("source", "device", "priority", "rate/s", "deadline", "aware", "blind", "local",
                    "deadline met"):
            t.add_column(col, justify="left" if col in ("source", "device", "deadline met") else "right")
        for src in self.sources:
            met = ("—" if src.deadline_ms is None else
                   "/".join("yes" if meets(self.allocations[m].get(src.name), src.deadline_ms) else "no"
                            for m in MODES))
            t.add_row(escape(src.name), escape(src.device), f"{src.priority:g}", f"{src.rate_hz:g}",
                      "—" if src.deadline_ms is None else f"{src.deadline_ms:g} ms",
                      *(_ms(self.expected(m, src.name)) for m in MODES), met)
        console.print()
        console.print(t)
        console.print("aware: the priority-aware allocation; blind: the priority-blind baseline; local: local-only "
                      "(docs/priority.md). deadline met: yes or no under each, in that order.", soft_wrap=True)
        w = _table(f"where each source's {n} layers run (here: its own device)")
        for col in ("source", "aware", "blind"):
            w.add_column(col)
        for src in self.sources:
            w.add_row(escape(src.name), *(escape(where(self.allocations[m].get(src.name), n))
                                          for m in ("priority", "blind")))
        console.print()
        console.print(w)
        console.print()
        busiest = "; ".join(f"{LABELS[m]} {escape(a.utilisation[0][0])} {a.utilisation[0][1]:.2f}"
                            for m, a in self.allocations.items() if a.utilisation)
        console.print(f"busiest server (utilisation; 1 or more is over capacity): {busiest}", soft_wrap=True)
        console.print(escape(self.summary()), soft_wrap=True)
        if self.simulated is not None:
            self.show_simulated(console)

    def show_simulated(self, console) -> None:
        t = _table(f"simulated {self.simulate_s:g} s: latency, ms")
        for col in ("source", "alloc", "expected", "mean", "p50", "p95", "p99", "done/s", "misses", "refused",
                    "left"):
            t.add_column(col, justify="left" if col in ("source", "alloc") else "right")
        for k, src in enumerate(self.sources):
            if k:
                t.add_section()
            for m in MODES:
                r = self.simulated[m].get(src.name)
                t.add_row(escape(src.name), SHORT[m], _ms(self.expected(m, src.name)), _ms(r.mean_ms), _ms(r.p50_ms),
                          _ms(r.p95_ms), _ms(r.p99_ms), f"{r.throughput_per_s:.1f}",
                          str(r.deadline_misses) if src.deadline_ms is not None else "—", str(r.refused),
                          str(r.unfinished))
        console.print()
        console.print(t)
        total = sum(r.requests for r in self.simulated.values())
        wall = sum(r.wall_s for r in self.simulated.values())
        console.print(f"Poisson arrivals at each source's rate, seed {self.seed}, the rule of docs/priority.md; the first "
                      f"10 % not counted. done/s: answered per second; misses: answered after the deadline; refused: "
                      f"at once, the deadline being out of reach; left: unfinished at the end. {total:,} simulated "
                      f"requests in {wall:.2f} s of wall time.", soft_wrap=True)

    def plot(self, path: Path | str) -> Path:
        """Expected latency per source, one bar per allocation (log scale; the simulated mean as a dot when
        simulated, the deadline as a red line)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [s.name for s in self.sources]
        colours = {"priority": "tab:green", "blind": "tab:orange", "local": "tab:gray"}
        finite = [self.expected(m, s) for m in MODES for s in names if math.isfinite(self.expected(m, s))]
        if self.simulated is not None:
            finite += [self.simulated[m].get(s).mean_ms for m in MODES for s in names
                       if math.isfinite(self.simulated[m].get(s).mean_ms)]
        finite += [s.deadline_ms for s in self.sources if s.deadline_ms is not None]
        top = 10 ** math.ceil(math.log10(max(finite) * 1.5)) if finite else 1000.0
        bottom = 10 ** math.floor(math.log10(min(finite) / 1.5)) if finite else 1.0
        fig, ax = plt.subplots(figsize=(max(7.5, 1.9 * len(names) + 4), 4.4))
        width = 0.8 / len(MODES)
        for j, m in enumerate(MODES):
            xs = [i + (j - (len(MODES) - 1) / 2) * width for i in range(len(names))]
            ys = [self.expected(m, s) for s in names]
            hs = [y if math.isfinite(y) else top for y in ys]
            bars = ax.bar(xs, hs, width, color=colours[m], label=f"{LABELS[m]} (expected)")
            for b, y in zip(bars, ys):
                if not math.isfinite(y):
                    b.set_hatch("//")
                    b.set_alpha(0.45)
                    ax.text(b.get_x() + b.get_width() / 2, bottom * 1.3, "over\ncapacity", ha="center", va="bottom",
                            fontsize=7)
            if self.simulated is not None:
                sim = [self.simulated[m].get(s).mean_ms for s in names]
                ax.plot([x for x, y in zip(xs, sim) if math.isfinite(y)], [y for y in sim if math.isfinite(y)], "o",
                        color="black", ms=4, label="simulated mean" if j == 0 else None)
        for i, s in enumerate(self.sources):
            if s.deadline_ms is not None:
                ax.hlines(s.deadline_ms, i - 0.45, i + 0.45, colors="red", linestyles="--",
                          label="deadline" if i == next(k for k, x in enumerate(self.sources)
                                                        if x.deadline_ms is not None) else None)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{s.name}\n(priority {s.priority:g}, {s.rate_hz:g}/s)" for s in self.sources])
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.set_ylabel("latency per request, ms")
        ax.set_title(f"expected latency per source and allocation ({self.n_nodes} layers)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = Path(path)
        try:
            fig.savefig(path, dpi=120)
        finally:
            plt.close(fig)
        return path


def plan_sources(graph: Graph, cluster: Cluster, sources: Sources, *, simulate_s: float | None = None,
                 seed: int = SIM_SEED, costs: StageCosts | None = None) -> SourcesPlanned:
    """The priority-aware, priority-blind and local-only allocations of `sources` (every source's device
    must be in `cluster`: `load_sources` checks it), simulated for `simulate_s` seconds when given."""
    costs = costs or StageCosts(graph, cluster)
    allocs = allocate_all(graph, cluster, sources, costs=costs)
    simulated = None
    if simulate_s is not None:
        from edgepart.packager.sim import simulate

        simulated = {m: simulate(costs, sources, a, duration_s=simulate_s, seed=seed) for m, a in allocs.items()}
    return SourcesPlanned(sources, allocs, costs.n, simulated, simulate_s, seed)


__all__ = ["LABELS", "SourcesPlanned", "plan_sources"]

"""--strategy auto: plan every candidate with its own strategy, rank them by their own estimates,
and package the best for the objective (docs/planning.md, "Choosing the split").

The candidates: the best single device (the pipeline planner on that device alone), the pipeline
(devices that only make it worse left out), replicas, the dense channel split and the channel
split with its first layers replicated, and the spatial split gathering or pipelining the rest.
Every figure is the candidate strategy's own (its Planned value's `latency_with_fixed_ms` and
`throughput_with_fixed_per_s`, from cost.py: compute, transfer and the fixed costs of its steps and
messages, docs/planning.md "Fixed costs"); the pipeline's latency leaves out the caller's inputs and
outputs, which the others count, so they are added to it here (`caller_io_ms`). A candidate that
cannot plan this model is listed with its reason.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from edgepart.errors import EdgepartError, PlanningError

from edgepart.packager.cluster import Cluster
from edgepart.packager.strategies.auto.rank import Candidate, rank, reason
from edgepart.packager.strategies.base import Job, Packaged, get

REPLICATE = 0.15  # the channel candidate with its first layers on every device: up to 15 % extra compute each

# (name, strategy, options), the simpler first: a tie goes to the earlier
CANDIDATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("one device", "pipeline", {}),
    ("pipeline", "pipeline", {"leave_out": True}),
    ("replicas", "replicas", {}),
    ("spatial, gather", "spatial", {"rest": "gather"}),
    ("spatial, pipeline rest", "spatial", {"rest": "pipeline"}),
    ("channel, dense", "channel", {}),
    (f"channel, first layers replicated (+{REPLICATE:.0%})", "channel", {"replicate": REPLICATE}),
)


@dataclass(frozen=True)
class AutoPlanned:
    """Every candidate ranked for the objective, the winner first, and why it wins."""

    cluster: Cluster
    objective: str
    ranking: tuple[Candidate, ...]
    packaged: Any = None  # the winner's Planned value as packaged (set by `package`)
    strategy: str = "auto"

    @property
    def winner(self) -> Candidate:
        ok = [c for c in self.ranking if c.ok]
        if not ok:
            raise PlanningError("No strategy can plan this model on this cluster: " + "; ".join(
                f"{c.name}: {c.why_not}" for c in self.ranking))
        return ok[0]

    @property
    def reason(self) -> str:
        return reason(self.ranking, self.objective)

    @property
    def latency_ms(self) -> float:
        return self.winner.latency_ms

    @property
    def throughput_per_s(self) -> float:
        return self.winner.throughput_per_s

    def plot(self, path):
        """The winner's picture (`plan --plot`), where its strategy draws one (the pipeline)."""
        w = self.winner
        if not hasattr(w.planned, "plot"):
            raise PlanningError(f"--plot draws a pipeline's timeline; auto picked {w.name} (--strategy {w.strategy}), "
                                f"which has none: use `package --report report.html`.")
        return w.planned.plot(path)

    def to_dict(self) -> dict:
        w = self.winner
        return {
            "strategy": "auto", "objective": self.objective, "winner": w.name, "winner_strategy": w.strategy,
            "winner_options": dict(w.options), "winner_devices": list(w.devices), "reason": self.reason,
            "ranking": [{"rank": i + 1, "candidate": c.name, "strategy": c.strategy, "options": dict(c.options),
                         "devices": list(c.devices), "latency_ms": c.latency_ms, "throughput_per_s": c.throughput_per_s,
                         "headroom_per_s": c.headroom(),
                         "score_ms": c.score(self.objective), "left_out": _left_out(c, self.objective)}
                        for i, c in enumerate(x for x in self.ranking if x.ok)],
            "cannot_plan": [{"candidate": c.name, "strategy": c.strategy, "why": c.why_not}
                            for c in self.ranking if not c.ok],
            "plan": (self.packaged or w.planned).to_dict(),
        }

    def show(self, console, title: str) -> None:
        t = Table(title=f"{title}: every candidate's own estimate, objective {self.objective}", title_justify="left")
        for col, just in [("rank", "right"), ("candidate", "left"), ("strategy", "left"), ("devices", "left"),
                          ("est. latency ms", "right"), ("est. req/s", "right")]:
            t.add_column(col, justify=just)
        for i, c in enumerate(x for x in self.ranking if x.ok):
            t.add_row(str(i + 1), escape(c.name), c.strategy, ", ".join(c.devices), f"{c.latency_ms:,.3f}",
                      f"{c.throughput_per_s:,.1f}")
        for c in self.ranking:
            if not c.ok:
                t.add_row("—", escape(c.name), c.strategy, "", "cannot plan", "")
        console.print(t)
        app = self.cluster.caller
        where = ("back on the default link (the app on a host of its own)" if app is None else
                 f"back, the app running on {app} (cluster.yaml's caller: nothing crosses a link to {app} itself)")
        console.print(f"  latency: one request end to end, with the model's inputs sent from the caller and its outputs "
                      f"{where}; the pipeline's own figure leaves those out and auto adds them. req/s: streamed, the "
                      f"slowest device or link, the {'caller' if app is None else 'app' + chr(39) + 's device'}'s own "
                      f"link included.", soft_wrap=True)
        for c in self.ranking:
            for why in _left_out(c, self.objective):
                console.print(f"  {escape(c.name)}: {escape(why)}", soft_wrap=True)
            if not c.ok:
                console.print(f"  {escape(c.name)} cannot plan: {escape(c.why_not)}", soft_wrap=True)
        w = self.winner
        console.print(f"auto picks [bold]{escape(w.name)}[/] (--strategy {w.strategy}"
                      f"{''.join(f', {k}={v}' for k, v in w.options.items())}): {escape(self.reason)}.", soft_wrap=True)
        (self.packaged or w.planned).show(console, f"the winner, {w.name}")


class AutoStrategy:
    name = "auto"
    summary = ("plan every other strategy (one device, pipeline, replicas, channel, spatial), rank them by their own "
               "estimates for the objective, and use the best")
    options: dict[str, str] = {}

    def plan(self, job: Job) -> AutoPlanned:
        cands = []
        for name, strategy, options in CANDIDATES:
            job.say(f"planning candidate: {name}")
            cands.append(_one_device(job) if name == "one device" else _candidate(job, name, strategy, options))
        return AutoPlanned(job.cluster, job.objective, rank(_caller_bound(job, cands), job.objective))

    def package(self, job: Job, out: Path, *, report: bool = False) -> Packaged:
        auto = self.plan(job)
        w = auto.winner
        job.say(f"packaging the winner: {w.name}")
        res = get(w.strategy).package(dataclasses.replace(job, cluster=w.cluster, options=dict(w.options)), out,
                                      report=report)
        return Packaged(res.plan, res.out_dir, res.bundle_dirs, dataclasses.replace(auto, packaged=res.planned),
                        res.report, res.details)


def _caller_bound(job: Job, cands: list[Candidate]) -> list[Candidate]:
    """Each candidate's throughput held to what the caller's own link carries (cost.caller_period_ms):
    streamed requests all send their inputs and take their outputs on it, whatever the split; the
    strategies' own periods count their devices and the links between them only."""
    from edgepart.packager.cost import caller_period_ms
    from edgepart.packager.model.graph import analyse

    graph = next((c.planned.graph for c in cands if c.ok and hasattr(c.planned, "graph")), None)
    if graph is None:
        graph = analyse(job.model, dict(job.input_shapes) or None)
    bound = caller_period_ms(graph, job.cluster)
    if bound <= 0:  # the app on a device (`caller`): each candidate's own figures count its link
        return cands
    most = 1e3 / bound
    return [dataclasses.replace(c, throughput_per_s=min(c.throughput_per_s, most), headroom_per_s=c.throughput_per_s)
            if c.ok else c for c in cands]


def _estimates(planned) -> tuple[float, float]:
    """(latency with the caller's inputs and outputs, throughput) from a Planned value's own figures,
    each with the fixed costs of its steps and messages (docs/planning.md, "Fixed costs")."""
    lat = float(getattr(planned, "latency_with_fixed_ms", planned.latency_ms)) + float(getattr(planned, "caller_io_ms", 0.0))
    return lat, float(getattr(planned, "throughput_with_fixed_per_s", planned.throughput_per_s))


def _left_out(c: Candidate, objective: str) -> list[str]:
    """Why the candidate leaves devices of the cluster out (the pipeline's `left_out`, docs/planning.md)."""
    pp = getattr(c.planned, "pipeline", None)
    return [x.why(objective) for x in getattr(pp, "left_out", ())]


def _devices(planned, cluster: Cluster) -> tuple[str, ...]:
    pp = getattr(planned, "pipeline", None)
    if pp is not None:
        return pp.devices
    return tuple(d.name for d in cluster.devices)


def _why(e: BaseException) -> str:
    return str(e) if isinstance(e, EdgepartError) else f"{type(e).__name__}: {e}"


def _candidate(job: Job, name: str, strategy: str, options: dict) -> Candidate:
    try:
        planned = get(strategy).plan(dataclasses.replace(job, options=dict(options)))
        lat, thr = _estimates(planned)
    except Exception as e:  # noqa: BLE001 - a candidate that cannot plan is listed with its reason, not fatal
        return Candidate(name, strategy, options, job.cluster, why_not=_why(e))
    return Candidate(name, strategy, options, job.cluster, planned, _devices(planned, job.cluster), lat, thr)


def _one_device(job: Job) -> Candidate:
    """The best single device (the pipeline planner on it alone): on one device the cost model has no
    link, so the fastest device that holds the model is the best for either objective; where the app
    runs on a device (`caller`), the one whose estimate is best, its inputs' trip counted."""
    why = []
    app = job.cluster.caller
    best: Candidate | None = None
    for d in sorted(job.cluster.devices, key=lambda d: -d.gflops):
        # (the link between it and the app's device, where the app runs on another one)
        pairs = tuple(p for p in job.cluster.pair_links if {p[0], p[1]} == {d.name, app})
        one = dataclasses.replace(job.cluster, devices=(d,), pair_links=pairs)
        try:
            planned = get("pipeline").plan(dataclasses.replace(job, cluster=one, options={}))
        except Exception as e:  # noqa: BLE001 - the next device may hold it
            why.append(f"{d.name}: {_why(e)}")
            continue
        lat, thr = _estimates(planned)
        c = Candidate(f"one device ({d.name})", "pipeline", {}, one, planned, (d.name,), lat, thr)
        if app is None:  # no link to tell them apart: the fastest that holds it
            return c
        # the app on a device: the fastest is not the best where the inputs must travel to it
        if best is None or (lat < best.latency_ms if job.objective == "latency" else thr > best.throughput_per_s):
            best = c
    return best or Candidate("one device", "pipeline", {}, job.cluster, why_not="; ".join(why) or "no device")


__all__ = ["AutoPlanned", "AutoStrategy", "CANDIDATES", "REPLICATE"]

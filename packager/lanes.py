"""A plan with sources: each source's layers placed by the allocator, compiled into one plan whose
agents apply the scheduling rule (docs/priority.md, "Plans with sources").

    res = package_lanes(job, sources, mode="priority", out=Path("dist"))

For each source the allocator (priority.py) gives a cut k and helpers: the source's device runs
nodes[0:k] (its "head"), each helper may run nodes[k:] (a "tail" per helper) and sends the outputs
to the caller. The caller sends to the source's device only: a model input that a tail reads too is
passed on from there, so one agent picks the helper for everything a request sends into its group. The head's outputs go to the helpers as a group of alternatives with the rule
`priority`: the head's agent picks one per request from the live figures (edgepart.schedule). Cut k = n
is the whole model at home (a plan's k is at least 1: each source's own device runs its first
layers, as PA-MDI does; compile_lanes also takes k = 0, the caller sending to the helpers). Every step,
route and group is tagged with its source, so a request runs only its own lane; the plan's `Lanes`
carry each source's priority, rate, deadline and expected latency, and the queue rule: `priority`
for mode priority, `fifo` for the priority-blind baseline and local-only. Pure but for writing the
bundles (bundles.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
from rich import box
from rich.table import Table

from edgepart.errors import PlanningError
from edgepart.plan import CALLER, Alternatives, Codec, Hints, Lane, Lanes, Plan, Route, Step
from edgepart.sources import Sources

from edgepart.packager.bundles import StepModel, model_plan, write_bundles
from edgepart.packager.cluster import Cluster
from edgepart.packager.model import submodel as emit
from edgepart.packager.model.graph import Graph
from edgepart.packager.priority import MODES, Allocation, StageCosts, allocate
from edgepart.packager.strategies.base import Job, Packaged


@dataclass(frozen=True)
class LanesPlanned:
    """The allocation a plan with sources was compiled from, with what it was planned from."""

    model: onnx.ModelProto
    graph: Graph
    cluster: Cluster
    sources: Sources
    allocation: Allocation
    strategy: str = "pipeline"

    def to_dict(self) -> dict:
        return {"objective": "priority-weighted latency" if self.allocation.mode == "priority" else "latency",
                "sources": {"mode": self.allocation.mode, "rule": rule_of(self.allocation.mode),
                            **self.allocation.to_dict()}}

    def show(self, console, title: str) -> None:
        a, n = self.allocation, self.allocation.n_nodes
        t = Table(title=f"{title}: {len(a.placements)} sources, {a.mode} allocation, queues {rule_of(a.mode)}",
                  title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
        for col, just in (("source", "left"), ("device", "left"), ("priority", "right"), ("rate/s", "right"),
                          ("where its layers run", "left"), ("expected ms", "right")):
            t.add_column(col, justify=just)
        for p in a.placements:
            where = (f"all {n} here" if p.cut >= n else
                     f"first {p.cut} here, {n - p.cut} on {p.helpers[0]}" + (f" (or {', '.join(p.helpers[1:])})"
                                                                          if len(p.helpers) > 1 else ""))
            t.add_row(p.source, p.device, f"{p.priority:g}", f"{p.rate_hz:g}", where,
                      f"{p.expected_ms:.1f}" if math.isfinite(p.expected_ms) else "overloaded")
        console.print(t)


def rule_of(mode: str) -> str:
    """The queue rule agents apply under an allocation `mode`: priority order only for `priority`."""
    return "priority" if mode == "priority" else "fifo"


def compile_lanes(graph: Graph, alloc: Allocation, sources: Sources, costs: StageCosts) -> tuple[
        list[tuple[str, str, str, int, int, float]], list[Route], list[Alternatives]]:
    """The lanes' steps (name, source, device, start, stop, estimated ms), routes and groups."""
    n = graph.n
    steps: list[tuple[str, str, str, int, int, float]] = []
    routes: list[Route] = []
    groups: list[Alternatives] = []
    for p in alloc.placements:
        s = p.source
        producer: dict[str, str] = {i.name: CALLER for i in graph.inputs}
        parts: list[tuple[str, str, int, int]] = []  # (step, device, start, stop)
        if p.cut > 0:
            parts.append((f"{s}.head" if p.cut < n else f"{s}.all", p.device, 0, p.cut))
        if p.cut < n:
            parts += [(f"{s}.tail@{h}", h, p.cut, n) for h in p.helpers]
        for name, dev, a, b in parts:
            steps.append((name, s, dev, a, b, round(float(costs.compute_ms(dev, a, b)), 6)))
        head_out = set(graph.stage_io(0, p.cut)[1]) if p.cut > 0 else set()
        for t in head_out:
            producer[t] = p.device
        for name, dev, a, b in parts:
            ins, _ = graph.stage_io(a, b)
            for t in ins:
                src = producer[t]
                if src == CALLER and p.cut > 0 and dev != p.device:
                    # a model input the tail reads too goes on from the source's device, which picks
                    # the helper for the whole request: the caller sends to its own device only
                    src = p.device
                    if not any(r.tensor == t and r.src == CALLER and r.dst == p.device and r.source == s for r in routes):
                        routes.append(Route(t, CALLER, p.device, Codec(), s))
                if src != dev:
                    routes.append(Route(t, src, dev, Codec(), s))
        for o in graph.outputs:
            if o.name in producer and producer[o.name] != CALLER:  # made by the head
                routes.append(Route(o.name, producer[o.name], CALLER, Codec(), s))
            elif p.cut < n:
                routes += [Route(o.name, h, CALLER, Codec(), s) for h in p.helpers]
        if p.cut < n and len(p.helpers) > 1:
            src = p.device if p.cut > 0 else CALLER
            nbytes = costs.cut_bytes[p.cut]
            cost = []
            for h in p.helpers:
                comm = (0.0 if src == CALLER else float(costs.send_ms(src, h, nbytes)) + costs.latency_ms(src, h))
                # the tail's work with its fixed costs and messages (StageCosts.tail_ms); an agent puts the
                # step's measured time in place of its compute (agent/net/choose.py)
                cost.append(round(comm + float(costs.tail_ms(h, p.cut)), 6))
            groups.append(Alternatives(p.helpers, "priority", s, tuple(cost)))
    return steps, routes, groups


def package_lanes(job: Job, sources: Sources, mode: str, out: Path) -> Packaged:
    """Allocate every source's layers (`mode`: priority, blind or local) and write the bundles of the
    one plan that serves them all."""
    from edgepart.packager.model.fold import fold_constants
    from edgepart.packager.model.graph import analyse, model_sha256

    if mode not in MODES:
        raise PlanningError(f"--schedule must be one of {', '.join(MODES)}, not {mode!r} (docs/priority.md).")
    job.say("analysing and allocating the sources")
    model = fold_constants(job.model)
    graph = analyse(model, dict(job.input_shapes) or None)
    if model is not job.model:
        graph = dataclasses.replace(graph, sha256=model_sha256(job.model))
    costs = StageCosts(graph, job.cluster)
    alloc = allocate(graph, job.cluster, sources, mode, costs=costs, min_cut=1)
    steps, routes, groups = compile_lanes(graph, alloc, sources, costs)
    extracted: dict[tuple[int, int], tuple] = {}
    models = []
    uses = Counter((dev, a, b) for _, _, dev, a, b, _ in steps)
    for name, _src, dev, a, b, est in steps:
        if (a, b) not in extracted:
            job.say(f"emitting nodes {a}..{b - 1}")
            extracted[(a, b)] = emit.extract(model, graph, a, b, f"n{a}_{b}")
        sub, ins, outs = extracted[(a, b)]
        # sources that cut at one node run the same tail on a helper: one file, which their steps share
        # (and the agent one session: docs/priority.md, "Agents")
        file = f"nodes{a}-{b}.onnx" if uses[(dev, a, b)] > 1 else f"{name.replace('@', '_at_')}.onnx"
        models.append(StepModel(name, dev, file, sub, ins, outs, b - a, est))
    source_of = {name: src for name, src, *_ in steps}
    used = {dev for _, _, dev, *_ in steps}
    cluster = dataclasses.replace(job.cluster, devices=tuple(d for d in job.cluster.devices if d.name in used))
    lanes = Lanes(tuple(Lane(p.source, p.device, p.priority, p.rate_hz, sources.get(p.source).deadline_ms or 0.0,
                             round(p.expected_ms, 6) if math.isfinite(p.expected_ms) else 0.0)
                        for p in alloc.placements), rule_of(mode))

    def make_plan(written: list[Step]) -> Plan:
        tagged = tuple(dataclasses.replace(s, source=source_of[s.name]) for s in written)
        plan = model_plan("pipeline", graph, cluster, written, (), job.model_name, "latency",
                          tuple((f"{p.source}_ms", round(p.expected_ms, 6)) for p in alloc.placements
                                if math.isfinite(p.expected_ms)))
        return dataclasses.replace(plan, steps=tagged, routes=tuple(routes), alternatives=tuple(groups), hints=Hints(),
                                   lanes=lanes)

    plan, dirs = write_bundles(models, make_plan, Path(out), progress=job.progress)
    return Packaged(plan, Path(out), dirs, LanesPlanned(model, graph, job.cluster, sources, alloc), None, alloc)


__all__ = ["LanesPlanned", "compile_lanes", "package_lanes", "rule_of"]

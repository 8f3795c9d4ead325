"""Replicas: every device runs the whole model; each request goes to one of them.

Plan: every device must hold the model (its memory); one request's latency is the fastest device's
compute plus moving the inputs there and the outputs back; streamed, every device works at once, so
the cluster answers at the sum of their rates. Package: one step per device, the whole (folded)
model; a route from the caller to every device for every input and back for every output; and
the devices as one group of alternatives, picked per request by `rule` (edgepart.plan.Alternatives).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx
from rich.table import Table

from edgepart.errors import PlanningError
from edgepart.plan import CALLER, RULES, Alternatives, Codec, Route

from edgepart.packager.check.report import DeviceRow, PackageReport, RouteRow
from edgepart.packager.cluster import Cluster
from edgepart.packager.cost import caller_io_ms, compute_ms
from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.base import Job, Packaged

MIB = 1024 * 1024
DEFAULT_RULE = "least-outstanding"


@dataclass(frozen=True)
class ReplicasPlanned:
    """Each device's time for one request, and what the cluster does as a whole."""

    model: onnx.ModelProto  # folded: what every device runs
    graph: Graph
    cluster: Cluster
    rule: str
    device_ms: tuple[tuple[str, float], ...]  # compute per request on each device
    io_ms: float  # inputs there and outputs back, on the default link
    strategy: str = "replicas"

    def _io_ms(self, device: str) -> float:
        """The inputs to `device` and its outputs back: `io_ms`, or where the app runs on a device
        (`caller`), over the link from it (nothing on a wire for its own device: cost.caller_io_ms)."""
        if self.cluster.caller is None:
            return self.io_ms
        from edgepart.packager.cost import caller_io_ms

        return caller_io_ms(self.graph, self.cluster, device, device)

    @property
    def latency_ms(self) -> float:
        """One request alone: it goes to the device that answers it first (the fastest, with the app's
        own device's inputs local where it runs on one; what least-outstanding picks when idle)."""
        return min(ms + self._io_ms(d) for d, ms in self.device_ms)

    @property
    def throughput_per_s(self) -> float:
        """Streamed: every device busy at once, each at its own rate."""
        return sum(1e3 / ms for _, ms in self.device_ms if ms > 0)

    def _handling_ms(self, device: str) -> float:
        """The request's inputs in and outputs back at `device`'s handling_mbps (cost.py's
        handling_cpu_ms; 0 where cluster.yaml gives none)."""
        from edgepart.packager.cost import handling_cpu_ms, io_bytes
        from edgepart.plan import CALLER

        ins, outs = io_bytes(self.graph)
        return handling_cpu_ms(self.cluster, [(CALLER, device, ins, 1), (device, CALLER, outs, 1)]).get(device, 0.0)

    @property
    def latency_with_fixed_ms(self) -> float:
        """`latency_ms` with the fixed costs of the request's step and its two messages, and their
        bytes' handling (cost.py; docs/planning.md, "Fixed costs")."""
        from edgepart.packager.cost import chain_fixed_ms

        return min(ms + chain_fixed_ms(self.cluster, [d]) + self._handling_ms(d) + self._io_ms(d)
                   for d, ms in self.device_ms)

    @property
    def throughput_with_fixed_per_s(self) -> float:
        """`throughput_per_s` with each device's step per request and the caller's two messages at
        its end, and their bytes' handling (cost.py's fixed_ms, message_cpu_ms, handling_cpu_ms)."""
        from edgepart.packager.cost import fixed_ms, message_cpu_ms
        from edgepart.plan import CALLER

        per = {d: ms + fixed_ms(self.cluster, {d: 1}) + message_cpu_ms(self.cluster, {(CALLER, d): 1, (d, CALLER): 1})[d]
               + self._handling_ms(d) for d, ms in self.device_ms}
        rate = {d: 1e3 / ms for d, ms in per.items() if ms > 0}
        app = self.cluster.caller
        if app is None:  # the app's own link bounds every candidate alike (auto: cost.caller_period_ms)
            return sum(rate.values())
        # the app on a device: the requests it sends on go out through that device's one interface
        # (docs/planning.md, "One interface per host"), its own are local
        from edgepart.packager.cost import busy_ms, caller_link, io_bytes

        big = max(io_bytes(self.graph))
        others = [d for d in rate if d != app]
        per_request = max((float(busy_ms(big, caller_link(self.cluster, d))) for d in others), default=0.0)
        sent_on = sum(rate[d] for d in others)
        if per_request > 0:
            sent_on = min(sent_on, 1e3 / per_request)
        return rate.get(app, 0.0) + sent_on

    def to_dict(self) -> dict:
        g = self.graph
        return {"strategy": "replicas", "rule": self.rule, "latency_ms": self.latency_ms,
                "throughput_per_s": self.throughput_per_s, "latency_with_fixed_ms": self.latency_with_fixed_ms,
                "throughput_with_fixed_per_s": self.throughput_with_fixed_per_s,
                "model": {"nodes": g.n, "mflops": 2 * g.total_macs / 1e6, "param_mb": g.total_param_bytes / MIB},
                "devices": [{"device": d, "compute_ms": ms, "throughput_per_s": 1e3 / ms if ms > 0 else None}
                            for d, ms in self.device_ms],
                "io_ms": self.io_ms}

    def show(self, console, title: str) -> None:
        t = Table(title=title, title_justify="left")
        for col, just in [("device", "left"), ("holds", "right"), ("compute ms", "right"), ("req/s alone", "right")]:
            t.add_column(col, justify=just)
        for d, ms in self.device_ms:
            t.add_row(d, f"{self.graph.total_param_bytes / MIB:,.2f} MiB", f"{ms:.3f}", f"{1e3 / ms:,.1f}" if ms else "—")
        console.print(t)
        console.print(f"every device holds the whole model; each request goes to one ({self.rule}). Estimated latency "
                      f"[bold]{self.latency_ms:.3f} ms[/] per request; streamed [bold]{self.throughput_per_s:.1f} req/s[/] "
                      f"(the devices' rates added).")


class ReplicasStrategy:
    name = "replicas"
    summary = "every device holds the whole model and takes every N-th request (data parallelism)"
    options = {"rule": f"how the caller picks a device per request: {' or '.join(f'`{r}`' for r in RULES)} "
                       f"(default {DEFAULT_RULE})"}

    def plan(self, job: Job) -> ReplicasPlanned:
        from edgepart.packager.model.fold import fold_constants
        from edgepart.packager.model.graph import analyse, model_sha256

        rule = job.option("rule", DEFAULT_RULE)
        if rule not in RULES:
            raise PlanningError(f"Unknown rule {rule!r}; choose {' or '.join(f'`{r}`' for r in RULES)}.")
        if len(job.cluster.devices) < 2:
            raise PlanningError("Replicas need at least two devices in the cluster; with one, package any strategy "
                                "for it.")
        model = fold_constants(job.model)
        graph = analyse(model, dict(job.input_shapes) or None)
        if model is not job.model:
            graph = dataclasses.replace(graph, sha256=model_sha256(job.model))
        need = graph.total_param_bytes
        small = [d.name for d in job.cluster.devices if d.memory_bytes < need]
        if small:
            raise PlanningError(f"Replicas put the whole model ({need / MIB:,.1f} MiB of weights) on every device, and "
                                f"{', '.join(small)} has less memory (memory_mb in the cluster file). Use --strategy "
                                f"pipeline or channel to split it instead.")
        flops = 2.0 * graph.total_macs
        return ReplicasPlanned(model, graph, job.cluster, rule,
                               tuple((d.name, round(compute_ms(flops, d.gflops), 6)) for d in job.cluster.devices),
                               round(caller_io_ms(graph, job.cluster), 6))

    def package(self, job: Job, out: Path, *, report: bool = False) -> Packaged:
        from edgepart.packager.bundles import StepModel, model_plan, write_bundles
        from edgepart.packager.check.report import fidelity_without_calibration
        from edgepart.packager.model import submodel

        job.say("analysing and planning")
        planned = self.plan(job)
        g = planned.graph
        whole, ins, outs = submodel.extract(planned.model, g, 0, g.n, "replica")
        steps = [StepModel(f"replica@{d}", d, "model.onnx", whole, ins, outs, g.n, ms) for d, ms in planned.device_ms]
        routes = [Route(i.name, CALLER, d, Codec()) for d, _ in planned.device_ms for i in ins]
        routes += [Route(o.name, d, CALLER, Codec()) for d, _ in planned.device_ms for o in outs]
        group = (Alternatives(tuple(d for d, _ in planned.device_ms), planned.rule),)

        def make_plan(written):
            p = model_plan("replicas", g, job.cluster, written, routes, job.model_name, job.objective,
                           (("latency_ms", planned.latency_ms), ("throughput_per_s", round(planned.throughput_per_s, 6))))
            return dataclasses.replace(p, alternatives=group)

        plan, dirs = write_bundles(steps, make_plan, Path(out), progress=job.progress)
        rep = None
        if report:
            job.say("measuring fidelity for the report")
            fid = fidelity_without_calibration(out, job.model, plan, job.input_shapes, job.feeds)
            rows = tuple(DeviceRow(d, int(g.total_macs), int(g.total_param_bytes), 1, ms) for d, ms in planned.device_ms)
            rr = tuple(RouteRow(r.tensor, r.src, r.dst, r.codec.kind, int(g.tensor_bytes.get(r.tensor, 0))) for r in routes)
            caller = sum(g.tensor_bytes.get(t.name, 0) for t in g.inputs + g.outputs)
            rep = PackageReport(job.model_name, "replicas", plan.plan_id, plan.device_names(), planned.latency_ms, 0,
                                int(caller), (), rows, rr, int(g.total_macs), int(g.total_param_bytes), fidelity=fid,
                                notes=("each request goes to one device: the caller bytes are one request's",),
                                rows_are="cuts")
        return Packaged(plan, Path(out), dirs, planned, rep, None)

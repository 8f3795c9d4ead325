"""The pipeline strategy: each device runs a contiguous run of layers (docs/planning.md).

Plan: fold constants, analyse, place the stages with the optimal DP of planner.py. Package: cut each
stage out as a sub-model (model/submodel.py), one route per tensor and consuming device
(compiler.py), and write the bundles. Report: one row per cut, one per stage's device.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
from rich.table import Table

from edgepart.plan import CALLER

from edgepart.packager.check.report import DeviceRow, Fidelity, LayerRow, PackageReport, RouteRow
from edgepart.packager.cluster import Cluster
from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.base import Job, Packaged
from edgepart.packager.strategies.pipeline.planner import PipelinePlan

MIB = 1024 * 1024  # cluster.yaml's memory_mb is MiB: report memory in the same unit


@dataclass(frozen=True)
class PipelinePlanned:
    """A pipeline plan with what it was planned from: the folded model, its graph, the cluster."""

    model: onnx.ModelProto  # folded: what the stages are cut from
    graph: Graph
    cluster: Cluster
    pipeline: PipelinePlan
    planning_s: float
    strategy: str = "pipeline"

    def to_dict(self) -> dict:
        pp, g = self.pipeline, self.graph
        return {
            "objective": pp.objective,
            "latency_ms": pp.latency_ms,
            "period_ms": pp.period_ms,
            "throughput_per_s": pp.throughput_per_s,
            # with the fixed costs of steps and messages (docs/planning.md, "Fixed costs"): what auto ranks
            "latency_with_fixed_ms": self.latency_with_fixed_ms,
            "period_with_fixed_ms": self.period_with_fixed_ms,
            "planning_s": self.planning_s,
            "model": {"nodes": g.n, "mflops": 2 * g.total_macs / 1e6, "param_mb": g.total_param_bytes / MIB},
            "stages": [
                {
                    "stage": i, "device": s.device, "nodes": [s.start, s.stop],
                    "first": g.nodes[s.start].name, "last": g.nodes[s.stop - 1].name,
                    "mflops": s.flops / 1e6, "param_mb": s.param_bytes / MIB, "memory_mb": s.memory_bytes / MIB,
                    "send_bytes": s.send_bytes, "compute_ms": s.compute_ms, "send_ms": s.send_ms,
                    "link_busy_ms": s.link_busy_ms,
                    "crossing": list(g.crossing(s.stop)) if s.stop < g.n else [],
                }
                for i, s in enumerate(pp.stages)
            ],
            "left_out": [{"device": x.device, f"with_{self._what}_ms": _finite(x.with_ms),
                          f"without_{self._what}_ms": x.without_ms, "why": x.why(pp.objective)}
                         for x in pp.left_out],
        }

    @property
    def _what(self) -> str:
        return "latency" if self.pipeline.objective == "latency" else "period"

    @property
    def latency_ms(self) -> float:
        return self.pipeline.latency_ms

    @property
    def period_ms(self) -> float:
        return self.pipeline.period_ms

    @property
    def throughput_per_s(self) -> float:
        return self.pipeline.throughput_per_s

    @property
    def latency_with_fixed_ms(self) -> float:
        """One request through the stages with the fixed costs of its steps and messages (cost.py's
        pipeline_ms; docs/planning.md, "Fixed costs"), as the planner minimised it; the plan's own
        figure leaves them out."""
        return self.pipeline.latency_with_fixed_ms

    @property
    def period_with_fixed_ms(self) -> float:
        """The slowest stage or link with the fixed costs (cost.py's pipeline_ms)."""
        return self.pipeline.period_with_fixed_ms

    @property
    def throughput_with_fixed_per_s(self) -> float:
        return 1e3 / self.period_with_fixed_ms if self.period_with_fixed_ms > 0 else float("inf")

    @property
    def caller_io_ms(self) -> float:
        """The model's inputs sent to the first stage and its outputs back (on the default link, or
        where the app runs on a device, on the links from and to it): the pipeline's latency leaves
        them out (docs/planning.md, "Known approximations"); the other strategies count them, so
        `--strategy auto` adds this to compare like with like."""
        from edgepart.packager.cost import caller_io_ms

        devs = self.pipeline.devices
        return caller_io_ms(self.graph, self.cluster, devs[0], devs[-1]) if devs else caller_io_ms(self.graph, self.cluster)

    def show(self, console, title: str) -> None:
        pp, g = self.pipeline, self.graph
        t = Table(title=title, title_justify="left")
        for col, just in [("stage", "right"), ("device", "left"), ("layers", "left"), ("MFLOPs", "right"),
                          ("params MiB", "right"), ("sent to next", "right"), ("compute ms", "right"),
                          ("send ms", "right")]:
            t.add_column(col, justify=just)
        last = len(pp.stages) - 1
        for i, s in enumerate(pp.stages):
            layers = (f"{s.start}–{s.stop - 1} ({s.stop - s.start}: "
                      f"{g.nodes[s.start].op_type}…{g.nodes[s.stop - 1].op_type})")
            n = len(g.crossing(s.stop)) if i < last else 0
            sent = "—" if i == last else f"{s.send_bytes / 1e3:,.1f} kB ({n} tensor{'s' if n != 1 else ''})"
            t.add_row(str(i), s.device, layers, f"{s.flops / 1e6:,.1f}", f"{s.param_bytes / MIB:,.2f}", sent,
                      f"{s.compute_ms:.3f}", "—" if i == last else f"{s.send_ms:.3f}")
        console.print(t)
        for x in pp.left_out:
            console.print(f"{x.why(pp.objective)} (no stage, no bundle)")
        console.print(
            f"estimated latency [bold]{pp.latency_ms:.3f} ms[/] per request; pipelined throughput "
            f"[bold]{pp.throughput_per_s:.1f} req/s[/] (slowest stage or link {pp.period_ms:.3f} ms); "
            f"objective {pp.objective}; planned in {self.planning_s * 1e3:.0f} ms."
        )
        console.print(f"with the fixed costs of steps and messages: latency {self.latency_with_fixed_ms:.3f} ms, slowest "
                      f"stage or link {self.period_with_fixed_ms:.3f} ms (docs/planning.md, \"Fixed costs\").", soft_wrap=True)

    def plot(self, path: Path | str) -> Path:
        """One request's timeline and the bytes crossing every cut, as a PNG."""
        from edgepart.packager.strategies.pipeline.figure import plot_pipeline

        return plot_pipeline(self.graph, self.pipeline, path)


def _finite(v: float) -> float | None:
    return v if v == v and v not in (float("inf"), float("-inf")) else None


class PipelineStrategy:
    name = "pipeline"
    summary = "each device runs a run of layers, placed by the cost model"
    options: dict[str, str] = {
        "leave_out": "leave out a device when every plan that uses it is worse for the objective: it gets no stage "
                     "and no bundle, and the plan says why (default off: every device gets a stage; `--strategy "
                     "auto` always leaves out; docs/planning.md, \"Fewer devices\")",
    }

    def plan(self, job: Job) -> PipelinePlanned:
        from edgepart.packager.model.fold import fold_constants
        from edgepart.packager.model.graph import analyse, model_sha256
        from edgepart.packager.strategies.pipeline.planner import plan_pipeline

        # what is computed from constants alone never crosses a cut (model/fold.py); the plan still
        # names the model as read (its sha256), which `verify` checks the bundles against
        model = fold_constants(job.model)
        graph = analyse(model, dict(job.input_shapes) or None)
        if model is not job.model:
            graph = dataclasses.replace(graph, sha256=model_sha256(job.model))
        t0 = time.perf_counter()
        pp = plan_pipeline(graph, job.cluster, job.objective, leave_out=bool(job.option("leave_out", False)))
        return PipelinePlanned(model, graph, job.cluster, pp, time.perf_counter() - t0)

    def package(self, job: Job, out: Path, *, report: bool = False) -> Packaged:
        from edgepart.packager.check.report import fidelity_without_calibration
        from edgepart.packager.strategies.pipeline.compiler import package as write_pipeline

        job.say("analysing and planning")
        planned = self.plan(job)
        res = write_pipeline(planned.model, planned.graph, planned.cluster, planned.pipeline, out,
                             model_name=job.model_name, progress=job.progress, wire_codec=job.wire_codec)
        rep = None
        if report:
            job.say("measuring fidelity for the report")
            fid = fidelity_without_calibration(out, job.model, res.plan, job.input_shapes, job.feeds)
            rep = pipeline_report(res, planned.graph, job.model_name, fid)
        return Packaged(res.plan, Path(out), res.bundle_dirs, planned, rep, res)


def pipeline_report(res, graph: Graph, model_name: str, fidelity: Fidelity | None = None) -> PackageReport:
    """The report of a pipeline (compiler.package's result): one row per cut, one per stage's device."""
    pp, plan = res.pipeline, res.plan
    layers = tuple(
        LayerRow(f"cut after stage{i} ({s.device}, node {s.stop - 1}: {graph.nodes[s.stop - 1].name})",
                 ", ".join(graph.crossing(s.stop)), s.send_bytes, s.send_bytes)
        for i, s in enumerate(pp.stages[:-1]))
    rows = tuple(DeviceRow(s.device, int(round(s.flops / 2)), int(s.param_bytes), 1, round(s.compute_ms, 6))
                 for s in pp.stages)
    routes = tuple(RouteRow(r.tensor, r.src, r.dst, r.codec.kind, int(graph.tensor_bytes.get(r.tensor, 0)))
                   for r in plan.routes)
    between = sum(r.size_bytes for r in routes if CALLER not in (r.src, r.dst))
    caller = sum(r.size_bytes for r in routes if CALLER in (r.src, r.dst))
    return PackageReport(model_name, "pipeline", plan.plan_id, tuple(s.device for s in pp.stages), pp.latency_ms,
                         between, caller, layers, rows, routes, int(graph.total_macs), int(graph.total_param_bytes),
                         fidelity=fidelity, rows_are="cuts")



"""The spatial strategy: the model's first layers split by image rows (fused tile partitioning, as
DeepThings does; docs/spatial.md).

Plan: fold constants, analyse, choose the fused prefix and every device's strip (planner.py). Package:
the tiles, strip and gather steps (compiler.py), one route per tensor and consuming device, written
as bundles. Report: one row per device, with its strip's weights and peak activations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import onnx
from rich.table import Table

from edgepart.plan import CALLER

from edgepart.packager.cluster import Cluster
from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.base import Job, Packaged, StreamedFigures
from edgepart.packager.strategies.spatial.planner import SpatialPlan
from edgepart.packager.strategies.spatial.rest import REST, RestPipeline

MIB = 1024 * 1024


@dataclass(frozen=True)
class SpatialPlanned(StreamedFigures):
    """A spatial plan with what it was planned from: the folded model, its graph, the cluster."""

    model: onnx.ModelProto
    graph: Graph
    cluster: Cluster
    spatial: SpatialPlan
    rest: RestPipeline | None = None  # the rest of the model as a pipeline (rest="pipeline")
    strategy: str = "spatial"

    @property
    def latency_ms(self) -> float:
        return self.rest.latency_ms if self.rest is not None else self.spatial.latency_ms

    @property
    def latency_with_fixed_ms(self) -> float:
        """`latency_ms` with the fixed costs of the request's steps and messages (cost.py's
        fork_join_fixed_ms: the tiles step, the strips at once, the rest; docs/planning.md, "Fixed
        costs")."""
        from edgepart.packager.cost import fork_join_fixed_ms

        sp = self.spatial
        tail = [st.device for st in self.rest.pipeline.stages] if self.rest is not None else [sp.gather]
        return self.latency_ms + fork_join_fixed_ms(self.cluster, sp.gather, [s.device for s in sp.strips], tail) \
            + self._one_interface_ms(tail[0]) + self._handling_ms(tail)

    def _handling_ms(self, tail: list[str]) -> float:
        """The messages' bytes at the devices' handling_mbps (cost.py's handling_ms; 0 where
        cluster.yaml gives none) on the request's path: the gathering device takes the inputs in and
        sends every strip its rows, one after another; the slowest strip takes its rows in and sends
        its result on; the rest's first device takes every result in; then each cut of the rest at
        both ends and the outputs back."""
        from edgepart.packager.cost import handling_ms, io_bytes

        sp, cl = self.spatial, self.cluster
        dev = cl.device
        join = tail[0]
        ins, outs = io_bytes(self.graph)
        head = handling_ms(dev(sp.gather), ins + sum(s.in_bytes for s in sp.strips if s.device != sp.gather))
        branch = max((handling_ms(dev(s.device), (s.in_bytes if s.device != sp.gather else 0)
                                  + (s.out_bytes if s.device != join else 0)) for s in sp.strips), default=0.0)
        taken = handling_ms(dev(join), sum(s.out_bytes for s in sp.strips if s.device != join))
        rest = self.rest.pipeline.stages if self.rest is not None else ()
        cuts = sum(handling_ms(dev(a.device), a.send_bytes) + handling_ms(dev(b.device), a.send_bytes)
                   for a, b in zip(rest, rest[1:]))
        return float(head + branch + taken + cuts + handling_ms(dev(tail[-1]), outs))

    def _one_interface_ms(self, join: str) -> float:
        """How much later the last strip reaches `join` when the gathering device sends the strips'
        rows one after another on its one interface, and `join` takes their results in one after
        another, than when every strip has a link of its own, as `latency_ms` counts them
        (docs/planning.md, "One interface per host")."""
        from edgepart.packager.cost import fork_join_ms

        sp, cl = self.spatial, self.cluster
        branches = [(s.device, s.in_bytes, s.compute_ms, s.out_bytes) for s in sp.strips]
        alone = fork_join_ms(cl, sp.gather, join, branches, shared=False)
        shared = fork_join_ms(cl, sp.gather, join, branches)
        return max(0.0, float(shared - alone))

    @property
    def period_ms(self) -> float:
        """Streamed, the busiest device (its strip and its share of the rest) or link (a strip's image
        rows one way, its rows of T the other; with rest="pipeline" also the rest's links), in
        cost.py's terms: one result every period_ms (docs/planning.md, "Objectives")."""
        return self._period(False)

    def _period(self, fixed: bool) -> float:
        from edgepart.packager.cost import busy_ms

        sp, cl = self.spatial, self.cluster
        stages = self.rest.pipeline.stages if self.rest is not None else ()
        busy = [s.compute_ms + self.rest_share(s.device)[1] for s in sp.strips]
        first = stages[0].device if stages else sp.gather
        if fixed:
            return self._period_with_fixed(busy, stages, first)
        for s in sp.strips:
            if s.device != sp.gather:
                busy.append(float(busy_ms(s.in_bytes, cl.link(sp.gather, s.device))))
            if s.device != first:
                busy.append(float(busy_ms(s.out_bytes, cl.link(s.device, first))))
        busy += [st.link_busy_ms for st, nxt in zip(stages, stages[1:])]
        return max(busy, default=0.0)

    def _period_with_fixed(self, busy: list[float], stages, first: str) -> float:
        """Each device's steps (its strip, the tiles on the gathering device, its part of the rest)
        and the messages at its ends beside its compute; every transfer, the caller's too, on each
        host's one interface (cost.streamed_fixed_period_ms)."""
        from edgepart.packager.cost import io_bytes, streamed_fixed_period_ms
        from edgepart.plan import CALLER

        sp, cl = self.spatial, self.cluster
        steps = {s.device: 1 + (s.device == sp.gather) + (self.rest is None and s.device == sp.gather)
                 + sum(st.device == s.device for st in stages) for s in sp.strips}
        last = stages[-1].device if stages else sp.gather
        ins, outs = io_bytes(self.graph)
        flows = [(CALLER, sp.gather, ins, 1), (last, CALLER, outs, 1)]
        flows += [(sp.gather, s.device, s.in_bytes, 1) for s in sp.strips]
        flows += [(s.device, first, s.out_bytes, 1) for s in sp.strips]
        flows += [(st.device, nxt.device, st.send_bytes, 1) for st, nxt in zip(stages, stages[1:])]
        return streamed_fixed_period_ms(cl, {s.device: b for b, s in zip(busy, sp.strips)}, steps, flows)

    def memory(self) -> list[tuple[str, int, int, int]]:
        """Per device: (device, weight bytes, peak activation bytes, total), its strip and, on the
        gathering device, the rest of the model."""
        out = []
        for d in self.cluster.devices:
            w, p = self.spatial.memory(d.name, with_rest=self.rest is None)
            if self.rest is not None:
                rw, rp = self.rest.memory(d.name)
                w, p = w + rw, max(p, rp)
            out.append((d.name, w, p, w + p))
        return out

    def rest_share(self, device: str) -> tuple[float, float]:
        """(FLOPs, compute ms) of the rest of the model `device` runs: all of it on the gathering
        device, or its pipeline stage."""
        if self.rest is not None:
            st = next((s for s in self.rest.pipeline.stages if s.device == device), None)
            return (st.flops, st.compute_ms) if st is not None else (0.0, 0.0)
        sp = self.spatial
        return (sp.rest_flops, sp.rest_ms) if device == sp.gather else (0.0, 0.0)

    def to_dict(self) -> dict:
        sp, g = self.spatial, self.graph
        pre = sp.prefix
        mem = {d: (w, p, t) for d, w, p, t in self.memory()}
        return {
            "strategy": "spatial", "latency_ms": self.latency_ms, "latency_with_fixed_ms": self.latency_with_fixed_ms,
            "model": {"nodes": g.n, "mflops": 2 * g.total_macs / 1e6, "param_mb": g.total_param_bytes / MIB},
            "fused": {"image": pre.image, "until": pre.until, "nodes": len(pre.nodes), "image_rows": pre.image_rows,
                      "rows": pre.until_rows, "mflops": sp.prefix_flops / 1e6},
            "gather": sp.gather,
            "rest": {"nodes": len(pre.rest), "mflops": sp.rest_flops / 1e6, "compute_ms": sp.rest_ms,
                     "as": "pipeline" if self.rest is not None else "gather",
                     "stages": [{"device": st.device, "mflops": st.flops / 1e6, "compute_ms": st.compute_ms}
                                for st in self.rest.pipeline.stages] if self.rest is not None else []},
            "strips": [{"device": s.device, "rows": list(s.rows), "input_rows": list(s.input_rows),
                        "halo_rows": self.halo(s), "mflops": s.flops / 1e6, "compute_ms": s.compute_ms,
                        "in_bytes": s.in_bytes, "out_bytes": s.out_bytes} for s in sp.strips],
            "memory": [{"device": d, "weight_bytes": w, "peak_activation_bytes": p, "total_bytes": t}
                       for d, (w, p, t) in mem.items()],
            "unsplit_memory_bytes": sp.whole_memory_bytes, "unsplit_weight_bytes": sp.whole_weight_bytes,
            "candidates": [{"until": t, "latency_ms": ms} for t, ms in sp.candidates],
            "rest_pipeline": [] if self.rest is None else [
                {"device": s.device, "nodes": [s.start, s.stop], "mflops": s.flops / 1e6, "compute_ms": s.compute_ms,
                 "send_bytes": s.send_bytes} for s in self.rest.pipeline.stages],
        }

    def halo(self, s) -> int:
        """Image rows a strip reads beyond its own share of the image (rows of T scaled to the image)."""
        pre = self.spatial.prefix
        own = (s.rows[1] - s.rows[0]) * pre.image_rows / pre.until_rows
        return max(0, int(round(s.input_rows[1] - s.input_rows[0] - own)))

    def show(self, console, title: str) -> None:
        sp = self.spatial
        pre = sp.prefix
        last = self.graph.nodes[pre.nodes[-1]]
        t = Table(title=title, title_justify="left")
        for col, just in [("device", "left"), ("rows of output", "right"), ("image rows (halo)", "right"),
                          ("MFLOPs", "right"), ("compute ms", "right"), ("weights MiB", "right"),
                          ("peak act. MiB", "right"), ("memory vs unsplit", "right")]:
            t.add_column(col, justify=just)
        mem = {d: (w, p, tot) for d, w, p, tot in self.memory()}
        for s in sp.strips:
            w, p, tot = mem[s.device]
            t.add_row(s.device + (" (gathers)" if s.device == sp.gather and self.rest is None else ""), f"{s.rows[0]}–{s.rows[1]}",
                      f"{s.input_rows[0]}–{s.input_rows[1]} (+{self.halo(s)})", f"{s.flops / 1e6:,.1f}",
                      f"{s.compute_ms:.3f}", f"{w / MIB:,.2f}", f"{p / MIB:,.2f}",
                      f"{tot / MIB:,.2f} / {sp.whole_memory_bytes / MIB:,.2f} MiB ({tot / max(sp.whole_memory_bytes, 1):.0%})")
        console.print(t)
        if self.rest is not None:
            pp, rg = self.rest.pipeline, self.rest.graph
            stages = "; ".join(f"{st.device}: nodes {st.start}–{st.stop - 1} ({st.flops / 1e6:,.1f} MFLOPs, "
                               f"{st.compute_ms:.3f} ms)" for st in pp.stages)
            console.print(f"fused prefix: {len(pre.nodes)} nodes up to {last.name!r} ({last.op_type}), output "
                          f"{pre.until_rows} rows from {pre.image_rows} image rows; {sp.gather} slices the image; the "
                          f"strips are joined and the other {rg.n - 1} nodes run as a pipeline: {stages}. Estimated "
                          f"latency [bold]{self.latency_ms:.3f} ms[/] per request.")
            return
        console.print(
            f"fused prefix: {len(pre.nodes)} nodes up to {last.name!r} ({last.op_type}), output {pre.until_rows} rows "
            f"from {pre.image_rows} image rows, {sp.prefix_flops / 1e6:,.1f} MFLOPs unsplit; {sp.gather} slices the "
            f"image, gathers the strips and runs the other {len(pre.rest)} nodes ({sp.rest_flops / 1e6:,.1f} MFLOPs, "
            f"{sp.rest_ms:.3f} ms). Estimated latency [bold]{sp.latency_ms:.3f} ms[/] per request.")


class SpatialStrategy:
    name = "spatial"
    summary = "the first layers split by image rows: each device computes its strip plus a halo (DeepThings)"
    options = {"tile_until": "the node (or tensor) that ends the fused prefix: its output is gathered and the rest "
                             "runs on one device (default: the cost model's choice)",
               "rest": "after the strips: `gather` (default: the fastest device joins them and runs the rest of the "
                       "model) or `pipeline` (the rest split into a pipeline over every device)"}

    def plan(self, job: Job) -> SpatialPlanned:
        from edgepart.packager.model.fold import fold_constants
        from edgepart.packager.model.graph import analyse, model_sha256
        from edgepart.packager.strategies.spatial.planner import plan_spatial

        model = fold_constants(job.model)
        graph = analyse(model, dict(job.input_shapes) or None)
        if model is not job.model:
            graph = dataclasses.replace(graph, sha256=model_sha256(job.model))
        rest = job.option("rest", "gather")
        if rest not in REST:
            from edgepart.errors import PlanningError

            raise PlanningError(f"Unknown rest {rest!r}; choose {' or '.join(f'`{r}`' for r in REST)}.")
        sp = plan_spatial(model, graph, job.cluster, job.option("tile_until"), rest)
        rp = None
        if rest == "pipeline":
            from edgepart.packager.strategies.spatial.rest import plan_rest

            rp = plan_rest(model, graph, job.cluster, sp, job.objective)
        planned = SpatialPlanned(model, graph, job.cluster, sp, rp)
        for d, w, p, total in planned.memory():  # a strip and a stage of the rest on one device
            if total > job.cluster.device(d).memory_bytes:
                from edgepart.errors import PlanningError

                raise PlanningError(f"{d} needs {total / MIB:,.1f} MiB for its strip and its stage of the rest (weights "
                                    f"and peak activations) and has {job.cluster.device(d).memory_mb:,.0f} MiB "
                                    f"(memory_mb in the cluster file). Use --rest gather, or cut earlier (--tile-until).")
        return planned

    def package(self, job: Job, out: Path, *, report: bool = False) -> Packaged:
        from edgepart.packager.check.report import DeviceRow, PackageReport, RouteRow, fidelity_without_calibration
        from edgepart.packager.strategies.spatial.compiler import write

        job.say("analysing and planning")
        planned = self.plan(job)
        g, sp = planned.graph, planned.spatial
        (plan, dirs), routes = write(planned.model, g, job.cluster, sp, Path(out), job.model_name, job.objective,
                                     job.progress, planned.rest)
        rep = None
        if report:
            job.say("measuring fidelity for the report")
            fid = fidelity_without_calibration(out, job.model, plan, job.input_shapes, job.feeds)
            mem = {d: w for d, w, _, _ in planned.memory()}
            rows = tuple(DeviceRow(s.device, int((s.flops + planned.rest_share(s.device)[0]) / 2), mem[s.device],
                                   len(plan.steps_of(s.device)), round(s.compute_ms + planned.rest_share(s.device)[1], 6))
                         for s in sp.strips)
            sizes = {st.name: 0 for st in plan.steps}
            sizes.update({o.name: _bytes(o) for st in plan.steps for o in st.outputs})
            sizes.update({i.name: int(g.tensor_bytes.get(i.name, 0)) for i in g.inputs})
            rr = tuple(RouteRow(r.tensor, r.src, r.dst, r.codec.kind, int(sizes.get(r.tensor, 0))) for r in routes)
            between = sum(x.size_bytes for x in rr if CALLER not in (x.src, x.dst))
            caller = sum(x.size_bytes for x in rr if CALLER in (x.src, x.dst))
            rep = PackageReport(job.model_name, "spatial", plan.plan_id, plan.device_names(), planned.latency_ms, between,
                                caller, (), rows, rr, int(g.total_macs), int(g.total_param_bytes), fidelity=fid,
                                notes=(f"fused prefix up to {sp.prefix.until!r}, strips by rows",), rows_are="cuts")
        return Packaged(plan, Path(out), dirs, planned, rep, sp)


def _bytes(spec) -> int:
    import numpy as np

    n = 1
    for d in spec.shape:
        n *= d if isinstance(d, int) and d > 0 else 1
    return int(n * np.dtype(spec.dtype).itemsize)

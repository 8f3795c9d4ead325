"""The channel strategy: every layer split by output channels across the devices (docs/channel.md),
optionally with its first layers replicated on every device, or the model restructured first so
that little crosses (RePurpose, low-rank; docs/sparse.md).

Plan: compile the split and report its figures, nothing written. Package: replicate -> RePurpose
-> analyse -> compile (compiler.py) -> write the bundles -> the report with its fidelity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rich.markup import escape

from edgepart.errors import PlanningError

from edgepart.packager.check.report import DeviceRow, Fidelity, LayerRow, PackageReport, RouteRow
from edgepart.packager.cluster import Cluster
from edgepart.packager.strategies.base import Job, Packaged, StreamedFigures
from edgepart.packager.strategies.channel.compiler import ChannelReport

MIB = 1024 * 1024
DEFAULT_HOLDOUT = 0.2  # share of the calibration samples kept out of RePurpose, for the report's fidelity
METHODS = ("prune", "lowrank")

OPTIONS = {
    "partition": "an .npz (or a mapping) of Conv/Gemm/MatMul output names to device indices per output channel",
    "calibration": "calibration inputs (an .npz or a mapping, batches [N, ...]) for RePurpose, with comm_budget",
    "comm_budget": "the bytes allowed between devices, as a fraction of the dense channel split's",
    "method": "how RePurpose cuts the bytes: `prune` or `lowrank`",
    "replicate": "compute the first layers on every device, up to this fraction of the model's compute extra",
    "holdout": f"the share of the calibration samples kept out of RePurpose for the report (default {DEFAULT_HOLDOUT})",
}


@dataclass(frozen=True)
class ChannelPlanned(StreamedFigures):
    """A compiled channel split's figures (nothing written), with what restructured the model."""

    report: ChannelReport
    cluster: Cluster
    replicated: Any = None  # restructure.ReplicateReport
    sparse: Any = None  # restructure.SparseReport (RePurpose)
    strategy: str = "channel"
    prefixes: bool = False  # list every prefix that could be replicated, with its cost (plan --replicate)

    @property
    def dense_baseline(self) -> int | None:
        """The ORIGINAL model's dense split, when the model was restructured (else None)."""
        if self.sparse is None and not (self.replicated is not None and self.replicated.nodes):
            return None
        return dense_baseline(self.report, self.sparse, self.replicated)

    @property
    def latency_ms(self) -> float:
        return self.report.latency_ms

    @property
    def latency_with_fixed_ms(self) -> float:
        """The critical path with the fixed costs of its steps and messages (docs/planning.md, "Fixed
        costs"); the plan records it without them (`latency_ms`)."""
        return self.report.latency_fixed_ms or self.report.latency_ms

    @property
    def period_ms(self) -> float:
        """Streamed, the busiest device or directed link (cost.py's compute_ms and busy_ms): the
        slowest of them bounds one result every period_ms (docs/planning.md, "Objectives")."""
        return self._period(False)

    def _period(self, fixed: bool) -> float:
        from edgepart.packager.cost import busy_ms, compute_ms, streamed_fixed_period_ms
        from edgepart.plan import CALLER

        macs, steps = dict(self.report.macs), dict(self.report.steps)
        msgs = {(a, b): n for a, b, n in self.report.messages}
        sent: dict[tuple[str, str], int] = {}
        for r in self.report.routes:
            if fixed or CALLER not in (r.src, r.dst):
                sent[(r.src, r.dst)] = sent.get((r.src, r.dst), 0) + r.size_bytes
        compute = {d.name: float(compute_ms(2.0 * macs.get(d.name, 0), d.gflops)) for d in self.cluster.devices}
        if fixed:  # each device's steps and the messages at its ends; the caller's inputs and outputs
            # too, on each host's one interface (cost.streamed_fixed_period_ms)
            flows = [(s, d, b, msgs.get((s, d), 1)) for (s, d), b in sent.items()]
            return streamed_fixed_period_ms(self.cluster, compute, steps, flows)
        busy = list(compute.values())
        busy += [float(busy_ms(b, self.cluster.link(s, d))) for (s, d), b in sent.items()]
        return max(busy, default=0.0)

    def to_dict(self) -> dict:
        return {"strategy": "channel", "report": self.report.to_dict(),
                "replicated": self.replicated.to_dict() if self.replicated is not None else None}

    def show(self, console, title: str) -> None:
        rep, cl = self.report, self.cluster
        dense = self.dense_baseline
        partial = sum(1 for _, _, d in rep.decisions if d.partial)
        console.print(f"{title}: {rep.cross_device_bytes:,} bytes between devices per inference (split layers: "
                      f"dense {dense if dense is not None else rep.layers.dense_bytes:,}"
                      f"{' (the original model)' if dense is not None else ''}, used {rep.layers.used_bytes:,}, "
                      f"sent {rep.layers.sent_bytes:,}"
                      f"{f' with partial sums in {partial} layers' if partial else ''}); estimated latency "
                      f"[bold]{rep.latency_ms:.3f} ms[/] ({self.latency_with_fixed_ms:.3f} ms with the fixed costs of "
                      f"{sum(n for _, n in rep.steps)} steps and {sum(n for *_, n in rep.messages)} messages between "
                      f"devices)", soft_wrap=True)
        macs, params = dict(rep.macs), dict(rep.param_bytes)
        for dev in cl.devices:
            console.print(f"  {dev.name}: {macs.get(dev.name, 0) / 1e6:,.1f} M MACs, "
                          f"{params.get(dev.name, 0) / MIB:,.2f} MiB of weights")
        for name, op, d in rep.decisions:
            if d.kind in ("whole", "reduce"):
                console.print(f"  {escape(name)} ({op}): {d.kind} on {cl.devices[d.device].name} — {escape(d.note)}")
        if self.replicated is not None:
            console.print(f"  {escape(self.replicated.summary())}")
            if self.prefixes:
                for end, frac in self.replicated.options:
                    console.print(f"    prefix up to {escape(end)}: +{frac:.1%} of the model's MACs per device")
        if self.sparse is not None:
            s = self.sparse
            console.print(f"  RePurpose: split layers {s.dense_bytes:,} -> {s.used_bytes:,} bytes "
                          f"({s.ratio:.2f}x fewer); per layer:\n{escape(s.table())}")


@dataclass(frozen=True)
class ChannelPackaged(ChannelPlanned):
    def to_dict(self) -> dict:
        d = super().to_dict()
        d["sparse"] = self.sparse.to_dict() if self.sparse is not None else None
        return d

    def show(self, console, title: str) -> None:
        super().show(console, title)
        for note in self.report.notes:
            console.print(f"  note: {escape(note)}")


class ChannelStrategy:
    name = "channel"
    summary = ("each device computes a share of every layer's output channels, receiving only the input "
               "channels its weights use; see docs/channel.md")
    options = OPTIONS

    def plan(self, job: Job) -> ChannelPlanned:
        from edgepart.packager.model.graph import analyse
        from edgepart.packager.strategies.channel.compiler import compile_channel

        for k in ("partition", "calibration", "comm_budget", "method", "holdout"):
            if job.options.get(k) is not None:
                raise PlanningError(f"--{k.replace('_', '-')} applies to `package` only: `plan --strategy channel` "
                                    f"shows the split before any restructuring (--replicate aside).")
        m, part, rep = job.model, None, None
        if job.option("replicate") is not None:
            from edgepart.packager.strategies.channel.restructure import replicate as replicate_first

            r = replicate_first(m, len(job.cluster.devices), job.option("replicate"),
                                input_shapes=dict(job.input_shapes) or None)
            m, part, rep = r.model, r.partition, r.report
        prog = compile_channel(m, analyse(m, dict(job.input_shapes)), job.cluster, part)
        return ChannelPlanned(prog.report, job.cluster, rep, prefixes=True)

    def package(self, job: Job, out: Path, *, report: bool = False) -> Packaged:
        from edgepart.inputs import load_npz
        from edgepart.packager.check.report import split_holdout
        from edgepart.packager.model.fold import fold_constants
        from edgepart.packager.model.graph import analyse, is_fixed, model_sha256
        from edgepart.packager.strategies.channel.compiler import package_channel

        calibration, budget = job.option("calibration"), job.option("comm_budget")
        method, replicate = job.option("method", "prune"), job.option("replicate")
        holdout = job.option("holdout")
        part = job.option("partition")
        if (calibration is None) != (budget is None):
            raise PlanningError("--calibration and --comm-budget go together: give both to restructure the model, or neither.")
        if method not in METHODS:
            raise PlanningError(f"Unknown --method {method!r}; choose `prune` or `lowrank`.")
        if job.options.get("method") is not None and method != "prune" and calibration is None:
            raise PlanningError("--method applies with --calibration and --comm-budget only: it is how RePurpose "
                                "restructures the model.")
        if replicate is not None and calibration is not None and method != "lowrank":
            raise PlanningError("--replicate with --comm-budget needs --method lowrank (prune reassigns neurons and would "
                                "move the replicated copies between devices).")
        if holdout is not None and calibration is None:
            raise PlanningError("--holdout applies with --calibration only: it is the share of the calibration samples "
                                "kept for measuring.")
        if part is not None and calibration is not None:
            raise PlanningError("--partition and --calibration exclude each other: RePurpose chooses the partition.")
        holdout = DEFAULT_HOLDOUT if holdout is None else holdout
        if isinstance(part, (str, Path)):
            part = load_npz(Path(part))
        if isinstance(calibration, (str, Path)):
            calibration = load_npz(Path(calibration))
        shapes = dict(job.input_shapes)
        cl = job.cluster
        job.say("analysing and compiling the channel split")
        m = fold_constants(job.model)  # what is computed from constants alone never travels (model/fold.py)
        sparse = fit = held = replicated = None
        if calibration is None and replicate:
            from edgepart.packager.strategies.channel.restructure import replicate as replicate_first

            job.say("replicating the first layers on every device")
            r = replicate_first(m, len(cl.devices), replicate, partition=part, input_shapes=shapes or None)
            m, part, replicated = r.model, r.partition, r.report
        if calibration is not None:
            from edgepart.packager.strategies.channel.restructure import repurpose

            # held-out samples are split off whether or not a report is asked for, so the bundles never depend on it
            fit, held = split_holdout(calibration, holdout)
            # symbolic dimensions not given otherwise are planned at one calibration sample
            symbolic = {i.name for i in m.graph.input if any(not is_fixed(d) for d in i.type.tensor_type.shape.dim)}
            shapes = {**{k: (1,) + tuple(v.shape[1:]) for k, v in fit.items() if k in symbolic and v.ndim}, **shapes}
            job.say("restructuring the model (RePurpose)")
            sparse = repurpose(m, fit, len(cl.devices), budget, input_shapes=shapes or None, method=method,
                               replicate=replicate or 0.0)
            m, part = sparse.model, sparse.partition
            replicated = getattr(sparse.report, "replicated", None)
        graph = analyse(m, shapes)
        if sparse is None and replicated is None and m is not job.model:  # the bundles name the model as read
            graph = dataclasses.replace(graph, sha256=model_sha256(job.model))
        res = package_channel(m, graph, cl, out, part, model_name=job.model_name, wire_codec=job.wire_codec,
                              progress=job.progress)
        sparse_report = sparse.report if sparse is not None else None
        planned = ChannelPackaged(res.report, cl, replicated, sparse_report)
        pr = None
        if report:
            job.say("measuring fidelity for the report")
            pr = _report(job, out, res, graph, shapes, sparse, fit, held, holdout, budget, replicated)
        return Packaged(res.plan, Path(out), res.bundle_dirs, planned, pr, res)


def _report(job: Job, out: Path, res, graph, shapes: dict, sparse, fit, held, holdout: float, comm_budget,
            replicated) -> PackageReport:
    """The report of a channel split; with RePurpose, fidelity on the held-out calibration samples."""
    from edgepart.packager.check.report import fidelity_without_calibration, measure_fidelity

    if sparse is None:
        fid = fidelity_without_calibration(out, job.model, res.plan, shapes, job.feeds)
        items = {"method": "replicate (exact)", "summary": replicated.summary()} if replicated is not None else None
        return channel_report(res, graph, job.model_name, None, fid, items, replicated)
    n_fit, n_held = len(next(iter(fit.values()))), len(next(iter(held.values())))
    if n_held:
        fid = measure_fidelity(out, job.model, held, f"{n_held} held-out calibration samples (the last {holdout:.0%}; "
                               f"RePurpose used the other {n_fit})", compiled=sparse.model)
    else:
        fid = measure_fidelity(out, job.model, fit, f"the calibration samples RePurpose was fitted on ({n_fit}; "
                               f"--holdout 0: none held out)", compiled=sparse.model)
    items = {"method": "RePurpose", "comm_budget": comm_budget, "steps": "+".join(sparse.report.steps),
             "calibration_samples": n_fit, "held_out": n_held}
    if replicated is not None:
        items["replicated"] = replicated.summary()
    return channel_report(res, graph, job.model_name, sparse.report, fid, items, replicated)


def channel_report(res, graph, model_name: str, sparse=None, fidelity: Fidelity | None = None,
                   restructured: Mapping[str, object] | None = None, replicated=None) -> PackageReport:
    """The report of a channel split (`package_channel`'s result); `sparse` is RePurpose's SparseReport;
    `replicated` a ReplicateReport, whose original dense split is the baseline then."""
    rep, plan = res.report, res.plan
    errs = {x.node: x for x in sparse.layers} if sparse is not None else {}
    base = dict(replicated.layer_dense) if replicated is not None else {}
    layers = tuple(
        LayerRow(x.node, x.input, base.get(x.node, x.dense_bytes), x.sent_bytes,  # what crosses: partial sums where cheaper
                 errs[x.node].error if x.node in errs else None,
                 errs[x.node].error_pruned if x.node in errs else None)
        for x in rep.layers.layers)
    macs, params = dict(rep.macs), dict(rep.param_bytes)
    devs = plan.device_names()
    rows = tuple(DeviceRow(d, int(macs.get(d, 0)), int(params.get(d, 0)), len(plan.steps_of(d)),
                           round(sum(s.estimated_ms for s in plan.steps_of(d)), 6)) for d in devs)
    codec = {(r.tensor, r.src, r.dst): r.codec.kind for r in plan.routes}
    routes = tuple(RouteRow(r.tensor, r.src, r.dst, codec.get((r.tensor, r.src, r.dst), "dense"), r.size_bytes,
                            r.channels) for r in rep.routes)
    names = rep.devices or devs
    decisions = tuple((n, op, d.kind, names[d.device] if 0 <= d.device < len(names) else "", d.note)
                      for n, op, d in rep.decisions)
    return PackageReport(model_name, "channel", plan.plan_id, devs, rep.latency_ms, rep.cross_device_bytes,
                         rep.caller_bytes, layers, rows, routes, int(graph.total_macs), int(graph.total_param_bytes),
                         decisions, tuple(rep.notes), fidelity, tuple((restructured or {}).items()),
                         totals=(dense_baseline(rep, sparse, replicated), rep.layers.sent_bytes))


def dense_baseline(rep, sparse=None, replicated=None) -> int:
    """What the dense channel split of the ORIGINAL model sends in its split layers: a restructured
    model's own dense split counts its added layers (lowrank) or its copies (replicate)."""
    if sparse is not None and getattr(sparse, "dense_bytes", None):
        return int(sparse.dense_bytes)
    if replicated is not None and replicated.dense_bytes:
        return int(replicated.dense_bytes)
    return int(rep.layers.dense_bytes)

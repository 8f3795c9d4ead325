"""The `edgepart` command line. The one place that prints (through rich).

Packager commands import `edgepart.packager` lazily and say which extra to install when it is missing,
so the device install (`pip install edgepart`) keeps a working `edgepart run`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EdgepartError, MissingExtraError, PlanningError

app = typer.Typer(
    name="edgepart",
    help=(
        "Split one trained neural network across several edge devices and run it as one.\n\n"
        "On a workstation: `plan` shows what would go where, `package` writes one bundle per device, "
        "`inspect` shows a bundle, `verify` proves the split computes what the model computes."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ObjectiveOpt = typer.Option("latency", "--objective", help="What the planner minimises: `latency` (one request end to end) or `throughput` (slowest stage or link when pipelined).")
InputShapeOpt = typer.Option(None, "--input-shape", help="Concrete size of a symbolic input, NAME=1x3x224x224. Repeatable. Needed for every input with a symbolic (dynamic) dimension, unless --inputs gives example inputs.")
InputsOpt = typer.Option(None, "--inputs", help="An .npz mapping model input names to arrays; their shapes fix symbolic dimensions for planning.")
ClusterOpt = typer.Option(..., "--cluster", "-c", help="cluster.yaml: devices (name, gflops or speed, memory_mb, providers) and links (bandwidth_mbps, latency_ms). See docs/cluster.md.")


def _run(fn: Callable[[], Any]) -> Any:
    """Run a command body; an EdgepartError becomes one clear paragraph and exit code 2."""
    try:
        return fn()
    except MissingExtraError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(3)
    except EdgepartError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)


def _packager():
    try:
        import edgepart.packager as p  # noqa: F401
        from edgepart.packager import package  # noqa: F401
    except ImportError as e:
        raise MissingExtraError.for_extra("packager", "This command", e.name or "onnx") from None
    return p


def _shapes(input_shape: Optional[list[str]], inputs: Optional[Path]) -> tuple[dict, dict]:
    from .inputs import load_npz, shapes_of

    p = _packager()
    feeds = load_npz(inputs) if inputs else {}
    shapes = shapes_of(feeds)
    for s in input_shape or []:
        name, shape = p.graph.parse_shape(s)
        shapes[name] = shape
    return shapes, feeds


MIB = 1024 * 1024  # cluster.yaml's memory_mb is MiB: report memory in the same unit
DEFAULT_HOLDOUT = 0.2  # share of the calibration samples kept out of RePurpose, for the report's fidelity


def _plan_json(prep) -> dict:
    pp, g = prep.pipeline, prep.graph
    return {
        "objective": pp.objective,
        "latency_ms": pp.latency_ms,
        "period_ms": pp.period_ms,
        "throughput_per_s": pp.throughput_per_s,
        "planning_s": prep.planning_s,
        "model": {"nodes": g.n, "mflops": 2 * g.total_macs / 1e6, "param_mb": g.total_param_bytes / MIB},
        "stages": [
            {
                "stage": i, "device": s.device, "nodes": [s.start, s.stop],
                "first": g.nodes[s.start].name, "last": g.nodes[s.stop - 1].name,
                "mflops": s.flops / 1e6, "param_mb": s.param_bytes / MIB, "memory_mb": s.memory_bytes / MIB,
                "send_bytes": s.send_bytes, "compute_ms": s.compute_ms, "send_ms": s.send_ms, "link_busy_ms": s.link_busy_ms,
                "crossing": list(g.crossing(s.stop)) if s.stop < g.n else [],
            }
            for i, s in enumerate(pp.stages)
        ],
    }


def _print_plan(prep, title: str) -> None:
    pp, g = prep.pipeline, prep.graph
    t = Table(title=title, title_justify="left")
    for col, just in [("stage", "right"), ("device", "left"), ("layers", "left"), ("MFLOPs", "right"),
                      ("params MiB", "right"), ("sent to next", "right"), ("compute ms", "right"), ("send ms", "right")]:
        t.add_column(col, justify=just)
    for i, s in enumerate(pp.stages):
        layers = f"{s.start}–{s.stop - 1} ({s.stop - s.start}: {g.nodes[s.start].op_type}…{g.nodes[s.stop - 1].op_type})"
        sent = "—" if i == len(pp.stages) - 1 else f"{s.send_bytes / 1e3:,.1f} kB ({len(g.crossing(s.stop))} tensor{'s' if len(g.crossing(s.stop)) != 1 else ''})"
        t.add_row(str(i), s.device, layers, f"{s.flops / 1e6:,.1f}", f"{s.param_bytes / MIB:,.2f}", sent,
                  f"{s.compute_ms:.3f}", "—" if i == len(pp.stages) - 1 else f"{s.send_ms:.3f}")
    console.print(t)
    console.print(
        f"estimated latency [bold]{pp.latency_ms:.3f} ms[/] per request; pipelined throughput "
        f"[bold]{pp.throughput_per_s:.1f} req/s[/] (slowest stage or link {pp.period_ms:.3f} ms); "
        f"objective {pp.objective}; planned in {prep.planning_s * 1e3:.0f} ms."
    )


@app.command("plan")
def plan_cmd(
    model: Path = typer.Argument(..., help="The trained model, an .onnx file."),
    cluster: Path = ClusterOpt,
    objective: str = ObjectiveOpt,
    input_shape: Optional[list[str]] = InputShapeOpt,
    inputs: Optional[Path] = InputsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the plan's figures as one JSON object instead of a table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a picture of the plan (PNG): one request's timeline and the bytes crossing every cut (pipeline only)."),
    strategy: str = typer.Option("pipeline", "--strategy", help="`pipeline` (layer-wise stages) or `channel` (every layer split by output channels across the devices; docs/channel.md). Nothing is written; `package` with the same options writes the bundles."),
    replicate: Optional[float] = typer.Option(None, "--replicate", min=0.0, max=1.0, help="With --strategy channel: plan with the model's first layers computed whole on every device, up to this fraction of the model's compute extra per device, as `package --replicate` does; also lists every prefix that could be replicated and its cost."),
) -> None:
    """Show what would go where, and why: stages, devices, compute, bytes crossing, estimated times."""

    def body():
        p = _packager()
        shapes, _ = _shapes(input_shape, inputs)
        if strategy not in ("pipeline", "channel"):
            raise PlanningError(f"Unknown strategy {strategy!r}; choose `pipeline` or `channel`.")
        if replicate is not None and strategy != "channel":
            raise PlanningError("--replicate applies to --strategy channel only.")
        if strategy == "channel":
            if plot:
                raise PlanningError("--plot draws a pipeline's timeline; for a channel split, use `package --report report.html`.")
            from edgepart.packager.channel import compile_channel
            from edgepart.packager.cluster import load_cluster
            from edgepart.packager.graph import analyse, load_model

            cl, m = load_cluster(cluster), load_model(model)
            part = rep = None
            if replicate is not None:
                from edgepart.packager.sparse import replicate as replicate_first

                r = replicate_first(m, len(cl.devices), replicate, input_shapes=shapes or None)
                m, part, rep = r.model, r.partition, r.report
            prog = compile_channel(m, analyse(m, shapes), cl, part)
            if as_json:
                print(json.dumps({"strategy": "channel", "report": prog.report.to_dict(),
                                  "replicated": rep.to_dict() if rep is not None else None}, indent=1))
            else:
                _print_channel(prog.report, cl, f"channel split of {model.name} on {len(cl.devices)} devices",
                               rep.dense_bytes if rep is not None and rep.nodes else None)
                if rep is not None:
                    console.print(f"  {escape(rep.summary())}")
                    for end, frac in rep.options:
                        console.print(f"    prefix up to {escape(end)}: +{frac:.1%} of the model's MACs per device")
            return
        prep = p.package.prepare(model, cluster, objective, shapes)
        if plot:
            from edgepart.packager.figure import plot_pipeline

            plot_pipeline(prep.graph, prep.pipeline, plot)
        if as_json:
            print(json.dumps(_plan_json(prep), indent=1))
        else:
            _print_plan(prep, f"pipeline plan for {model.name} on {len(prep.cluster.devices)} devices")
            if plot:
                console.print(f"picture written to {plot}")

    _run(body)


@app.command("package")
def package_cmd(
    model: Path = typer.Argument(..., help="The trained model, an .onnx file."),
    cluster: Path = ClusterOpt,
    out: Path = typer.Option(Path("dist"), "--out", "-o", help="Folder to write one bundle per device into (dist/<device>/)."),
    objective: str = ObjectiveOpt,
    input_shape: Optional[list[str]] = InputShapeOpt,
    inputs: Optional[Path] = InputsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the plan's figures and bundle paths as JSON."),
    wire_codec: str = typer.Option("dense", "--wire-codec", help="How float activations travel between devices: `dense`; `auto` (lossless, chosen per route: bitmap on the routes that carry a ReLU's output, dense elsewhere); `bitmap` (lossless: post-ReLU zeros as bits, dense where that is not smaller); `fp16` or `int8` (lossy: 2x / 4x fewer bytes; check with `verify`)."),
    strategy: str = typer.Option("pipeline", "--strategy", help="How to split: `pipeline` (each device runs a run of layers) or `channel` (each device computes a share of every layer's output channels, receiving only the input channels its weights use; see docs/channel.md)."),
    partition: Optional[Path] = typer.Option(None, "--partition", help="With --strategy channel: an .npz mapping Conv/Gemm/MatMul output names to int arrays of device indices (cluster order, one per output channel). Layers it leaves out get equal contiguous blocks."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="With --strategy channel: an .npz of calibration inputs (each model input, a batch [N, ...]); with --comm-budget, RePurpose restructures the model on them (assign neurons to devices, prune cross-device weights, refit by least squares; docs/sparse.md)."),
    comm_budget: Optional[float] = typer.Option(None, "--comm-budget", min=0.0, max=1.0, help="With --calibration: the bytes allowed between devices, as a fraction of what the dense channel split sends (0.2 = 5x fewer)."),
    method: str = typer.Option("prune", "--method", help="With --comm-budget, how RePurpose cuts the cross-device bytes: `prune` zeroes cross-device weight blocks (assign neurons, prune, refit; any Conv/Gemm/MatMul); `lowrank` has the sender compute a rank-r projection of what each cross-device block needs (1x1 convs, Gemm, MatMul: transformers, MobileNet-style networks; often better fidelity per byte). docs/sparse.md."),
    replicate: Optional[float] = typer.Option(None, "--replicate", min=0.0, max=1.0, help="With --strategy channel: every device computes its own copy of the model's first layers (stem, first blocks), so those high-resolution activations never cross the link; the longest prefix that costs each device at most this fraction of the model's compute beyond its share (0.05 = 5 %). Exact. With --comm-budget it needs --method lowrank, and the budget stays a fraction of the original dense split. docs/sparse.md."),
    holdout: Optional[float] = typer.Option(None, "--holdout", min=0.0, max=0.9, help=f"With --calibration: the share of the calibration samples (the last ones, at least one) that RePurpose does not see; the report measures fidelity on them. Default {DEFAULT_HOLDOUT}. 0 restructures on all samples, and fidelity is then measured on those same samples. The bundles do not depend on --report, only on this."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a report as one self-contained HTML file: bytes crossing devices per split layer (or per cut) and in total, dense vs used; compute and parameter bytes per device; routes; plots; and fidelity: the bundles run chained in this process against the original model, on the held-out calibration samples (with --calibration), else on --inputs, else on one random input (seed 0). See docs/report.md."),
) -> None:
    """Plan the split and write one bundle per device: manifest.json and its sub-models."""

    def body():
        from rich.progress import Progress, SpinnerColumn, TextColumn

        p = _packager()
        shapes, feeds = _shapes(input_shape, inputs)
        if strategy not in ("pipeline", "channel"):
            raise PlanningError(f"Unknown strategy {strategy!r}; choose `pipeline` or `channel`.")
        if (calibration is None) != (comm_budget is None):
            raise PlanningError("--calibration and --comm-budget go together: give both to restructure the model, or neither.")
        if method not in ("prune", "lowrank"):
            raise PlanningError(f"Unknown --method {method!r}; choose `prune` or `lowrank`.")
        if method != "prune" and calibration is None:
            raise PlanningError("--method applies with --calibration and --comm-budget only: it is how RePurpose restructures the model.")
        if replicate is not None and strategy != "channel":
            raise PlanningError("--replicate applies to --strategy channel only.")
        if replicate is not None and calibration is not None and method != "lowrank":
            raise PlanningError("--replicate with --comm-budget needs --method lowrank (prune reassigns neurons and would "
                                "move the replicated copies between devices).")
        if holdout is not None and calibration is None:
            raise PlanningError("--holdout applies with --calibration only: it is the share of the calibration samples kept for measuring.")
        if report is not None:
            from edgepart.packager.report import check_writable

            check_writable(report)
        if strategy == "channel":
            return _package_channel(model, cluster, out, shapes, partition, wire_codec, as_json, calibration, comm_budget,
                                    feeds, DEFAULT_HOLDOUT if holdout is None else holdout, report, method, replicate)
        if partition is not None or calibration is not None:
            raise PlanningError("--partition, --calibration and --comm-budget apply to --strategy channel only.")
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True,
                      disable=as_json) as prog:
            task = prog.add_task("analysing and planning", total=None)
            prep = p.package.prepare(model, cluster, objective, shapes)
            res = p.package.package(prep.model, prep.graph, prep.cluster, prep.pipeline, out, model_name=model.stem,
                                    progress=lambda s: prog.update(task, description=s), wire_codec=wire_codec)
            rep = None
            if report is not None:
                from edgepart.packager.report import pipeline_report

                prog.update(task, description="measuring fidelity for the report")
                fid = _fidelity_without_calibration(out, model, res.plan, shapes, feeds)
                rep = pipeline_report(res, prep.graph, model.stem, fid)
                rep.write_html(report)
        if as_json:
            d = _plan_json(prep)
            d["plan_id"] = res.plan.plan_id
            d["bundles"] = {k: str(v) for k, v in res.bundle_dirs.items()}
            if rep is not None:
                d["report_html"] = str(report)
                d["summary"] = rep.summary()
            print(json.dumps(d, indent=1))
            return
        _print_plan(prep, f"packaged {model.name} for {len(prep.cluster.devices)} devices")
        console.print(f"plan id [bold]{res.plan.plan_id}[/]; bundles:")
        for d, path in res.bundle_dirs.items():
            console.print(f"  {path}   → copy to {d}, then `edgepart run {path}`")
        if rep is not None:
            _print_report(rep, report)

    _run(body)


def _fidelity_without_calibration(out: Path, model: Path, plan, shapes: dict, feeds: dict):
    """Fidelity on --inputs when given, else on one random input (seeded), run as given (not per sample)."""
    from edgepart.packager.report import measure_fidelity

    from .inputs import check_feeds, random_inputs

    if feeds:
        check_feeds(plan.inputs, feeds)
        return measure_fidelity(out, model, feeds, "the --inputs", batched=False)
    return measure_fidelity(out, model, random_inputs(plan.inputs, shapes, seed=0),
                            "one random input (standard normal, seed 0)", batched=False)


def _print_report(rep, path: Path) -> None:
    f = rep.fidelity
    if f is not None:
        top1 = f", top-1 agreement {f.top1_agreement:.1%}" if f.top1_agreement is not None else ""
        console.print(f"fidelity on {escape(f.inputs)}: max abs diff {f.max_abs_diff:.3g}, mean relative error "
                      f"{f.mean_rel_error:.3g}{top1}", soft_wrap=True)
    console.print(f"report written to [bold]{escape(str(path))}[/]", soft_wrap=True)  # one line: easy to copy


def _package_channel(model: Path, cluster: Path, out: Path, shapes: dict, partition: Optional[Path],
                     wire_codec: str, as_json: bool, calibration: Optional[Path] = None,
                     comm_budget: Optional[float] = None, feeds: Optional[dict] = None,
                     holdout: float = DEFAULT_HOLDOUT, report: Optional[Path] = None, method: str = "prune",
                     replicate: Optional[float] = None) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn

    import dataclasses

    from edgepart.packager.channel import package_channel
    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.fold import fold_constants
    from edgepart.packager.graph import analyse, load_model, model_sha256

    from .inputs import load_npz

    part = load_npz(partition) if partition is not None else None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True,
                  disable=as_json) as prog:
        task = prog.add_task("analysing and compiling the channel split", total=None)
        cl = load_cluster(cluster)
        read = load_model(model)
        m = fold_constants(read)  # what is computed from constants alone never travels (packager/fold.py)
        sparse = fit = held = replicated = None
        if calibration is None and replicate:
            from edgepart.packager.sparse import replicate as replicate_first

            prog.update(task, description="replicating the first layers on every device")
            r = replicate_first(m, len(cl.devices), replicate, partition=part, input_shapes=shapes or None)
            m, part, replicated = r.model, r.partition, r.report
        if calibration is not None:
            if part is not None:
                raise PlanningError("--partition and --calibration exclude each other: RePurpose chooses the partition.")
            from edgepart.packager.graph import is_fixed
            from edgepart.packager.report import split_holdout
            from edgepart.packager.sparse import repurpose

            # held-out samples are split off whether or not --report is given, so the bundles never depend on it
            fit, held = split_holdout(load_npz(calibration), holdout)
            # symbolic dimensions not given otherwise are planned at one calibration sample
            symbolic = {i.name for i in m.graph.input
                        if any(not is_fixed(d) for d in i.type.tensor_type.shape.dim)}
            shapes = {**{k: (1,) + tuple(v.shape[1:]) for k, v in fit.items() if k in symbolic and v.ndim}, **shapes}
            prog.update(task, description="restructuring the model (RePurpose)")
            sparse = repurpose(m, fit, len(cl.devices), comm_budget, input_shapes=shapes or None, method=method,
                               replicate=replicate or 0.0)
            m, part = sparse.model, sparse.partition
            replicated = getattr(sparse.report, "replicated", None)
        graph = analyse(m, shapes)
        if sparse is None and replicated is None and m is not read:  # the bundles name the model as read
            graph = dataclasses.replace(graph, sha256=model_sha256(read))
        res = package_channel(m, graph, cl, out, part, model_name=model.stem, wire_codec=wire_codec,
                              progress=lambda s: prog.update(task, description=s))
        pr = None
        if report is not None:
            prog.update(task, description="measuring fidelity for the report")
            pr = _channel_report(model, out, res, graph, shapes, feeds or {}, sparse, fit, held, holdout, comm_budget,
                                 replicated)
            pr.write_html(report)
    rep = res.report
    if as_json:
        d = {"strategy": "channel", "plan_id": res.plan.plan_id, "estimates": dict(res.plan.estimates),
             "bundles": {k: str(v) for k, v in res.bundle_dirs.items()}, "report": rep.to_dict(),
             "sparse": sparse.report.to_dict() if sparse else None,
             "replicated": replicated.to_dict() if replicated is not None else None}
        if pr is not None:
            d["report_html"] = str(report)
            d["summary"] = pr.summary()
        print(json.dumps(d, indent=1))
        return
    from edgepart.packager.report import dense_baseline

    restructured = sparse is not None or (replicated is not None and replicated.nodes)
    _print_channel(rep, cl, f"packaged {model.name} as a channel split for {len(cl.devices)} devices",
                   dense_baseline(rep, sparse.report if sparse else None, replicated) if restructured else None)
    if replicated is not None:
        console.print(f"  {escape(replicated.summary())}")
    if sparse is not None:
        console.print(f"  RePurpose: split layers {sparse.report.dense_bytes:,} -> {sparse.report.used_bytes:,} bytes "
                      f"({sparse.report.ratio:.2f}x fewer); per layer:\n{escape(sparse.report.table())}")
    for note in rep.notes:
        console.print(f"  note: {escape(note)}")
    console.print(f"plan id [bold]{res.plan.plan_id}[/]; bundles:")
    for d, path in res.bundle_dirs.items():
        console.print(f"  {path}   ({len(res.plan.steps_of(d))} steps) → copy to {d}, then `edgepart run {path}`")
    if pr is not None:
        _print_report(pr, report)


def _print_channel(rep, cl, title: str, dense: int | None = None) -> None:
    """A channel split's figures: bytes between devices, latency, per device, decisions that gather.
    `dense`: the original model's dense split, when the model was restructured."""
    partial = sum(1 for _, _, d in rep.decisions if d.partial)
    console.print(f"{title}: {rep.cross_device_bytes:,} bytes between devices per inference (split layers: "
                  f"dense {dense if dense is not None else rep.layers.dense_bytes:,}"
                  f"{' (the original model)' if dense is not None else ''}, used {rep.layers.used_bytes:,}, sent {rep.layers.sent_bytes:,}"
                  f"{f' with partial sums in {partial} layers' if partial else ''}); estimated latency "
                  f"[bold]{rep.latency_ms:.3f} ms[/]", soft_wrap=True)
    macs, params = dict(rep.macs), dict(rep.param_bytes)
    for dev in cl.devices:
        console.print(f"  {dev.name}: {macs.get(dev.name, 0) / 1e6:,.1f} M MACs, {params.get(dev.name, 0) / MIB:,.2f} MiB of weights")
    for name, op, d in rep.decisions:
        if d.kind in ("whole", "reduce"):
            console.print(f"  {escape(name)} ({op}): {d.kind} on {cl.devices[d.device].name} — {escape(d.note)}")


def _channel_report(model: Path, out: Path, res, graph, shapes: dict, feeds: dict, sparse, fit: Optional[dict],
                    held: Optional[dict], holdout: float, comm_budget: Optional[float], replicated=None):
    """The report of a channel split; with RePurpose, fidelity on the held-out calibration samples."""
    from edgepart.packager.report import channel_report, measure_fidelity

    if sparse is None:
        fid = _fidelity_without_calibration(out, model, res.plan, shapes, feeds)
        items = {"method": "replicate (exact)", "summary": replicated.summary()} if replicated is not None else None
        return channel_report(res, graph, model.stem, None, fid, items, replicated)
    n_fit, n_held = len(next(iter(fit.values()))), len(next(iter(held.values())))
    if n_held:
        fid = measure_fidelity(out, model, held, f"{n_held} held-out calibration samples (the last {holdout:.0%}; "
                               f"RePurpose used the other {n_fit})", compiled=sparse.model)
    else:
        fid = measure_fidelity(out, model, fit, f"the calibration samples RePurpose was fitted on ({n_fit}; "
                               f"--holdout 0: none held out)", compiled=sparse.model)
    items = {"method": "RePurpose", "comm_budget": comm_budget, "steps": "+".join(sparse.report.steps),
             "calibration_samples": n_fit, "held_out": n_held}
    if replicated is not None:
        items["replicated"] = replicated.summary()
    return channel_report(res, graph, model.stem, sparse.report, fid, items, replicated)


@app.command("inspect")
def inspect_cmd(
    bundle: Path = typer.Argument(..., help="One device's bundle folder (dist/<device>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's summary as JSON."),
) -> None:
    """Show what one bundle holds: its device, plan id, steps with their inputs and outputs, and routes."""

    def body():
        from .bundle import load_bundle
        from .plan import CALLER

        b = load_bundle(bundle)
        plan = b.plan
        if as_json:
            print(json.dumps({
                "device": b.device, "plan_id": b.plan_id, "strategy": plan.strategy, "model": plan.model_name,
                "steps": [{"name": s.name, "file": s.model_file, "nodes": s.nodes,
                           "inputs": [i.name for i in s.inputs], "outputs": [o.name for o in s.outputs]} for s in b.steps],
                "receives": [[r.tensor, r.src] for r in plan.routes_to(b.device)],
                "sends": [[r.tensor, r.dst] for r in plan.routes_from(b.device)],
            }, indent=1))
            return
        console.print(f"[bold]{b.device}[/] — bundle of plan [bold]{b.plan_id}[/] ({plan.strategy}, model {plan.model_name}, "
                      f"{len(plan.devices)} devices: {', '.join(plan.device_names())}); files verified.")
        t = Table(title="steps", title_justify="left")
        for c in ("step", "file", "nodes", "inputs", "outputs", "est. ms"):
            t.add_column(c)
        for s in b.steps:
            size = b.file(s.model_file).stat().st_size
            t.add_row(s.name, f"{s.model_file} ({size / 1e6:.2f} MB)", str(s.nodes),
                      "\n".join(f"{i.name} {i.dtype}{list(i.shape)}" for i in s.inputs),
                      "\n".join(f"{o.name} {o.dtype}{list(o.shape)}" for o in s.outputs), f"{s.estimated_ms:.3f}")
        console.print(t)
        r = Table(title="routes", title_justify="left")
        for c in ("tensor", "from", "to", "codec"):
            r.add_column(c)
        for x in plan.routes:
            if b.device in (x.src, x.dst):
                r.add_row(x.tensor, "caller" if x.src == CALLER else x.src, "caller" if x.dst == CALLER else x.dst, x.codec.kind)
        console.print(r)

    _run(body)


@app.command("verify")
def verify_cmd(
    dist: Path = typer.Argument(..., help="The folder holding every device's bundle (the -o of `package`)."),
    model: Path = typer.Option(..., "--model", "-m", help="The original .onnx model to compare with."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="An .npz of model inputs; random inputs (seeded) when omitted."),
    atol: float = typer.Option(1e-5, "--atol", help="Largest allowed absolute difference per output element."),
    seed: int = typer.Option(0, "--seed", help="Seed for random inputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with max_abs_diff per output."),
) -> None:
    """Run all stages chained in this process and compare with the original model; exit 1 if any output differs by more than --atol."""

    def body():
        from .bundle import load_dist
        from .inputs import check_feeds, load_npz, random_inputs

        p = _packager()
        from edgepart.packager.verify import verify

        plan = next(iter(load_dist(dist).values())).plan
        if inputs:
            feeds = load_npz(inputs)
            check_feeds(plan.inputs, feeds)
        else:
            feeds = random_inputs(plan.inputs, seed=seed)
        _ = p
        v = verify(dist, model, feeds, atol)
        if as_json:
            print(json.dumps(v.to_dict(), indent=1))
        else:
            t = Table(title=f"verify plan {v.plan_id} against {model.name} (atol {atol:g})", title_justify="left")
            t.add_column("output")
            t.add_column("max abs diff", justify="right")
            t.add_column("")
            for k, d in v.max_abs_diff.items():
                t.add_row(k, f"{d:.3g}", "[green]ok[/]" if d <= atol else "[red]DIFFERS[/]")
            console.print(t)
            if not v.model_matches_plan:
                console.print("[yellow]note:[/] this model file is not byte-identical to the one that was packaged.")
            console.print("[green]the split is exact within atol[/]" if v.ok else "[red]the split differs from the model[/]")
        if not v.ok:
            raise typer.Exit(1)

    _run(body)


from . import cli_cluster, cli_demo  # noqa: E402,F401  (they register their commands on `app`)


def main() -> None:
    logging.getLogger("edgepart").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("edgepart").setLevel(logging.WARNING)
    app()


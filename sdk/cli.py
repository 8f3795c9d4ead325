"""The `edgepart` command line. The one place that prints (through rich).

Packager commands import `edgepart.packager` lazily and say which extra to install when it is missing,
so the device install (`pip install edgepart`) keeps a working `edgepart run`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from ._cli import app, console, err_console
from ._cli import packager as _packager
from ._cli import run as _run
from .errors import PlanningError

ObjectiveOpt = typer.Option("latency", "--objective", help="What the planner minimises: `latency` (one request end to end) or `throughput` (slowest stage or link when pipelined).")
InputShapeOpt = typer.Option(None, "--input-shape", help="Concrete size of a symbolic input, NAME=1x3x224x224. Repeatable. Needed for every input with a symbolic (dynamic) dimension, unless --inputs gives example inputs.")
InputsOpt = typer.Option(None, "--inputs", help="An .npz mapping model input names to arrays; their shapes fix symbolic dimensions for planning.")
ClusterOpt = typer.Option(..., "--cluster", "-c", help="cluster.yaml: devices (name, gflops or speed, memory_mb, providers; `standby: true` for a spare, docs/failover.md) and links (bandwidth_mbps, latency_ms). See docs/cluster.md.")


def _shapes(input_shape: Optional[list[str]], inputs: Optional[Path]) -> tuple[dict, dict]:
    from .inputs import load_npz, shapes_of

    _packager()
    from edgepart.packager.model.graph import parse_shape

    feeds = load_npz(inputs) if inputs else {}
    shapes = shapes_of(feeds)
    for s in input_shape or []:
        name, shape = parse_shape(s)
        shapes[name] = shape
    return shapes, feeds


DEFAULT_HOLDOUT = 0.2  # share of the calibration samples kept out of RePurpose (the channel strategy's default)
STRATEGIES = "{strategies}"  # filled from the packager's registry when help is shown (_StrategyHelp)


def _strategy_help() -> str:
    """Every registered strategy with its one-line summary; read from the registry only when help is shown."""
    try:
        from edgepart.packager.strategies import get, names
    except ImportError:
        return "(install edgepart[packager] to list them)"
    return "; ".join(f"`{n}`: {get(n).summary}" for n in names())


class _StrategyHelp(TyperCommand):
    """A command whose --strategy help lists the registry's strategies, read when the help is shown."""

    def format_help(self, ctx, formatter):
        for prm in self.params:
            template = getattr(prm, "help_template", None) or prm.help
            if template and STRATEGIES in template:
                prm.help_template = template  # kept: the registry may have grown by the next --help
                prm.help = template.replace(STRATEGIES, _strategy_help())
        return super().format_help(ctx, formatter)


TileUntilOpt = typer.Option(None, "--tile-until", help="With --strategy spatial: the node (or tensor) that ends the fused prefix split by image rows; its output is gathered. Default: the cost model's choice. docs/spatial.md.")
LeaveOutOpt = typer.Option(None, "--leave-out", help="With --strategy pipeline: a device that only makes the objective worse gets no stage and no bundle (the plan names it, with the objective with it and without). Always on under --strategy auto. docs/planning.md.")
RestOpt = typer.Option(None, "--rest", help="With --strategy spatial: what runs the model after the strips: `gather` (the default: the fastest device joins them and runs the rest) or `pipeline` (the rest split into a pipeline over every device).")


def _options(**kw) -> dict:
    """The strategy options the user gave (None: not given)."""
    return {k: v for k, v in kw.items() if v is not None}


def _check_sources_options(sources: Optional[Path], simulate: Optional[float], strategy: str) -> None:
    """--sources and --simulate make sense together and with the pipeline strategy only: say so before any work."""
    if simulate is not None and sources is None:
        raise PlanningError("--simulate runs the allocation of several sources; give the sources too, "
                            "--sources sources.yaml (docs/priority.md).")
    if simulate is not None and not (simulate > 0 and simulate < float("inf")):
        raise PlanningError(f"--simulate takes a number of simulated seconds above 0, e.g. --simulate 30; got {simulate:g}.")
    if sources is not None and strategy != "pipeline":
        raise PlanningError(f"--sources does not apply to --strategy {strategy}: it places each source's first layers on "
                            f"its own device and the rest on one helper, which is a pipeline cut. Leave out --strategy "
                            f"(pipeline is the default) to plan with sources.")


def _check_plot_path(path: Path) -> None:
    """Fail before any work when --plot cannot become a file."""
    if path.is_dir():
        raise PlanningError(f"--plot {path} is a folder. Give a file name, e.g. --plot {path / 'plan.png'}.")
    if not path.parent.is_dir():
        raise PlanningError(f"Cannot write the picture to {path}: the folder {path.parent} does not exist. "
                            f"Create it or give --plot a path in an existing folder.")


def _write_plot(planned, path: Path) -> None:
    try:
        planned.plot(path)
    except OSError as e:
        raise PlanningError(f"Cannot write the picture to {path}: {e.strerror or e}. Give --plot a path you can "
                            f"write to.") from None


@app.command("plan", cls=_StrategyHelp)
def plan_cmd(
    model: Path = typer.Argument(..., help="The trained model, an .onnx file."),
    cluster: Path = ClusterOpt,
    objective: str = ObjectiveOpt,
    input_shape: Optional[list[str]] = InputShapeOpt,
    inputs: Optional[Path] = InputsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the plan's figures as one JSON object instead of a table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a picture of the plan (PNG): one request's timeline and the bytes crossing every cut (pipeline only)."),
    strategy: str = typer.Option("pipeline", "--strategy", help=f"How to split: {STRATEGIES}. Nothing is written; `package` with the same options writes the bundles."),
    replicate: Optional[float] = typer.Option(None, "--replicate", min=0.0, max=1.0, help="With --strategy channel: plan with the model's first layers computed whole on every device, up to this fraction of the model's compute extra per device, as `package --replicate` does; also lists every prefix that could be replicated and its cost."),
    tile_until: Optional[str] = TileUntilOpt,
    rest: Optional[str] = RestOpt,
    leave_out: Optional[bool] = LeaveOutOpt,
    sources: Optional[Path] = typer.Option(None, "--sources", help="sources.yaml: the cameras (or other sources) sharing the cluster, each with its device, priority, rate and optional deadline. Also shows, per source, where its layers run and its expected latency under the priority-aware allocation, the priority-blind baseline and local-only (a table, a \"sources\" key in --json; with --plot, the picture is these latencies as grouped bars). Pipeline only. docs/priority.md."),
    simulate: Optional[float] = typer.Option(None, "--simulate", help="With --sources: also run each allocation in the discrete-event simulator for this many simulated seconds (seed 0) and show per source the mean, p50, p95, p99 latency, throughput and deadline misses beside the expected figures."),
) -> None:
    """Show what would go where, and why: stages, devices, compute, bytes crossing, estimated times.
    Standby devices (cluster.yaml `standby: true`) are left out; the fallback plans `package` would
    compile for them are listed (docs/failover.md)."""

    def body():
        p = _packager()
        _check_sources_options(sources, simulate, strategy)
        if plot:
            _check_plot_path(plot)
        shapes, _ = _shapes(input_shape, inputs)
        cl = cluster
        srcs = None
        if sources is not None:  # the sources file is checked against the cluster before anything is planned
            from edgepart.packager.cluster import load_cluster
            from edgepart.packager.sources import load_sources

            cl = load_cluster(cluster)
            srcs = load_sources(sources, cl)
        planned = p.plan(model, cl, strategy=strategy, objective=objective, input_shapes=shapes,
                         **_options(replicate=replicate, tile_until=tile_until, rest=rest, leave_out=leave_out))
        if plot and not hasattr(planned, "plot"):
            raise PlanningError(f"--plot draws a pipeline's timeline; for a {strategy} split, use `package --report report.html`.")
        by_source = None
        if srcs is not None:
            from edgepart.packager.priority_plan import plan_sources

            by_source = plan_sources(planned.graph, planned.cluster, srcs, simulate_s=simulate)
        if plot:
            _write_plot(by_source if by_source is not None else planned, plot)
        fallbacks = _fallback_clusters(cl)
        if as_json:
            d = planned.to_dict()
            if by_source is not None:
                d["sources"] = by_source.to_dict()
            if fallbacks:
                d["fallback_plans"] = [{"without": f.without, "devices": list(f.devices)} for f in fallbacks]
            print(json.dumps(d, indent=1))
            return
        n = len(planned.cluster.devices)
        planned.show(console, f"{strategy} plan for {model.name} on {n} devices")
        if fallbacks:
            console.print(f"standby: {', '.join(d for d in fallbacks[0].devices if d not in planned_names(planned))}; "
                          f"`package` also compiles {len(fallbacks)} fallback plans (docs/failover.md):", soft_wrap=True)
            for f in fallbacks:
                console.print(f"  for when {f.without} fails: over {', '.join(f.devices)}", soft_wrap=True)
        if by_source is not None:
            by_source.show(console)
        if plot:
            console.print(f"picture written to {plot}")

    _run(body)


def _fallback_clusters(cluster):
    """The fallback plans `package` compiles for this cluster's standby devices (docs/failover.md)."""
    from edgepart.packager import standby
    from edgepart.packager.cluster import Cluster, load_cluster

    return standby.fallback_clusters(cluster if isinstance(cluster, Cluster) else load_cluster(cluster))


def planned_names(planned) -> set[str]:
    return {d.name for d in planned.cluster.devices}


@app.command("package", cls=_StrategyHelp)
def package_cmd(
    model: Path = typer.Argument(..., help="The trained model, an .onnx file."),
    cluster: Path = ClusterOpt,
    out: Path = typer.Option(Path("dist"), "--out", "-o", help="Folder to write one bundle per device into (dist/<device>/)."),
    objective: str = ObjectiveOpt,
    input_shape: Optional[list[str]] = InputShapeOpt,
    inputs: Optional[Path] = InputsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the plan's figures and bundle paths as JSON."),
    wire_codec: str = typer.Option("dense", "--wire-codec", help="How float activations travel between devices: `dense`; `auto` (lossless, chosen per route: bitmap on the routes that carry a ReLU's output, dense elsewhere); `bitmap` (lossless: post-ReLU zeros as bits, dense where that is not smaller); `fp16` or `int8` (lossy: 2x / 4x fewer bytes; check with `verify`)."),
    strategy: str = typer.Option("pipeline", "--strategy", help=f"How to split: {STRATEGIES}."),
    partition: Optional[Path] = typer.Option(None, "--partition", help="With --strategy channel: an .npz mapping Conv/Gemm/MatMul output names to int arrays of device indices (cluster order, one per output channel). Layers it leaves out get equal contiguous blocks."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="With --strategy channel: an .npz of calibration inputs (each model input, a batch [N, ...]); with --comm-budget, RePurpose restructures the model on them (assign neurons to devices, prune cross-device weights, refit by least squares; docs/sparse.md)."),
    comm_budget: Optional[float] = typer.Option(None, "--comm-budget", min=0.0, max=1.0, help="With --calibration: the bytes allowed between devices, as a fraction of what the dense channel split sends (0.2 = 5x fewer)."),
    method: Optional[str] = typer.Option(None, "--method", help="With --comm-budget, how RePurpose cuts the cross-device bytes: `prune` (the default) zeroes cross-device weight blocks (assign neurons, prune, refit; any Conv/Gemm/MatMul); `lowrank` has the sender compute a rank-r projection of what each cross-device block needs (1x1 convs, Gemm, MatMul: transformers, MobileNet-style networks; often better fidelity per byte). docs/sparse.md."),
    replicate: Optional[float] = typer.Option(None, "--replicate", min=0.0, max=1.0, help="With --strategy channel: every device computes its own copy of the model's first layers (stem, first blocks), so those high-resolution activations never cross the link; the longest prefix that costs each device at most this fraction of the model's compute beyond its share (0.05 = 5 %). Exact. With --comm-budget it needs --method lowrank, and the budget stays a fraction of the original dense split. docs/sparse.md."),
    holdout: Optional[float] = typer.Option(None, "--holdout", min=0.0, max=0.9, help=f"With --calibration: the share of the calibration samples (the last ones, at least one) that RePurpose does not see; the report measures fidelity on them. Default {DEFAULT_HOLDOUT}. 0 restructures on all samples, and fidelity is then measured on those same samples. The bundles do not depend on --report, only on this."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a report as one self-contained HTML file: bytes crossing devices per split layer (or per cut) and in total, dense vs used; compute and parameter bytes per device; routes; plots; and fidelity: the bundles run chained in this process against the original model, on the held-out calibration samples (with --calibration), else on --inputs, else on one random input (seed 0). See docs/report.md."),
    tile_until: Optional[str] = TileUntilOpt,
    rest: Optional[str] = RestOpt,
    leave_out: Optional[bool] = LeaveOutOpt,
    fmt: str = typer.Option("onnx", "--format", help="The steps' file format: onnx (every device runs onnxruntime); tflite (every step converted to TFLite, run with LiteRT; a step that does not convert stops packaging); auto (the devices whose cluster.yaml says `runtime: tflite`, or whose profile found LiteRT faster, get TFLite steps, and a step that does not convert stays ONNX, with the operator that stopped it said). Every converted step is checked against its ONNX original. The first conversion creates the converter's own environment under ~/.cache/edgepart (a one-time download of TensorFlow). docs/tflite.md."),
    tflite_precision: str = typer.Option("float32", "--tflite-precision", help="With --format tflite or auto: float32 (the model's answers to rounding), float16 (half the file), or int8 (a quarter; calibrated on --inputs, which then should hold a batch of real samples)."),
    insecure: bool = typer.Option(False, "--insecure", help="Write no link keys: the devices' links are plaintext and unauthenticated, and every `edgepart run` and session must say --insecure too. Only for a network you trust completely. docs/agents.md, \"Encryption\"."),
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", help="Sign the manifests with this Ed25519 key file (made if missing) instead of this workstation's own (~/.config/edgepart/signing.key). Devices trust the first signer they see; `edgepart keys trust` adds one. docs/bundle-format.md, \"Signature\"."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="sources.yaml: the cameras (or other sources) sharing the cluster, each with its device, priority, rate and optional deadline. Compiles one plan for all of them: each source's first layers on its own device, the rest on helpers its agent picks among at run time (docs/priority.md, \"Plans with sources\"). Pipeline only. Each source's app then names its source (InferenceSession(dist, source=NAME), `infer --source`)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="With --sources: `priority` (the default: placed and queued by priority), `blind` (the priority-blind baseline: placed without priorities, FIFO queues) or `local` (every source's whole model on its own device)."),
) -> None:
    """Plan the split and write one bundle per device: manifest.json, its sub-models and the device's
    link key (dist/<device>/device.key), plus the app's key (dist/app.key); manifests are signed.
    Devices marked `standby: true` in cluster.yaml are spares: the plan leaves them out, and a
    fallback plan is compiled for each other device's failure (dist/<device>/fallback/; docs/failover.md)."""

    def body():
        from rich.progress import Progress, SpinnerColumn, TextColumn

        p = _packager()
        _check_sources_options(sources, None, strategy)
        if schedule is not None and sources is None:
            raise PlanningError("--schedule places several sources; give them too, --sources sources.yaml (docs/priority.md).")
        shapes, feeds = _shapes(input_shape, inputs)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True,
                      disable=as_json) as prog:
            task = prog.add_task("analysing and planning", total=None)
            res = p.package(model, cluster, out=out, strategy=strategy, objective=objective, input_shapes=shapes,
                            inputs=feeds, wire_codec=wire_codec, report=report,
                            progress=lambda s: prog.update(task, description=s), format=fmt,
                            tflite_precision=tflite_precision, insecure=insecure, signing_key=signing_key,
                            **_options(sources=sources, schedule=schedule),
                            **_options(partition=partition, calibration=calibration, comm_budget=comm_budget,
                                       method=method, replicate=replicate, holdout=holdout,
                                       tile_until=tile_until, rest=rest, leave_out=leave_out))
        if as_json:
            d = res.to_dict()
            if report is not None:
                d["report_html"] = str(report)
            print(json.dumps(d, indent=1))
            return
        res.planned.show(console, f"packaged {model.name} as a {strategy} split for {len(res.plan.devices)} devices")
        console.print(f"plan id [bold]{res.plan.plan_id}[/]; bundles:")
        for d, path in res.bundle_dirs.items():
            n = len(res.plan.steps_of(d))
            rt = "+".join(sorted({s.runtime for s in res.plan.steps_of(d)})) or "-"
            console.print(f"  {path}   ({n} step{'s' if n != 1 else ''}, {rt}) → copy to {d}, then `edgepart run {path}`")
        if res.fallbacks:
            _print_fallbacks(res, out)
        if insecure:
            err_console.print("[bold red]--insecure[/]: these bundles hold no link keys; their links are plaintext "
                              "and any process on the network can talk to the agents.")
        else:
            console.print(f"  {out / 'app.key'}   the app's key (0600): keep it with whoever calls the cluster")
        for c in res.conversions:
            if c.runtime == "onnx":
                console.print(f"  [yellow]{c.step} on {c.device} stays ONNX[/]: it does not convert to TFLite ({escape(c.reason)})",
                              soft_wrap=True)
        if res.report is not None:
            _print_report(res.report, report)
        if res.plan.lanes:
            names = ", ".join(res.plan.lanes.names)
            console.print(f"  each source's app names its source: InferenceSession(dist, source=NAME), or "
                          f"`edgepart infer --source NAME` ({names})", soft_wrap=True)

    _run(body)


def _print_fallbacks(res, out: Path) -> None:
    """Which fallback plans were made, and the standby devices' folders (docs/failover.md)."""
    console.print(f"fallback plans ({len(res.fallbacks)}), each served warm beside the primary plan; a session "
                  f"switches to one when its device stops answering (docs/failover.md):", soft_wrap=True)
    for f in res.fallbacks:
        est = dict(f.plan.estimates)
        lat = f", est. {est['latency_ms']:.3f} ms per request" if "latency_ms" in est else ""
        console.print(f"  for when {f.without} fails: plan [bold]{f.plan.plan_id}[/] over "
                      f"{', '.join(f.plan.device_names())}{lat}; bundles in <device>/fallback/{f.without}/",
                      soft_wrap=True)
    spares = sorted({d for f in res.fallbacks for d in f.plan.device_names()} - set(res.plan.device_names()))
    for d in spares:
        console.print(f"  {out / d}   (standby: fallbacks only) → copy to {d}, then `edgepart run {out / d}`",
                      soft_wrap=True)


def _print_report(rep, path: Path) -> None:
    f = rep.fidelity
    if f is not None:
        top1 = f", top-1 agreement {f.top1_agreement:.1%}" if f.top1_agreement is not None else ""
        console.print(f"fidelity on {escape(f.inputs)}: max abs diff {f.max_abs_diff:.3g}, mean relative error "
                      f"{f.mean_rel_error:.3g}{top1}", soft_wrap=True)
    console.print(f"report written to [bold]{escape(str(path))}[/]", soft_wrap=True)  # one line: easy to copy


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
        from edgepart.packager.check.verify import verify

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


from . import cli_cluster, cli_demo, cli_keys, cli_profile  # noqa: E402,F401  (they register their commands on `app`)


def main() -> None:
    logging.getLogger("edgepart").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("edgepart").setLevel(logging.WARNING)
    app()


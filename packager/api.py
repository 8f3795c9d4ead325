"""The packager's one entry point: `package` and `plan`, keyword-only (docs/architecture.md).

The CLI, the demo, the benchmarks and users all call these:

    import edgepart.packager as p
    res = p.package("model.onnx", "cluster.yaml", out="dist", strategy="pipeline")
    res.plan.plan_id, res.bundle_dirs, res.planned.to_dict()
    p.plan("model.onnx", "cluster.yaml", strategy="channel", replicate=0.05).show(console, "title")

Each strategy's own options (`edgepart.packager.strategies.get(name).options`) are keyword
arguments too; an option the chosen strategy does not take is a PlanningError that names the
strategies that do.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx

from edgepart.packager import seal, standby
from edgepart.packager.cluster import Cluster, load_cluster
from edgepart.packager.strategies import base

log = logging.getLogger("edgepart")


def _job(model, cluster, strategy: str, objective: str, input_shapes, inputs, wire_codec: str, options: dict,
         progress, model_name: str | None, primary_only: bool = True) -> tuple[base.Strategy, base.Job]:
    from edgepart.inputs import shapes_of

    from edgepart.packager.model.graph import load_model

    s = base.get(strategy)
    base.check_options(s, options)
    if isinstance(model, onnx.ModelProto):
        m, name = model, model_name or (model.graph.name or "model")
    else:
        m, name = load_model(model), model_name or Path(model).stem
    cl = cluster if isinstance(cluster, Cluster) else load_cluster(cluster)
    # standby devices are in no primary plan: it is planned over the others, exactly as a cluster
    # without spares (packager/standby.py); `package` keeps the whole cluster for the fallback plans
    cl = standby.primary_cluster(cl) if primary_only else cl
    feeds = dict(inputs or {})
    shapes = {**shapes_of(feeds), **{k: tuple(v) for k, v in (input_shapes or {}).items()}}
    return s, base.Job(m, name, cl, shapes, objective, wire_codec, {k: v for k, v in options.items() if v is not None},
                       feeds, progress)


def plan(model: str | Path | onnx.ModelProto, cluster: str | Path | Cluster, *, strategy: str = "pipeline",
         objective: str = "latency", input_shapes: Mapping[str, tuple[int, ...]] | None = None,
         inputs: Mapping[str, Any] | None = None, wire_codec: str = "dense", model_name: str | None = None,
         progress: Callable[[str], None] | None = None, **options: Any) -> base.Planned:
    """What would go where, and why, with nothing written: the strategy's figures (`to_dict()`,
    `show(console, title)`). Of the primary plan: standby devices are left out (docs/failover.md)."""
    s, job = _job(model, cluster, strategy, objective, input_shapes, inputs, wire_codec, options, progress,
                  model_name)
    return s.plan(job)


def package(model: str | Path | onnx.ModelProto, cluster: str | Path | Cluster, *, out: str | Path = "dist",
            strategy: str = "pipeline", objective: str = "latency",
            input_shapes: Mapping[str, tuple[int, ...]] | None = None, inputs: Mapping[str, Any] | None = None,
            wire_codec: str = "dense", report: str | Path | None = None, model_name: str | None = None,
            progress: Callable[[str], None] | None = None, format: str = "onnx", tflite_precision: str = "float32",
            insecure: bool = False, signing_key: str | Path | None = None, sources: Any = None,
            schedule: str = "priority", **options: Any) -> base.Packaged:
    """Plan the split and write one bundle per device under `out` (dist/<device>/). With `report`,
    also measure the split's fidelity and write the report there as one HTML file (docs/report.md).

    `format`: onnx, tflite (every device's steps converted to TFLite) or auto (the devices whose
    cluster.yaml says `runtime: tflite`, or whose profile found LiteRT faster); `tflite_precision`: float32, float16 or int8 (docs/tflite.md).

    `inputs`: example inputs (a mapping of model input names to arrays); their shapes fix symbolic
    dimensions, and the report measures fidelity on them. `input_shapes` fixes them by name.

    Every bundle gets its device's link key and every manifest is signed (docs/bundle-format.md,
    "Keys"): `insecure` writes no link keys (plaintext links); `signing_key` is a key file to sign
    with instead of this workstation's own.

    Where the cluster marks devices `standby: true`, the primary plan is planned over the others and
    a fallback plan is compiled for each primary device's failure (`Packaged.fallbacks`; their bundles
    in dist/<device>/fallback/<failed device>/; docs/failover.md).

    `sources` (a sources.yaml path or `edgepart.sources.Sources`): several sources share the cluster;
    each source's layers are placed by the allocator under `schedule` (`priority`, the priority-blind
    baseline `blind`, or `local`) and the one plan carries them all, with the queue rule its agents
    apply (docs/priority.md, "Plans with sources"). Pipeline only."""
    if report is not None:
        from edgepart.packager.check.report import check_writable

        check_writable(report)
    s, job = _job(model, cluster, strategy, objective, input_shapes, inputs, wire_codec, options, progress,
                  model_name, primary_only=False)
    full, job = job.cluster, dataclasses.replace(job, cluster=standby.primary_cluster(job.cluster))
    srcs = _sources(sources, strategy, full, options) if sources is not None else None
    from edgepart.packager.formats import check_format, convert_bundles, require_litert, wants_tflite

    check_format(format, tflite_precision)  # a wrong flag fails before anything is planned
    if signing_key is not None:  # ... and so does an unreadable signing key
        from edgepart.signing import load_or_create_signing_key

        load_or_create_signing_key(Path(signing_key))
    if wants_tflite(full, format):
        require_litert()  # and so does a packager that could not check a converted step

    def convert(res: base.Packaged, cl: Cluster) -> base.Packaged:
        if format == "onnx":
            return res
        new_plan, conv = convert_bundles(res.plan, res.bundle_dirs, cl, fmt=format,
                                         precision=tflite_precision, feeds=job.feeds, progress=progress)
        return dataclasses.replace(res, plan=new_plan, conversions=conv)

    sealing = seal.Sealing(insecure, Path(signing_key) if signing_key is not None else None)
    # the fallback plans first, into a scratch folder: one that cannot be planned stops packaging
    # before dist/ is touched
    fallbacks = standby.package_fallbacks(s, job, full, Path(out), convert) if standby.spares(full) else None
    try:
        if srcs is not None:
            from edgepart.packager.lanes import package_lanes

            res = convert(package_lanes(job, srcs, schedule, Path(out)), job.cluster)
        else:
            res = convert(s.package(job, Path(out), report=report is not None), job.cluster)
    except BaseException:
        if fallbacks is not None:
            fallbacks.discard()
        raise
    if fallbacks is not None:  # with the primary packaging's keys (before --insecure drops them)
        res = dataclasses.replace(res, fallbacks=tuple(standby.install(fallbacks, Path(out), sealing)))
        for warning in standby.over_memory(full, standby.held_bytes(res.bundle_dirs, res.fallbacks)):
            log.warning(warning)
    seal.apply(Path(out), res.bundle_dirs, res.plan, sealing)
    if report is not None and res.report is not None:
        from edgepart.packager.check.report_html import write_html

        write_html(res.report, report)
    return res


def _sources(sources: Any, strategy: str, cluster: Cluster, options: dict):
    """The sources to package with, checked against the cluster and the other options."""
    from edgepart.errors import PlanningError
    from edgepart.sources import Sources

    from edgepart.packager.sources import load_sources

    if strategy != "pipeline" or any(v for v in options.values()):
        raise PlanningError(f"--sources applies to the pipeline strategy without options (each source's first layers "
                            f"on its own device, the rest on a helper), not to --strategy {strategy}"
                            f"{' with ' + ', '.join(k for k, v in options.items() if v) if options else ''}.")
    if standby.spares(cluster):
        raise PlanningError("--sources with standby devices is not supported yet: mark no device `standby: true`, "
                            "or package without --sources (docs/priority.md).")
    if isinstance(sources, Sources):
        missing = [x.device for x in sources if x.device not in {d.name for d in cluster.devices}]
        if missing:
            raise PlanningError(f"A source sits on {missing[0]!r}, which is not a device of the cluster.")
        return sources
    return load_sources(sources, cluster)


__all__ = ["package", "plan"]

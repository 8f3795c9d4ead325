"""Model + cluster -> bundles: analyse, plan, emit each stage, compile the program, write folders.

This is the one place with I/O in the packager's main path; analysis and planning stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from edgepart.errors import PlanningError
from edgepart.plan import CALLER, Codec, Plan, Route, Step

from edgepart.packager.model import submodel as emit
from edgepart.packager.bundles import StepModel, model_plan, write_bundles
from edgepart.packager.cluster import Cluster
from edgepart.packager.model.graph import Graph
from edgepart.packager.wire_codecs import WIRE_CODECS, float_route_codec
from edgepart.packager.strategies.pipeline.planner import PipelinePlan


@dataclass(frozen=True)
class Packaged:
    plan: Plan
    pipeline: PipelinePlan
    out_dir: Path
    bundle_dirs: dict[str, Path]


def compile_pipeline(graph: Graph, cluster: Cluster, pp: PipelinePlan, steps: list[Step], model_name: str,
                     wire_codec: str = "dense", model: onnx.ModelProto | None = None) -> Plan:
    """The program of a pipeline: steps as emitted, and one route per (tensor, consumer device).

    `wire_codec` applies to float activations sent between devices: `bitmap` is lossless (it sends
    post-ReLU zeros as bits, and dense where that is not smaller), `auto` picks bitmap for the routes
    that carry a ReLU's output and dense for the rest (needs `model`), `fp16` and `int8` are lossy."""
    if wire_codec not in WIRE_CODECS:
        raise PlanningError(f"Unknown wire codec {wire_codec!r}; choose one of: {', '.join(WIRE_CODECS)}.")
    producer_dev: dict[str, str] = {i.name: CALLER for i in graph.inputs}
    for st in steps:
        for o in st.outputs:
            producer_dev[o.name] = st.device
    routes: list[Route] = []
    for st in steps:
        for i in st.inputs:
            src = producer_dev[i.name]
            float_activation = src != CALLER and i.dtype in ("float32", "float64", "float16")
            codec = float_route_codec(wire_codec, model, graph, i.name) if float_activation else Codec()
            routes.append(Route(i.name, src, st.device, codec))
    for o in graph.outputs:
        routes.append(Route(o.name, producer_dev[o.name], CALLER, Codec()))
    if pp.left_out:  # a left-out device has no step: it is not in the plan and gets no bundle (docs/planning.md)
        import dataclasses

        used = set(pp.devices)
        cluster = dataclasses.replace(cluster, devices=tuple(d for d in cluster.devices if d.name in used))
    return model_plan("pipeline", graph, cluster, steps, routes, model_name, pp.objective,
                      (("latency_ms", round(pp.latency_ms, 6)), ("period_ms", round(pp.period_ms, 6))))


def package(
    model: onnx.ModelProto,
    graph: Graph,
    cluster: Cluster,
    pp: PipelinePlan,
    out_dir: Path,
    model_name: str = "model",
    external_data_min_bytes: int = emit.EXTERNAL_DATA_MIN_BYTES,
    progress: Callable[[str], None] | None = None,
    wire_codec: str = "dense",
) -> Packaged:
    """Emit every stage of `pp` and write one bundle folder per device under `out_dir`."""
    if wire_codec not in WIRE_CODECS:
        raise PlanningError(f"Unknown wire codec {wire_codec!r}; choose one of: {', '.join(WIRE_CODECS)}.")
    step_models = []
    for i, st in enumerate(pp.stages):
        name = f"stage{i}"
        if progress:
            progress(f"emitting {name} for {st.device}")
        sub, ins, outs = emit.extract(model, graph, st.start, st.stop, name)
        step_models.append(StepModel(name, st.device, f"{name}.onnx", sub, ins, outs, st.stop - st.start,
                                     round(st.compute_ms, 6)))
    plan, dirs = write_bundles(step_models, lambda steps: compile_pipeline(graph, cluster, pp, steps, model_name, wire_codec, model),
                               Path(out_dir), external_data_min_bytes, progress)
    return Packaged(plan, pp, Path(out_dir), dirs)


@dataclass(frozen=True)
class Prepared:
    model: onnx.ModelProto
    graph: Graph
    cluster: Cluster
    pipeline: PipelinePlan
    planning_s: float


def prepare(model_path: Path | str, cluster_path: Path | str, objective: str = "latency",
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> Prepared:
    """Read the model and cluster, analyse, and plan (what `plan` and `package` share).

    What is computed from constants alone is folded into initializers first, so it never crosses a
    cut (packager/model/fold.py); the plan still names the model as read (its sha256), which `verify`
    checks the bundles against."""
    import dataclasses
    import time

    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.model.fold import fold_constants
    from edgepart.packager.model.graph import analyse, load_model, model_sha256
    from edgepart.packager.strategies.pipeline.planner import plan_pipeline

    cluster = load_cluster(cluster_path)
    read = load_model(model_path)
    model = fold_constants(read)
    graph = analyse(model, input_shapes)
    if model is not read:
        graph = dataclasses.replace(graph, sha256=model_sha256(read))
    t0 = time.perf_counter()
    pp = plan_pipeline(graph, cluster, objective)
    return Prepared(model, graph, cluster, pp, time.perf_counter() - t0)

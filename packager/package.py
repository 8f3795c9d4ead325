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

from . import emit
from .bundles import StepModel, model_plan, write_bundles
from .cluster import Cluster
from .graph import Graph
from .pipeline import PipelinePlan


@dataclass(frozen=True)
class Packaged:
    plan: Plan
    pipeline: PipelinePlan
    out_dir: Path
    bundle_dirs: dict[str, Path]


WIRE_CODECS = ("dense", "auto", "bitmap", "fp16", "int8")


def float_route_codec(wire_codec: str, model: onnx.ModelProto | None, graph: Graph, tensor: str) -> Codec:
    """The codec of a float activation sent between devices. `auto` (lossless) is chosen per route:
    bitmap where the tensor comes straight out of a ReLU (Relu, or Clip at 0, as ReLU6), whose zeros
    it sends as bits, and dense elsewhere, where a bitmap would only add one."""
    if wire_codec == "dense":
        return Codec()
    if wire_codec == "auto":
        return Codec("bitmap") if model is not None and post_relu(model, graph, tensor) else Codec()
    return Codec(wire_codec)


def post_relu(model: onnx.ModelProto, graph: Graph, tensor: str) -> bool:
    """Whether `tensor` is the output of a Relu, or of a Clip whose min is 0."""
    i = graph.producer.get(tensor, -1)
    if i < 0:
        return False
    nd = graph.nodes[i]
    if nd.op_type == "Relu":
        return True
    if nd.op_type != "Clip":
        return False
    proto = next((p for p in model.graph.node if tensor in p.output), None)
    if proto is None:
        return False
    lo = next((a.f for a in proto.attribute if a.name == "min"), None)  # opset < 11
    if len(proto.input) > 1 and proto.input[1]:
        lo = _constant(model, proto.input[1])
    return lo is not None and float(lo) == 0.0


def _constant(model: onnx.ModelProto, name: str) -> float | None:
    """A scalar initializer's or Constant node's value; None for anything else."""
    from onnx import numpy_helper

    from edgepart.errors import ModelError

    from .channel_ops import _constant_value

    a = next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name), None)
    if a is None:
        nd = next((nd for nd in model.graph.node if nd.op_type == "Constant" and name in nd.output), None)
        try:
            a = _constant_value(nd) if nd is not None else None
        except ModelError:  # a kind of value the compiler cannot read
            return None
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


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
    cut (packager/fold.py); the plan still names the model as read (its sha256), which `verify`
    checks the bundles against."""
    import dataclasses
    import time

    from .cluster import load_cluster
    from .fold import fold_constants
    from .graph import analyse, load_model, model_sha256
    from .pipeline import plan_pipeline

    cluster = load_cluster(cluster_path)
    read = load_model(model_path)
    model = fold_constants(read)
    graph = analyse(model, input_shapes)
    if model is not read:
        graph = dataclasses.replace(graph, sha256=model_sha256(read))
    t0 = time.perf_counter()
    pp = plan_pipeline(graph, cluster, objective)
    return Prepared(model, graph, cluster, pp, time.perf_counter() - t0)

"""Compile a spatial plan into steps and routes (docs/spatial.md, "What each device runs").

    tiles    on the gathering device: the image in, one Slice per strip (its rows plus halo) out
    strip<k> on strip k's device: the fused prefix on its rows, each Conv, pool and Pad with the
             padding its strip needs, inputs cropped where a tensor holds more rows than a node reads
    gather   on the gathering device: Concat of the strips on H, then the rest of the model

Sub-models are assembled with model/submodel.assemble (the model's opset, IR version and functions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepart.plan import CALLER, Codec, Route, TensorSpec

from edgepart.packager.bundles import StepModel
from edgepart.packager.model import submodel
from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.spatial.halo import rewrite
from edgepart.packager.strategies.spatial.planner import SpatialPlan, constants, fixed_shapes


def strip_name(tensor: str, k: int) -> str:
    return f"{tensor}__strip{k}"


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _slice(x: str, y: str, lo: int, hi: int, tag: str, opset: int) -> tuple[onnx.NodeProto, list]:
    """y = x[:, :, lo:hi] (rows of an NCHW tensor)."""
    if opset < 10:
        return helper.make_node("Slice", [x], [y], name=f"slice{tag}", axes=[2], starts=[lo], ends=[hi]), []
    names = [f"{tag}/{w}" for w in ("starts", "ends", "axes")]
    inits = [numpy_helper.from_array(np.array([v], dtype=np.int64), n) for v, n in zip((lo, hi, 2), names)]
    return helper.make_node("Slice", [x] + names, [y], name=f"slice{tag}"), inits


def _rows_spec(spec: TensorSpec, name: str, rows: int) -> TensorSpec:
    shape = list(spec.shape)
    shape[2] = rows
    return TensorSpec(name, spec.dtype, tuple(shape))


def _constants_of(model: onnx.ModelProto, names: set[str]):
    inits = [i for i in model.graph.initializer if i.name in names]
    nodes = [nd for nd in model.graph.node if nd.op_type == "Constant" and set(nd.output) & names]
    return inits, nodes


def strip_model(model: onnx.ModelProto, graph: Graph, sp: SpatialPlan, k: int, shapes=None, consts=None):
    """Strip k's sub-model: its image rows in, its rows of the fused output out."""
    shapes = shapes if shapes is not None else fixed_shapes(model, graph)
    consts = consts if consts is not None else constants(model)
    protos = submodel.placed_protos(model, graph)
    opset = _opset(model)
    pre, s = sp.prefix, sp.strips[k]
    held = dict(s.held)
    in_spec = _rows_spec(graph.specs[pre.image], strip_name(pre.image, k), s.input_rows[1] - s.input_rows[0])
    cur = {pre.image: (in_spec.name, s.input_rows)}
    nodes, inits, crops = [], [], {}
    for nr, rule in zip(s.nodes, pre.rules):
        nd = graph.nodes[nr.node]
        proto = protos[nd.name]
        ins = list(proto.input)
        for j in rule.spatial_inputs:
            src = ins[j]
            name, (lo, hi) = cur[src]
            if (lo, hi) != nr.needs:
                key = (src, nr.needs)
                if key not in crops:
                    crops[key] = f"{src}__s{k}_rows{nr.needs[0]}_{nr.needs[1]}"
                    n, i = _slice(name, crops[key], nr.needs[0] - lo, nr.needs[1] - lo, f"/spatial/s{k}/crop{len(crops)}", opset)
                    nodes.append(n)
                    inits += i
                name = crops[key]
            ins[j] = name
        out = proto.output[0]
        target = strip_name(out, k) if out == pre.until else out
        if rule.kind == "resize":
            made = rule.made_from(nr.needs)
            full = f"{out}__s{k}_made"
            new, extra = rewrite(proto, rule, 0, 0, ins, full, f"/spatial/s{k}", consts, shapes)
            n, i = _slice(full, target, nr.makes[0] - made[0], nr.makes[1] - made[0], f"/spatial/s{k}/resized/{out}", opset)
            nodes += [new, n]
            inits += extra + i
        else:
            new, extra = rewrite(proto, rule, nr.pad_top, nr.pad_bottom, ins, target, f"/spatial/s{k}", consts, shapes)
            nodes.append(new)
            inits += extra
        assert held[out] == nr.makes
        cur[out] = (target, nr.makes)
    names = {c for i in pre.nodes for c in graph.nodes[i].constants}
    c_inits, c_nodes = _constants_of(model, names)
    out_spec = _rows_spec(graph.specs[pre.until], strip_name(pre.until, k), s.rows[1] - s.rows[0])
    used = {i for n in c_nodes + nodes for i in n.input}  # a rewritten Pad's old pads are not
    c_inits = [i for i in c_inits if i.name in used]
    m = submodel.assemble(model, c_nodes + nodes, (in_spec,), (out_spec,), c_inits + inits,
                          f"{graph.name}_strip{k}", f"The spatial strip {k} ({s.device})")
    return m, (in_spec,), (out_spec,)


def tiles_model(model: onnx.ModelProto, graph: Graph, sp: SpatialPlan):
    """The image in, every strip's rows (halo included) out."""
    pre, opset = sp.prefix, _opset(model)
    spec = graph.specs[pre.image]
    nodes, inits, outs = [], [], []
    for k, s in enumerate(sp.strips):
        o = _rows_spec(spec, strip_name(pre.image, k), s.input_rows[1] - s.input_rows[0])
        n, i = _slice(pre.image, o.name, s.input_rows[0], s.input_rows[1], f"/spatial/tiles/{k}", opset)
        nodes.append(n)
        inits += i
        outs.append(o)
    m = submodel.assemble(model, nodes, (spec,), tuple(outs), inits, f"{graph.name}_tiles", "The spatial tiles step")
    return m, (spec,), tuple(outs)


def gather_model(model: onnx.ModelProto, graph: Graph, sp: SpatialPlan):
    """The strips in, joined on H into the fused output, then the rest of the model."""
    pre = sp.prefix
    protos = submodel.placed_protos(model, graph)
    rest = [graph.nodes[i] for i in pre.rest]
    made = {o for nd in rest for o in nd.outputs}
    extra = list(dict.fromkeys(i for nd in rest for i in nd.inputs if i not in made and i != pre.until))
    t_spec = graph.specs[pre.until]
    strips = tuple(_rows_spec(t_spec, strip_name(pre.until, k), s.rows[1] - s.rows[0]) for k, s in enumerate(sp.strips))
    join = helper.make_node("Concat", [s.name for s in strips], [pre.until], name="/spatial/gather", axis=2)
    names = {c for nd in rest for c in nd.constants}
    c_inits, c_nodes = _constants_of(model, names)
    ins = strips + tuple(graph.specs[e] for e in extra)
    m = submodel.assemble(model, c_nodes + [join] + [protos[nd.name] for nd in rest], ins, graph.outputs, c_inits,
                          f"{graph.name}_gather", "The spatial gather step")
    return m, ins, graph.outputs


def step_models(model: onnx.ModelProto, graph: Graph, sp: SpatialPlan,
                progress: Callable[[str], None] | None = None, rest=None) -> list[StepModel]:
    """tiles, strip<k>, and gather (or, with `rest` a rest.RestPipeline, one step per stage of it)."""
    shapes, consts = fixed_shapes(model, graph), constants(model)
    m, i, o = tiles_model(model, graph, sp)
    out = [StepModel("tiles", sp.gather, "tiles.onnx", m, i, o, len(sp.strips), 0.0)]
    for k, s in enumerate(sp.strips):
        if progress:
            progress(f"emitting strip{k} for {s.device}")
        m, i, o = strip_model(model, graph, sp, k, shapes, consts)
        out.append(StepModel(f"strip{k}", s.device, f"strip{k}.onnx", m, i, o, len(s.nodes), s.compute_ms))
    if rest is not None:
        for j, st in enumerate(rest.pipeline.stages):
            m, i, o = submodel.extract(rest.model, rest.graph, st.start, st.stop, f"rest{j}")
            out.append(StepModel(f"rest{j}", st.device, f"rest{j}.onnx", m, i, o, st.stop - st.start,
                                 round(st.compute_ms, 6)))
        return out
    m, i, o = gather_model(model, graph, sp)
    out.append(StepModel("gather", sp.gather, "gather.onnx", m, i, o, len(sp.prefix.rest) + 1, sp.rest_ms))
    return out


def routes(steps: list[StepModel], graph: Graph) -> list[Route]:
    """One route per tensor and consuming device: the caller's inputs, the strips out and back, the
    model's outputs to the caller. A tensor made and read on one device needs none."""
    made = {o.name: st.device for st in steps for o in st.outputs}
    made.update({i.name: CALLER for i in graph.inputs})
    out: dict[tuple[str, str, str], Route] = {}
    for st in steps:
        for i in st.inputs:
            if made[i.name] != st.device:
                out.setdefault((i.name, made[i.name], st.device), Route(i.name, made[i.name], st.device, Codec()))
    for o in graph.outputs:
        out.setdefault((o.name, made[o.name], CALLER), Route(o.name, made[o.name], CALLER, Codec()))
    return list(out.values())


def write(model, graph, cluster, sp: SpatialPlan, out: Path, model_name: str, objective: str,
          progress: Callable[[str], None] | None = None, rest=None):
    from edgepart.packager.bundles import model_plan, write_bundles

    sms = step_models(model, graph, sp, progress, rest)
    rts = routes(sms, graph)
    est = (("latency_ms", rest.latency_ms if rest is not None else sp.latency_ms),)
    return write_bundles(sms, lambda steps: model_plan("spatial", graph, cluster, steps, rts, model_name, objective, est),
                         Path(out), progress=progress), rts

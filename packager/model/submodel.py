"""Cut a standalone ONNX sub-model out of a model: a run of its nodes with their constants.

The sub-model's inputs are the activations it reads but does not make; its outputs are those it
makes that later nodes or the caller read. Initializers and Constant nodes it uses are copied in
(an initializer used on both sides of a cut lives in both sub-models). The original opset, IR
version and model-local functions are kept, and so are symbolic dimensions, so a sub-model runs at
any batch or sequence size the original did. Large weights go to an external-data file.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgepart.codecs import DTYPES
from edgepart.errors import ModelError
from edgepart.plan import TensorSpec

from edgepart.packager.model.graph import Graph

EXTERNAL_DATA_MIN_BYTES = 256 * 1024 * 1024  # beyond this, weights go to `<file>.data`


def extract(model: onnx.ModelProto, graph: Graph, start: int, stop: int, name: str) -> tuple[onnx.ModelProto, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The sub-model of nodes[start:stop], with the specs of its inputs and outputs."""
    g = model.graph
    inputs, outputs = graph.stage_io(start, stop)
    by_name = placed_protos(model, graph)
    nodes = [by_name[nd.name] for nd in graph.nodes[start:stop]]
    consts = {c for nd in graph.nodes[start:stop] for c in nd.constants}
    const_nodes = [nd for nd in g.node if nd.op_type == "Constant" and set(nd.output) & consts]
    inits = [i for i in g.initializer if i.name in consts]
    in_specs = tuple(_spec(graph, t) for t in inputs)
    out_specs = tuple(_spec(graph, t) for t in outputs)
    out = assemble(model, const_nodes + nodes, in_specs, out_specs, inits, f"{graph.name}_{name}",
                   f"The sub-model {name} (nodes {start}..{stop - 1})")
    return out, in_specs, out_specs


def assemble(like: onnx.ModelProto, nodes, in_specs, out_specs, inits, graph_name: str, what: str) -> onnx.ModelProto:
    """A standalone model of `nodes` (copied) with these inputs, outputs and initializers, keeping
    `like`'s opset, IR version and model-local functions; checked, or ModelError naming `what`.
    Every strategy builds its steps' sub-models here."""
    sub = helper.make_graph(
        nodes=[copy.deepcopy(nd) for nd in nodes],
        name=graph_name,
        inputs=[_value_info(s) for s in in_specs],
        outputs=[_value_info(s) for s in out_specs],
        initializer=[copy.deepcopy(i) for i in inits],
    )
    out = helper.make_model(
        sub,
        opset_imports=list(like.opset_import),
        ir_version=like.ir_version,
        producer_name="edgepart",
        functions=list(like.functions),
    )
    try:
        onnx.checker.check_model(out, full_check=False)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{what} is not valid ONNX: {str(e).splitlines()[0]}") from None
    return out


def save(model: onnx.ModelProto, path: Path, external_data_min_bytes: int = EXTERNAL_DATA_MIN_BYTES) -> list[Path]:
    """Write `model` to `path`; weights past the threshold go to `path.data`. Returns the files written."""
    weights = sum(len(i.raw_data) or 0 for i in model.graph.initializer)
    if weights >= external_data_min_bytes:
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data] if data.exists() else [path]  # every tensor under size_threshold: none written
    onnx.save_model(model, str(path))
    return [path]


def placed_protos(model: onnx.ModelProto, graph: Graph) -> dict[str, onnx.NodeProto]:
    """Map each placed node's analysis name back to its NodeProto (unnamed nodes get op_index names)."""
    protos = [nd for nd in model.graph.node if nd.op_type != "Constant"]
    by_out = {o: nd for nd in protos for o in nd.output if o}
    out: dict[str, onnx.NodeProto] = {}
    for nd in graph.nodes:
        proto = by_out.get(nd.outputs[0]) if nd.outputs else None
        if proto is None:
            proto = next(p for p in protos if p.name == nd.name)
        out[nd.name] = proto
    return out


def _spec(graph: Graph, t: str) -> TensorSpec:
    why = unsendable(graph, t)
    if why:
        p = graph.producer.get(t, -1)
        by = f", made by node {graph.nodes[p].name!r} ({graph.nodes[p].op_type})," if p >= 0 else ""
        if t in {o.name for o in graph.outputs}:
            raise ModelError(f"Model output {t!r}{by} cannot be sent to the caller: {why}. Export the model "
                             f"with tensor outputs only (skl2onnx: options={{'zipmap': False}}).")
        raise ModelError(f"Tensor {t!r}{by} cannot be a stage boundary: {why}. Cut the model elsewhere.")
    return graph.specs[t]


def unsendable(graph: Graph, t: str) -> str | None:
    """Why activation `t` cannot travel between devices (None when it can): the wire carries tensors
    of a fixed set of element types (docs/planning.md, "What crosses a cut")."""
    s = graph.specs.get(t)
    if s is None or s.dtype in ("sequence", "map"):
        return f"it is {'a ' + s.dtype if s is not None else 'not a tensor'}, not a tensor"
    if s.dtype == "unknown":
        return "neither shape inference nor a test run could tell its element type and rank"
    if s.dtype not in DTYPES:
        return f"its element type {s.dtype} is not one the wire carries ({', '.join(sorted(DTYPES))})"
    return None


def _value_info(s: TensorSpec) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype))
    # "?" is a dimension of unknown size (a tensor of unknown rank never gets here: `unsendable`)
    dims = [d if isinstance(d, int) and d > 0 else (None if isinstance(d, int) or d == "?" else d) for d in s.shape]
    return helper.make_tensor_value_info(s.name, elem, dims)

"""Graph analysis of an ONNX model: order, compute, parameters, activations, and what crosses each cut.

`analyse(model, input_shapes)` returns a `Graph`: the model's compute nodes in topological order,
per node MACs and parameter bytes, per tensor activation bytes at the planning shapes, and for every
cut position the tensors that would cross it. Initializers and `Constant` nodes are not placed: they
are copied into every stage that uses them, so they never cross a cut.

Shapes come from onnx's own shape inference (with data propagation) on a copy of the model whose
symbolic input dimensions are fixed; where inference cannot tell a tensor's size, one onnxruntime
run on zeros measures it. Symbolic shapes of the original model are kept for emitting stages, so
emitted sub-models still run at other batch and sequence sizes. A `dim_value` of 0 or less (how
PaddlePaddle and other converters write a dynamic axis) is a symbolic dimension, as onnxruntime
reads it (docs/planning.md, "Graph analysis", Shapes).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepart.errors import InputShapeError, ModelError
from edgepart.profile import COMPUTE_KINDS, FUSABLE, op_kind
from edgepart.plan import TensorSpec

log = logging.getLogger("edgepart")

_NO_PLACE = {"Constant"}  # copied into each stage that uses them, never a stage boundary


@dataclass(frozen=True)
class Node:
    """One compute node, at its position in topological order."""

    index: int
    name: str
    op_type: str
    inputs: tuple[str, ...]  # activations it reads (no initializers, no constants), incl. subgraph captures
    outputs: tuple[str, ...]
    constants: tuple[str, ...]  # initializers and Constant outputs it reads
    macs: int
    param_bytes: int  # bytes of the initializers it reads
    kind: str = "other"  # its operator kind, as device profiles time them (edgepart.profile.op_kind)


@dataclass(frozen=True, eq=False)
class Graph:
    """A model analysed for planning, at fixed planning shapes."""

    name: str
    sha256: str
    nodes: tuple[Node, ...]
    inputs: tuple[TensorSpec, ...]  # symbolic shapes kept
    outputs: tuple[TensorSpec, ...]
    specs: dict[str, TensorSpec]  # every activation, symbolic shapes kept (for emitted models)
    tensor_bytes: dict[str, int]  # every activation at the planning shapes
    constant_bytes: dict[str, int]  # initializers and Constant outputs
    producer: dict[str, int]  # activation -> index of the node that makes it (graph inputs: -1)
    last_use: dict[str, int]  # activation -> last node index that reads it
    live_bytes: np.ndarray = field(repr=False)  # [n+1]: bytes crossing cut i (between node i-1 and i)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(nd.macs for nd in self.nodes)

    @property
    def total_param_bytes(self) -> int:
        return sum(self.constant_bytes.values())

    def crossing(self, cut: int) -> tuple[str, ...]:
        """Activations produced before `cut` (or model inputs) and read at or after it."""
        return tuple(
            t for t, p in self.producer.items() if p < cut <= self.last_use.get(t, -2)
        )

    def stage_io(self, start: int, stop: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(inputs, outputs) of the stage holding nodes[start:stop], in a stable order."""
        produced: set[str] = set()
        inputs: list[str] = []
        for nd in self.nodes[start:stop]:
            for t in nd.inputs:
                if t not in produced and t not in inputs:
                    inputs.append(t)
            produced.update(nd.outputs)
        model_outputs = {o.name for o in self.outputs}
        outputs = [
            t
            for nd in self.nodes[start:stop]
            for t in nd.outputs
            if t in model_outputs or self.last_use.get(t, -1) >= stop
        ]
        return tuple(inputs), tuple(dict.fromkeys(outputs))


# -- loading ---------------------------------------------------------------------------------------

def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (with its external data), or say clearly why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist. Give the path of an .onnx file.")
    with open(path, "rb") as f:
        head = f.read(64)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, ValueError, OSError... for a bad file
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)}). "
            f"Export it with torch.onnx.export or tf2onnx, or check that the file was copied whole."
        ) from None
    if not model.graph.node or not model.opset_import:
        kind = "empty" if not head else "not an ONNX model (no graph nodes or opset)"
        raise ModelError(
            f"{path} is {kind}. edgepart reads ONNX models; export yours with torch.onnx.export "
            f"or tf2onnx first."
        )
    return model


def model_sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME=1x3x224x224` -> ("NAME", (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
        if any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise InputShapeError(
            f"--input-shape {text!r} is not of the form NAME=1x3x224x224 (positive sizes joined by 'x')."
        ) from None
    return name, shape


# -- analysis --------------------------------------------------------------------------------------

def analyse(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """Analyse `model` at the given input shapes (needed for every symbolic input dimension)."""
    input_shapes = dict(input_shapes or {})
    sha256 = model_sha256(model)
    if any(_non_positive_dims(model.graph)):
        model = symbolic_dims(model)
    g = model.graph
    init_names = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in init_names]
    _check_input_shapes(real_inputs, input_shapes)

    symbolic = _infer(model)
    fixed_model = copy.deepcopy(model)
    for vi in fixed_model.graph.input:
        if vi.name in input_shapes:
            _set_shape(vi, input_shapes[vi.name])
    fixed = _infer(fixed_model)

    constant_bytes = {i.name: _tensor_proto_bytes(i) for i in g.initializer}
    for nd in g.node:
        if nd.op_type in _NO_PLACE:
            for o in nd.output:
                constant_bytes[o] = _constant_node_bytes(nd)

    order = topological_order(g, set(constant_bytes))
    specs: dict[str, TensorSpec] = {}
    for vi in list(g.input) + list(g.output) + list(symbolic.graph.value_info) + list(symbolic.graph.output):
        spec = _spec(vi)
        if spec is not None and (vi.name not in specs or specs[vi.name].dtype == "unknown"):
            specs[vi.name] = spec
    fixed_specs = {}
    for vi in list(fixed.graph.input) + list(fixed.graph.value_info) + list(fixed.graph.output):
        s = _spec(vi)
        if s is not None:
            fixed_specs[vi.name] = s

    nodes: list[Node] = []
    producer: dict[str, int] = {i.name: -1 for i in real_inputs}
    last_use: dict[str, int] = {}
    for idx, nd in enumerate(order):
        reads = [t for t in list(nd.input) + captured_inputs(nd) if t]
        acts = tuple(dict.fromkeys(t for t in reads if t not in constant_bytes))
        consts = tuple(dict.fromkeys(t for t in reads if t in constant_bytes))
        for t in acts:
            if t not in producer:
                raise ModelError(
                    f"Node {nd.name or nd.op_type!r} reads {t!r}, which no node, input or initializer "
                    f"of the model defines. The model is malformed; run onnx.checker.check_model on it."
                )
            last_use[t] = idx
        outs = tuple(o for o in nd.output if o)
        for o in outs:
            producer[o] = idx
        nodes.append(
            Node(idx, nd.name or f"{nd.op_type}_{idx}", nd.op_type, acts, outs, consts, 0,
                 sum(constant_bytes[c] for c in consts))
        )

    tensor_bytes, measured_shapes, measured_dtypes = _activation_bytes(model, producer, fixed_specs, input_shapes)
    shape_of = {t: fixed_specs[t].shape for t in fixed_specs if _concrete(fixed_specs[t].shape)}
    shape_of.update(measured_shapes)
    const_shapes = {i.name: tuple(i.dims) for i in g.initializer}
    nodes = [
        Node(n.index, n.name, n.op_type, n.inputs, n.outputs, n.constants,
             _macs(order[n.index], shape_of, const_shapes, tensor_bytes), n.param_bytes,
             _kind(order[n.index], shape_of, const_shapes))
        for n in nodes
    ]
    nodes = _mark_fused(nodes)

    outputs = []
    for o in g.output:
        if o.name not in producer or producer[o.name] < 0:
            raise ModelError(
                f"Model output {o.name!r} is not computed by any node (it is an input or a constant). "
                f"edgepart cannot place it; remove it from the model's outputs."
            )
        outputs.append(specs.get(o.name) or _spec(o) or TensorSpec(o.name, "unknown", ()))

    n = len(nodes)
    if n == 0:
        raise ModelError("The model has no compute nodes (only constants); there is nothing to split.")
    diff = np.zeros(n + 2, dtype=np.int64)
    for t, p in producer.items():
        lu = last_use.get(t)
        if lu is not None and lu > p:
            diff[p + 1] += tensor_bytes.get(t, 0)
            diff[lu + 1] -= tensor_bytes.get(t, 0)
    live = np.cumsum(diff)[: n + 1]
    live[0] = 0

    for t in producer:
        s = specs.get(t)
        if s is None or s.dtype == "unknown" or s.shape == ("?",):
            specs[t] = _fallback_spec(t, s, fixed_specs.get(t), measured_shapes.get(t), measured_dtypes.get(t))

    return Graph(
        name=g.name or "model",
        sha256=sha256,
        nodes=tuple(nodes),
        inputs=tuple(specs.get(i.name) or _spec(i) for i in real_inputs),
        outputs=tuple(outputs),
        specs=specs,
        tensor_bytes=tensor_bytes,
        constant_bytes=constant_bytes,
        producer=producer,
        last_use=last_use,
        live_bytes=live,
        input_shapes={k: tuple(v) for k, v in input_shapes.items()},
    )


def _check_input_shapes(real_inputs, input_shapes) -> None:
    names = {i.name for i in real_inputs}
    unknown = set(input_shapes) - names
    if unknown:
        raise InputShapeError(
            f"--input-shape names {', '.join(sorted(unknown))}, which the model does not take. "
            f"Its inputs are: {', '.join(sorted(names))}."
        )
    missing = []
    for vi in real_inputs:
        dims = vi.type.tensor_type.shape.dim
        if vi.name in input_shapes:
            given = input_shapes[vi.name]
            if len(given) != len(dims):
                raise InputShapeError(
                    f"Input {vi.name!r} has {len(dims)} dimensions but --input-shape gives {len(given)} "
                    f"({'x'.join(map(str, given))})."
                )
            for i, (d, v) in enumerate(zip(dims, given)):
                if is_fixed(d) and d.dim_value != v:
                    raise InputShapeError(
                        f"Input {vi.name!r} has fixed size {d.dim_value} on axis {i}, but --input-shape gives {v}."
                    )
            continue
        sym = [d.dim_param or "?" for d in dims if not is_fixed(d)]
        if sym:
            shape = "x".join(str(d.dim_value) if is_fixed(d) else d.dim_param or "?" for d in dims)
            missing.append(f"{vi.name} [{shape}]")
    if missing:
        raise InputShapeError(
            "The model has symbolic input dimensions, and planning needs concrete sizes to count "
            f"bytes and FLOPs: {'; '.join(missing)}. Give each one with --input-shape NAME=1x3x224x224 "
            "(repeatable), or give example inputs with --inputs inputs.npz. The emitted sub-models "
            "keep the symbolic axes and still run at other sizes."
        )


def _non_positive_dims(g: onnx.GraphProto):
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                yield vi.name


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # inference errors are many and untyped; fall back to what the model says
        log.warning("onnx shape inference failed (%s); sizes will be measured with onnxruntime", first_line(e))
        return model


def _set_shape(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    dims = vi.type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or tt.elem_type == 0:
        return None
    dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type != TensorProto.STRING else "str"
    if not tt.HasField("shape"):
        return TensorSpec(vi.name, dtype, ("?",))
    shape = tuple(d.dim_value if is_fixed(d) else (d.dim_param or "?") for d in tt.shape.dim)
    return TensorSpec(vi.name, dtype, shape)


def is_fixed(d: onnx.TensorShapeProto.Dimension) -> bool:
    """Whether a dimension has a fixed size: a positive `dim_value`. PaddlePaddle and other converters
    write a dynamic axis as `dim_value: -1` (or 0), and onnxruntime runs such a model at any size there."""
    return d.HasField("dim_value") and d.dim_value > 0


def symbolic_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose non-positive `dim_value`s (in inputs, outputs and value_info) are
    cleared, i.e. symbolic: what shape inference and emitted sub-models should see."""
    out = copy.deepcopy(model)
    g = out.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value <= 0:
                    d.Clear()
    return out


def _concrete(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def _tensor_proto_bytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        item = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        item = 4
    return n * item


def _constant_node_bytes(nd: onnx.NodeProto) -> int:
    for a in nd.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return _tensor_proto_bytes(a.t)
    return 8


def captured_inputs(nd: onnx.NodeProto) -> list[str]:
    """Outer-scope names that a node's subgraphs (If, Loop, Scan) read."""
    out: list[str] = []
    for a in nd.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in subs:
            defined = {i.name for i in sg.input} | {i.name for i in sg.initializer}
            for sn in sg.node:
                for t in list(sn.input) + captured_inputs(sn):
                    if t and t not in defined:
                        out.append(t)
                defined.update(sn.output)
    return out


def topological_order(g: onnx.GraphProto, constants: set[str]) -> list[onnx.NodeProto]:
    """Placeable nodes in a topological order (the file's order when it already is one)."""
    nodes = [nd for nd in g.node if nd.op_type not in _NO_PLACE]
    available = {i.name for i in g.input} | constants | {""}
    made_by: dict[str, int] = {}
    for i, nd in enumerate(nodes):
        for o in nd.output:
            made_by[o] = i
    deps = []
    for i, nd in enumerate(nodes):
        deps.append({made_by[t] for t in list(nd.input) + captured_inputs(nd) if t not in available and t in made_by})
    # Kahn's algorithm, always taking the lowest original index: keeps the file's order if valid.
    import heapq

    indeg = [len(d) for d in deps]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    heap = [i for i, k in enumerate(indeg) if k == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        i = heapq.heappop(heap)
        out.append(nodes[i])
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, u)
    if len(out) != len(nodes):
        raise ModelError("The model's graph has a cycle; it is not a valid ONNX model.")
    return out


def _activation_bytes(model, producer, fixed_specs, input_shapes):
    """(bytes, and the shapes and dtypes measured where inference could not tell) of every activation."""
    sizes: dict[str, int] = {}
    unknown = []
    for t in producer:
        s = fixed_specs.get(t)
        if s is not None and _concrete(s.shape) and s.dtype not in ("unknown", "str"):
            sizes[t] = int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize
        else:
            unknown.append(t)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    if unknown:
        measured = _measure(model, unknown, input_shapes)
        sizes.update({t: b for t, (b, _, _) in measured.items()})
        shapes.update({t: s for t, (_, s, _) in measured.items() if s is not None})
        dtypes.update({t: d for t, (_, _, d) in measured.items() if d is not None})
    return sizes, shapes, dtypes


def _measure(model, names: list[str], input_shapes) -> dict[str, tuple[int, tuple[int, ...] | None, str | None]]:
    """One onnxruntime run on zeros, every unknown tensor exposed as an output, to read its size."""
    from edgepart.packager.model import probe

    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = input_shapes.get(vi.name) or tuple(d.dim_value for d in tt.shape.dim)
        feeds[vi.name] = np.zeros(shape, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type))
    try:
        outs = probe.run(model, names, feeds)
    except Exception as e:  # onnxruntime's errors are untyped
        log.warning("could not measure tensor sizes with onnxruntime (%s); counting them as 0 bytes", first_line(e))
        return {t: (0, None, None) for t in names}
    return {t: _measured(v) for t, v in zip(names, outs)}


def _measured(v) -> tuple[int, tuple[int, ...] | None, str]:
    """(bytes, shape, dtype) of a value onnxruntime returned; a sequence or map has no shape."""
    if isinstance(v, (list, dict)):
        kind = "sequence" if isinstance(v, list) else "map"
        return sum(int(np.asarray(x).nbytes) for x in (v if kind == "sequence" else v.values())), None, kind
    v = np.asarray(v)
    return int(v.nbytes), tuple(v.shape), "str" if v.dtype.kind in "OUS" else v.dtype.name


def _fallback_spec(t: str, symbolic: TensorSpec | None, fixed: TensorSpec | None, measured_shape, measured_dtype) -> TensorSpec:
    """The spec of an activation whose symbolic shape inference left without a type or rank: the
    type and rank it has at the planning shapes, every dimension symbolic ("?"), so a sub-model with
    it at a boundary still runs at other sizes."""
    known = [x.dtype for x in (symbolic, fixed) if x is not None and x.dtype != "unknown"]
    dtype = known[0] if known else (measured_dtype or "unknown")
    if fixed is not None and fixed.shape != ("?",):
        rank = len(fixed.shape)
    elif measured_shape is not None:
        rank = len(measured_shape)
    else:  # nothing tells its rank: it cannot be a stage boundary (docs/planning.md, "What crosses a cut")
        return TensorSpec(t, dtype if dtype in ("sequence", "map") else "unknown", ("?",))
    return TensorSpec(t, dtype, ("?",) * rank)


def _macs(nd: onnx.NodeProto, shape_of, const_shapes, tensor_bytes) -> int:
    """Multiply-accumulates of one node; one per output element for element-wise work."""
    out = shape_of.get(nd.output[0]) if nd.output else None
    out_elems = int(np.prod(out)) if out is not None else 0
    if not out_elems and nd.output:
        out_elems = tensor_bytes.get(nd.output[0], 0) // 4
    op = nd.op_type
    w_at = 3 if op == "QLinearConv" else 1  # QLinearConv: x, x_scale, x_zero_point, w, ...
    if op in ("Conv", "ConvInteger", "QLinearConv") and len(nd.input) > w_at:
        w = const_shapes.get(nd.input[w_at]) or shape_of.get(nd.input[w_at])
        if w is not None and len(w) >= 2:
            return out_elems * int(np.prod(w[1:]))
    if op == "ConvTranspose" and len(nd.input) > 1:
        w = const_shapes.get(nd.input[1]) or shape_of.get(nd.input[1])
        x = shape_of.get(nd.input[0])
        if w is not None and x is not None:
            return int(np.prod(x)) * int(np.prod(w[1:]))
    if op in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"):
        a = shape_of.get(nd.input[0]) or const_shapes.get(nd.input[0])
        if a is not None and len(a) >= 1:
            trans_a = any(at.name == "transA" and at.i for at in nd.attribute)
            k = a[0] if (op == "Gemm" and trans_a) else a[-1]
            return out_elems * int(k)
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        x = shape_of.get(nd.input[0])
        if x is not None:
            return int(np.prod(x))
    if op in ("AveragePool", "MaxPool"):
        k = next((list(a.ints) for a in nd.attribute if a.name == "kernel_shape"), [1])
        return out_elems * int(np.prod(k))
    return out_elems


def _kind(nd: onnx.NodeProto, shape_of, const_shapes) -> str:
    """The node's operator kind for device profiles (docs/profile.md)."""
    w = x = None
    if nd.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        w_at = 3 if nd.op_type == "QLinearConv" else 1
        if len(nd.input) > w_at:
            w = const_shapes.get(nd.input[w_at]) or shape_of.get(nd.input[w_at])
        x = shape_of.get(nd.input[0]) if nd.input else None
    return op_kind(nd.op_type, w, x[1] if x is not None and len(x) > 1 else None)


def _mark_fused(nodes: list[Node]) -> list[Node]:
    """Kind "fused" for the nodes onnxruntime folds into a convolution or product (edgepart.profile's
    FUSABLE after one, through a chain of such nodes, each the sole reader of what it follows; a Pad whose only reader is a convolution): a
    device profile measured their time as part of that node (docs/profile.md)."""
    import dataclasses

    kind_of: dict[str, str] = {}
    readers: dict[str, list[Node]] = {}
    for nd in nodes:
        for t in nd.inputs:
            readers.setdefault(t, []).append(nd)
    out = []
    for nd in nodes:
        k = nd.kind
        # onnxruntime fuses only when this node is the producer's sole reader: a convolution whose
        # output also feeds another node must write it out, so the activation after it runs alone.
        if (nd.op_type in FUSABLE and nd.inputs and kind_of.get(nd.inputs[0]) in COMPUTE_KINDS + ("fused",)
                and len(readers.get(nd.inputs[0], [])) == 1):
            k = "fused"
        elif nd.op_type == "Pad" and nd.outputs and [r.kind for r in readers.get(nd.outputs[0], [])] in (
                ["conv"], ["depthwise"], ["pointwise"]):
            k = "fused"
        for o in nd.outputs:
            kind_of[o] = k
        out.append(nd if k == nd.kind else dataclasses.replace(nd, kind=k))
    return out


def first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__


def constant_value(nd: onnx.NodeProto) -> np.ndarray:
    """The value a Constant node holds, as an array; ModelError for a kind of value not read here."""
    for a in nd.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    raise ModelError(f"The Constant node {nd.name!r} holds a kind of value the packager cannot read "
                     f"({', '.join(a.name for a in nd.attribute)}); fold it into an initializer (onnxsim) first.")

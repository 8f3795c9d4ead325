"""What each ONNX op can do in a channel split, read from the model: rules for pass A of the planner.

    ModelInfo(model, graph)     node protos, constants, planning shapes (one onnxruntime probe on zeros)
                                and small values (pads, axes computed from shapes)
    classify(info, node, ...)   -> Rule: contract (a Conv/Gemm/MatMul with constant weights, split by
                                output channels), local (per-channel: BatchNorm, activations, pooling,
                                depthwise Conv, spatial Pad, Flatten, channel Concat, a Reshape into or
                                out of heads, a MatMul of two activations split on a batch axis, an
                                embedding Gather, ...), norm (a LayerNormalization over the split axis:
                                per-token statistics exchanged), rep (shape arithmetic, recomputed where
                                needed), or whole (anything else: gathered)

Adding an op the compiler keeps per-channel means a rule here and, if its constants are sliced in
an unusual way, a case in channel_emit.local.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepart.errors import ModelError, PlanningError

from edgepart.packager.model.submodel import placed_protos
from edgepart.packager.model.graph import Graph, constant_value

log = logging.getLogger("edgepart")


@dataclass(frozen=True)
class Rule:
    """How a node can run, from its inputs' kinds alone (before partitions are chosen)."""

    kind: str  # contract | local | norm | whole | rep
    axis: int | None = None  # contract/local/norm: the output's split axis
    # local: same (shares its inputs' partition) | flatten, merge (each input channel becomes `inner`
    # output channels) | group (each `inner` input channels become one output channel: heads) | concat
    link: str = "same"
    inner: int = 1  # flatten/merge/group: channels per group
    ins: tuple[str, ...] = ()  # local/same: split inputs that share the output's partition
    why: str = ""  # whole: why it needs the whole tensor; local/rep: what it does, when worth a note


@dataclass(frozen=True)
class Contraction:
    """A Conv (group 1), Gemm or MatMul with constant weights, seen as y = W x over channels."""

    x: str
    w: str
    b: str | None
    in_axis: int
    out_axis: int
    used: np.ndarray  # bool [C_out, C_in]: output channel o reads input channel c


# -- op tables ---------------------------------------------------------------------------------------

ELEMENTWISE = frozenset("""
Add Sub Mul Div Pow Max Min Sum Mean PRelu Where Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor
Not Mod BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot Relu LeakyRelu Elu Selu Celu Sigmoid HardSigmoid
HardSwish Tanh Softplus Softsign Exp Log Abs Neg Sqrt Reciprocal Erf Gelu Mish Identity Cast CastLike Floor
Ceil Round Sign Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh ThresholdedRelu IsNaN IsInf Clip
Dropout Shrink
""".split())
POOLS = frozenset("MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split())
REDUCES = frozenset("""ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceSumSquare""".split())
SOFTMAXES = frozenset(("Softmax", "LogSoftmax", "Hardmax"))
NONDETERMINISTIC = frozenset(("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                              "Bernoulli"))


# -- the model as the channel compiler reads it ------------------------------------------------------

class ModelInfo:
    """Node protos, constants, planning shapes and small values (pads, axes) of one model."""

    def __init__(self, model: onnx.ModelProto, graph: Graph):
        self.model, self.graph = model, graph
        self.protos = placed_protos(model, graph)
        self.inits = {i.name: i for i in model.graph.initializer}
        self.const_nodes = {o: nd for nd in model.graph.node if nd.op_type == "Constant" for o in nd.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.shapes, self.dtypes, self.values = _probe(model, graph)
        self.consumers: dict[str, list[int]] = {}
        for nd in graph.nodes:
            for t in nd.inputs:
                self.consumers.setdefault(t, []).append(nd.index)
        self.model_outputs = {o.name for o in graph.outputs}
        self._arrays: dict[str, np.ndarray] = {}
        self._contractions: dict[str, Contraction | None] = {}

    def is_const(self, name: str) -> bool:
        return name in self.graph.constant_bytes

    def array(self, name: str) -> np.ndarray:
        """The value of an initializer or Constant output."""
        if name not in self._arrays:
            if name in self.inits:
                self._arrays[name] = numpy_helper.to_array(self.inits[name])
            else:
                self._arrays[name] = constant_value(self.const_nodes[name])
        return self._arrays[name]

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value, or an activation's value at the planning shapes when it is small."""
        return self.array(name) if self.is_const(name) else self.values.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.array(name).shape) if self.is_const(name) else self.shapes[name]

    def used(self, name: str) -> bool:
        return bool(self.consumers.get(name)) or name in self.model_outputs

    def bytes_per_channel(self, t: str, axis: int) -> float:
        shape = self.shapes[t]
        return float(np.prod(shape, dtype=np.float64)) * np.dtype(self.dtypes[t]).itemsize / max(shape[axis], 1)

    def contraction(self, name: str) -> Contraction | None:
        if name not in self._contractions:
            self._contractions[name] = _contraction(self, self.protos[name])
        return self._contractions[name]


def attr(p: onnx.NodeProto, name: str, default=None):
    for a in p.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _probe(model: onnx.ModelProto, graph: Graph):
    """(shape, dtype, small value) of every activation: one onnxruntime run on zeros at the planning shapes."""
    from edgepart.packager.model import probe

    names = [t for t, p in graph.producer.items() if p >= 0]
    feeds = {}
    for spec in graph.inputs:
        shape = graph.input_shapes.get(spec.name) or spec.shape
        if not all(isinstance(d, int) for d in shape):
            raise PlanningError(f"Input {spec.name!r} has symbolic dimensions {list(spec.shape)}; analyse the model "
                                f"with input_shapes (--input-shape NAME=1x3x224x224) before channel planning.")
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    try:
        outs = probe.run(model, names, feeds)
    except Exception as e:  # onnxruntime's errors are untyped
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(f"The model does not run in onnxruntime at its planning shapes ({first}); check it "
                         f"with onnx.checker and the input shapes.") from None
    shapes, dtypes, values = {}, {}, {}
    for spec in graph.inputs:
        shapes[spec.name], dtypes[spec.name] = tuple(feeds[spec.name].shape), feeds[spec.name].dtype.name
    for t, v in zip(names, outs):
        v = np.asarray(v)
        shapes[t], dtypes[t] = tuple(v.shape), v.dtype.name
        if v.size <= 16 or (v.dtype.kind in "iub" and v.size <= 4096):
            values[t] = v
    return shapes, dtypes, values


def _contraction(info: ModelInfo, p: onnx.NodeProto) -> Contraction | None:
    op, ins = p.op_type, list(p.input)
    if op not in ("Conv", "Gemm", "MatMul") or len(ins) < 2 or info.is_const(ins[0]) or not info.is_const(ins[1]):
        return None
    b = ins[2] if len(ins) > 2 and ins[2] else None
    if b is not None and not info.is_const(b):
        return None
    x_shape, w = info.shape(ins[0]), info.array(ins[1])
    if op == "Conv":
        if attr(p, "group", 1) != 1 or len(x_shape) < 3 or w.ndim != len(x_shape) or w.shape[1] != x_shape[1]:
            return None
        used = (w != 0).reshape(w.shape[0], w.shape[1], -1).any(-1)
        return Contraction(ins[0], ins[1], b, 1, 1, used)
    if w.ndim != 2:
        return None
    if op == "Gemm":
        if attr(p, "transA", 0) or len(x_shape) != 2:
            return None
        used = (w != 0) if attr(p, "transB", 0) else (w != 0).T
        return Contraction(ins[0], ins[1], b, 1, 1, used)
    if len(x_shape) < 2:
        return None
    return Contraction(ins[0], ins[1], None, len(x_shape) - 1, len(x_shape) - 1, (w != 0).T)


# -- pass A: what each node can do ---------------------------------------------------------------------

def classify(info: ModelInfo, nd, axis_of: dict[str, int | None], kind_of: dict[str, str]) -> Rule:
    """The rule of one node, given its inputs' kinds (split/whole/caller/rep) and split axes."""
    p, op, acts = info.protos[nd.name], nd.op_type, nd.inputs
    if op in ("Shape", "Size"):
        return Rule("rep")
    has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in p.attribute)
    if op == "Gather" and acts and all(kind_of.get(t) in ("rep", "caller") for t in acts):
        emb = _embedding(info, p)
        if emb is not None:
            return emb
    out_elems = int(np.prod(info.shapes[nd.outputs[0]], dtype=np.int64)) if nd.outputs else 0
    if (all(kind_of.get(t) in ("rep", "caller") for t in acts) and op not in NONDETERMINISTIC and not has_subgraph
            and info.contraction(nd.name) is None and nd.macs <= max(out_elems, 1)):
        if all(kind_of.get(t) == "rep" for t in acts):
            return Rule("rep")  # shape arithmetic and constants
        # element-wise work on model inputs (padding, normalising): the caller sends the input to
        # every device that needs it anyway, so each recomputes it instead of receiving it
        return Rule("rep", why="cheap op on model inputs, recomputed where needed")
    c = info.contraction(nd.name)
    if c is not None:
        return Rule("contract", axis=c.out_axis)
    split_ins = [t for t in acts if kind_of.get(t) == "split"]
    if not split_ins:
        return Rule("whole", why="no input is channel-split")
    if p.domain not in ("", "ai.onnx") or has_subgraph:
        return Rule("whole", why=f"{op} is not a per-channel op the compiler knows")
    if any(info.used(o) for o in nd.outputs[1:]) or len(p.output) == 0:
        return Rule("whole", why=f"{op}'s extra outputs are used")
    x = p.input[0]
    a = axis_of.get(x)
    shape = info.shapes[nd.outputs[0]]
    rank_in = len(info.shape(x)) if x else 0
    if op in ELEMENTWISE:
        return _elementwise(info, p, axis_of, kind_of) or Rule("whole", why=f"{op} broadcasts across the channel axis")
    if op == "MatMul":
        return _matmul(info, p, axis_of, kind_of) or Rule("whole", why="MatMul of activations split on a "
                                                                        "contracted axis")
    if a is None:
        return Rule("whole", why=f"{op}'s first input is not channel-split")
    if op in ("BatchNormalization", "InstanceNormalization"):
        if a == 1 and all(info.is_const(t) for t in p.input[1:] if t):
            return Rule("local", axis=1, ins=(x,))
        return Rule("whole", why=f"{op} over a tensor not split on axis 1")
    if op == "Conv":
        w = info.array(p.input[1]) if info.is_const(p.input[1]) else None
        c_in = info.shape(x)[1]
        b_ok = len(p.input) < 3 or not p.input[2] or info.is_const(p.input[2])
        if a == 1 and w is not None and b_ok and attr(p, "group", 1) == c_in and w.shape[0] == c_in and w.shape[1] == 1:
            return Rule("local", axis=1, ins=(x,))
        return Rule("whole", why="grouped Conv that is not depthwise")
    if op in POOLS:
        if a == 1 and rank_in >= 3:
            return Rule("local", axis=1, ins=(x,))
        return Rule("whole", why=f"{op} over a tensor not split on axis 1")
    if op == "Pad":
        return _pad(info, p, a, rank_in) or Rule("whole", why="Pad on the channel axis (or pads unknown)")
    if op == "Flatten":
        f = attr(p, "axis", 1) % max(rank_in, 1)
        if f == a:
            inner = int(np.prod(info.shape(x)[a + 1:], dtype=np.int64))
            return _flatten_rule(x, inner)
        return Rule("whole", why="Flatten that mixes the channel axis with the axes before it")
    if op == "Reshape":
        return _reshape(info, p, a) or Rule("whole", why="Reshape across the channel axis")
    if op == "LayerNormalization":
        first = attr(p, "axis", -1) % rank_in
        if a < first:
            return Rule("local", axis=a, ins=(x,))  # normalised over other axes: per channel
        if all(info.is_const(t) for t in p.input[1:] if t):
            return Rule("norm", axis=a, ins=(x,))
        return Rule("whole", why="LayerNormalization over the channel axis with computed scale or bias")
    if op == "Concat":
        axis = attr(p, "axis") % len(shape)
        same_split = all(kind_of.get(t) == "split" and axis_of.get(t) == a for t in acts)
        if any(info.is_const(t) for t in p.input) or not same_split:
            return Rule("whole", why="Concat of tensors not all split on one axis")
        if axis == a:
            return Rule("local", axis=a, link="concat")
        return Rule("local", axis=a, ins=tuple(acts))
    if op == "Transpose":
        perm = list(attr(p, "perm", list(range(rank_in))[::-1]))
        return Rule("local", axis=perm.index(a), ins=(x,))
    if op in SOFTMAXES:
        if info.opset >= 13:
            if attr(p, "axis", -1) % rank_in != a:
                return Rule("local", axis=a, ins=(x,))
        elif a < attr(p, "axis", 1) % rank_in:
            return Rule("local", axis=a, ins=(x,))
        return Rule("whole", why=f"{op} over the channel axis")
    if op == "LpNormalization":
        if attr(p, "axis", -1) % rank_in != a:
            return Rule("local", axis=a, ins=(x,))
        return Rule("whole", why="LpNormalization over the channel axis")
    if op in REDUCES:
        return _reduce(info, p, a, rank_in) or Rule("whole", why=f"{op} over the channel axis")
    if op in ("Squeeze", "Unsqueeze"):
        return _squeeze(info, p, a, rank_in) or Rule("whole", why=f"{op} of the channel axis")
    return Rule("whole", why=f"{op} is not a per-channel op the compiler knows")


def _flatten_rule(x: str, inner: int) -> Rule:
    return Rule("local", axis=1, ins=(x,)) if inner == 1 else Rule("local", axis=1, link="flatten", inner=inner)


def _reshape(info: ModelInfo, p, a: int) -> Rule | None:
    """A Reshape that keeps the split axis' channels together: a flatten, splitting the split axis
    into (groups, inner) (heads), or merging it with the axes after it (heads back into features)."""
    if len(p.input) < 2 or not p.input[1]:
        return None
    s, o = tuple(info.shape(p.input[0])), tuple(info.shapes[p.output[0]])
    if a == 1 and len(s) >= 2 and o == (s[0], int(np.prod(s[1:], dtype=np.int64))):
        return _flatten_rule(p.input[0], int(np.prod(s[2:], dtype=np.int64)))
    if len(o) == len(s) + 1 and o[:a] == s[:a] and o[a + 2:] == s[a + 1:] and o[a] * o[a + 1] == s[a]:
        return Rule("local", axis=a, link="group", inner=int(o[a + 1]),
                    why=f"heads: the split axis reshaped into groups of {o[a + 1]} channels, each device its own")
    m = len(s) - len(o) + 1  # axes merged into the split axis
    if m >= 2 and o[:a] == s[:a] and o[a + 1:] == s[a + m:] and o[a] == int(np.prod(s[a:a + m], dtype=np.int64)):
        return Rule("local", axis=a, link="merge", inner=int(np.prod(s[a + 1:a + m], dtype=np.int64)),
                    why="heads merged back into channels, each device its own")
    return None


def _matmul(info: ModelInfo, p, axis_of, kind_of) -> Rule | None:
    """A MatMul of activations split on a batch (leading) axis, as attention's Q·K^T and P·V per head."""
    out_shape = info.shapes[p.output[0]]
    r = len(out_shape)
    if any(len(info.shape(t)) < 2 for t in p.input) or r < 3:
        return None
    a = None
    for t in p.input:
        if not info.is_const(t) and kind_of.get(t) == "split":
            idx = axis_of[t]
            cand = idx + r - len(info.shape(t))
            if idx < len(info.shape(t)) - 2 and info.shape(t)[idx] == out_shape[cand]:
                a = cand
                break
    if a is None:
        return None
    ins = _split_operands(info, p.input, r, a, out_shape[a], axis_of, kind_of)
    if ins is None:
        return None
    return Rule("local", axis=a, ins=ins, why="per head: a MatMul of two activations split on a batch axis")


def _embedding(info: ModelInfo, p) -> Rule | None:
    """A Gather of rows of a constant table [V, H] by indices every device has (model inputs, shape
    arithmetic): each device gathers its own columns of the table."""
    if len(p.input) < 2 or not info.is_const(p.input[0]) or info.is_const(p.input[1]):
        return None
    table = info.shape(p.input[0])
    if len(table) != 2 or attr(p, "axis", 0) % 2 != 0 or table[1] < 2 or info.array(p.input[0]).dtype.kind != "f":
        return None
    return Rule("local", axis=len(info.shapes[p.output[0]]) - 1, ins=(),
                why="embedding: each device gathers its own columns of the table")


def aligned(shape: tuple[int, ...], out_rank: int, axis: int) -> int:
    """The axis of a broadcast operand that lines up with output axis `axis` (negative: none)."""
    return axis - (out_rank - len(shape))


def _elementwise(info: ModelInfo, p, axis_of, kind_of) -> Rule | None:
    out_shape = info.shapes[p.output[0]]
    r = len(out_shape)
    a = None
    for t in p.input:
        if t and not info.is_const(t) and axis_of.get(t) is not None:
            cand = aligned(info.shape(t), r, axis_of[t])
            if cand >= 0 and info.shape(t)[axis_of[t]] == out_shape[cand]:
                a = cand
                break
    if a is None:
        return None
    ins = _split_operands(info, p.input, r, a, out_shape[a], axis_of, kind_of)
    return None if ins is None else Rule("local", axis=a, ins=ins)


def _split_operands(info: ModelInfo, inputs, r: int, a: int, c: int, axis_of, kind_of) -> tuple[str, ...] | None:
    """The operands split along output axis `a` (size c) of an op of output rank r; operands
    broadcast along it go whole to every device; None when one has another size there."""
    ins = []
    for t in inputs:
        if not t:
            continue
        s = info.shape(t)
        idx = aligned(s, r, a)
        if idx < 0 or s[idx] == 1 and c != 1:
            continue  # broadcast along the split axis: the whole operand on every device
        if s[idx] != c:
            return None
        if not info.is_const(t) and kind_of.get(t) == "split" and axis_of.get(t) == idx:
            ins.append(t)
    return tuple(dict.fromkeys(ins))


def _pad(info: ModelInfo, p, a: int, rank: int) -> Rule | None:
    if attr(p, "mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return None
    if info.opset < 11:
        pads = attr(p, "pads") or attr(p, "paddings")
        pads = None if pads is None else np.asarray(pads)
    else:
        pads = info.value(p.input[1]) if len(p.input) > 1 and p.input[1] else None
    if pads is None:
        return None
    pads = np.asarray(pads).reshape(-1)
    axes = list(range(rank))
    if len(p.input) > 3 and p.input[3]:
        v = info.value(p.input[3])
        if v is None:
            return None
        axes = [int(x) % rank for x in np.asarray(v).reshape(-1)]
    if a in axes:
        i = axes.index(a)
        if pads[i] != 0 or pads[i + len(axes)] != 0:
            return None
    return Rule("local", axis=a, ins=(p.input[0],))


def _axes(info: ModelInfo, p, input_from: int) -> list[int] | None:
    """The `axes` of a Reduce/Squeeze/Unsqueeze, from its attribute or (newer opsets) its second input."""
    v = attr(p, "axes")
    if v is None and info.opset >= input_from and len(p.input) > 1 and p.input[1]:
        v = info.value(p.input[1])
        if v is None:
            raise _Unknown
    return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]


class _Unknown(Exception):
    pass


def _reduce(info: ModelInfo, p, a: int, rank: int) -> Rule | None:
    try:
        axes = _axes(info, p, 13 if p.op_type == "ReduceSum" else 18)
    except _Unknown:
        return None
    if not axes:
        if attr(p, "noop_with_empty_axes", 0):
            return Rule("local", axis=a, ins=(p.input[0],))
        return None
    axes = [x % rank for x in axes]
    if a in axes:
        return None
    out = a if attr(p, "keepdims", 1) else a - sum(x < a for x in axes)
    return Rule("local", axis=out, ins=(p.input[0],))


def _squeeze(info: ModelInfo, p, a: int, rank: int) -> Rule | None:
    try:
        axes = _axes(info, p, 13)
    except _Unknown:
        return None
    if p.op_type == "Squeeze":
        s = info.shape(p.input[0])
        axes = [x % rank for x in axes] if axes else [i for i, d in enumerate(s) if d == 1]
        if a in axes:
            return None
        return Rule("local", axis=a - sum(x < a for x in axes), ins=(p.input[0],))
    if not axes:
        return None
    out_rank = rank + len(axes)
    keep = [i for i in range(out_rank) if i not in {x % out_rank for x in axes}]
    return Rule("local", axis=keep[a], ins=(p.input[0],))

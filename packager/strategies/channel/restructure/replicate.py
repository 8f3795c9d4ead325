"""Replicate a model's first layers on every device: compute traded for bytes, exactly.

A CNN's first layers run at the highest resolution on few channels. Split by channels they send the
most bytes for the least compute: EfficientNet-Lite0's stem and first block are 1.6 MB of the exact
2-device split's 4.6 MB per image, for 5 % of its multiply-accumulates. On a slow link computing
them twice is far cheaper than sending their activations.

    replicate(model, n_devices, max_extra_macs=0.1) -> Replicated(model, partition, ReplicateReport)

rewrites the model so that every device computes its own copy of the longest prefix of layers that
costs each device at most `max_extra_macs` x the model's MACs beyond its even share. The copies sit
side by side on the channel axis (copy k on device k, the partition returned): the prefix's convolutions
become block-diagonal (each copy reads only its own copy), their per-channel operations and
constants are tiled, and the first layers after the prefix read, for each output channel, only the
copy of the device that computes it. The function is unchanged (the copies are equal) and the result
is plain ONNX: the channel compiler needs nothing new, it simply finds no channel to send.

A prefix ends only where every layer reading it is a Conv with constant weights (the layers that
can pick a copy); it holds Conv (group 1 or depthwise), element-wise operations,
BatchNormalization, pooling and Pad. It starts at the model inputs, which the caller sends to every
device that needs them anyway.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from edgepart.errors import PlanningError

from edgepart.packager.strategies.channel.compiler import channel_bytes
from edgepart.packager.strategies.channel._layout import Split, Whole, layer_rules, plan_layout, partitionable
from edgepart.packager.strategies.channel._ops import ELEMENTWISE, POOLS, ModelInfo, attr
from edgepart.packager.model.graph import analyse

REPORT_SCHEMA = 1


@dataclass(frozen=True)
class ReplicateReport:
    """What `replicate` did: the nodes every device now computes whole, at what compute, for what bytes."""

    n_devices: int
    max_extra_macs: float  # the cap asked for, a fraction of the model's MACs per device
    nodes: tuple[str, ...]  # computed whole on every device (empty: nothing fits the cap)
    readers: tuple[str, ...]  # the layers after them, each output channel reading its device's copy
    extra_macs: int  # each device's MACs beyond its even share of those nodes
    total_macs: int  # the whole model's
    bytes_before: int  # the exact channel split's bytes between devices (split layers, partial sums)
    bytes_after: int
    options: tuple[tuple[str, float], ...]  # (last tensor of a possible prefix, its extra MACs fraction)
    # the ORIGINAL model's dense split, in total and per split layer: the baseline a report compares
    # with (the rewritten model's own "dense" would count each copy)
    dense_bytes: int = 0
    layer_dense: tuple[tuple[str, int], ...] = ()
    schema: int = REPORT_SCHEMA

    @property
    def extra_fraction(self) -> float:
        return self.extra_macs / max(self.total_macs, 1)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(nodes=list(self.nodes), readers=list(self.readers), options=[list(o) for o in self.options],
                 extra_fraction=self.extra_fraction, layer_dense=[list(x) for x in self.layer_dense])
        return d

    def summary(self) -> str:
        if not self.nodes:
            return (f"replicate: no prefix of layers fits {self.max_extra_macs:.0%} extra MACs per device "
                    f"(smallest: {self.options[0][1]:.1%})" if self.options else
                    "replicate: no prefix of the model can be replicated (its first layers are not convolutions "
                    "and per-channel operations)")
        return (f"replicate: {len(self.nodes)} nodes computed whole on every device (+{self.extra_fraction:.1%} of the "
                f"model's MACs each), up to {self.nodes[-1]}; split layers send {self.bytes_before:,} -> "
                f"{self.bytes_after:,} bytes")


class Replicated(NamedTuple):
    model: onnx.ModelProto
    partition: dict[str, np.ndarray]
    report: ReplicateReport


def replicate(model: onnx.ModelProto, n_devices: int, max_extra_macs: float = 0.1, *,
              partition: Mapping[str, np.ndarray] | None = None,
              input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Replicated:
    """Rewrite `model` so every device computes its own copy of the longest prefix of layers that
    costs each at most `max_extra_macs` x the model's MACs beyond its even share (see the module)."""
    if not 0.0 <= max_extra_macs <= 1.0:
        raise PlanningError(f"max_extra_macs is a fraction of the model's MACs, in 0..1 (0.1: each device computes at "
                            f"most 10 % more); got {max_extra_macs}.")
    if n_devices < 2:
        raise PlanningError("Replicating layers needs at least 2 devices.")
    graph = analyse(model, dict(input_shapes) if input_shapes else None)
    info = ModelInfo(model, graph)
    lay = plan_layout(model, graph, n_devices, partition, info)
    part = {t: lay.layouts[t].owner for t in partitionable(model, graph, info) if isinstance(lay.layouts.get(t), Split)}
    original = channel_bytes(graph, part, model, n_devices)
    before = original.sent_bytes
    baseline = dict(dense_bytes=original.dense_bytes, layer_dense=tuple((x.node, x.dense_bytes) for x in original.layers))
    prefixes = _prefixes(info, layer_rules(info))
    share = (n_devices - 1) / n_devices
    total = graph.total_macs
    options = tuple((nodes[-1].outputs[0], sum(nd.macs for nd in nodes) * share / max(total, 1)) for nodes in prefixes)
    fits = [p for p, (_, f) in zip(prefixes, options) if f <= max_extra_macs]
    if not fits:
        return Replicated(model, part, ReplicateReport(n_devices, max_extra_macs, (), (), 0, total, before, before, options,
                                                       **baseline))
    nodes = fits[-1]
    out = copy.deepcopy(model)
    readers = _rewrite(out, info, lay, nodes, n_devices)
    onnx.checker.check_model(out)
    new_part = {t: o for t, o in part.items() if t not in {nd.outputs[0] for nd in nodes}}
    for nd in nodes:
        if info.contraction(nd.name) is not None:
            new_part[nd.outputs[0]] = np.repeat(np.arange(n_devices), info.shapes[nd.outputs[0]][1])
    after = channel_bytes(analyse(out, dict(input_shapes) if input_shapes else None), new_part, out, n_devices).sent_bytes
    extra = int(round(sum(nd.macs for nd in nodes) * share))
    return Replicated(out, new_part, ReplicateReport(n_devices, max_extra_macs, tuple(nd.name for nd in nodes),
                                                     tuple(readers), extra, total, before, after, options, **baseline))


# -- which prefixes ------------------------------------------------------------------------------------

def _prefixes(info: ModelInfo, rules) -> list[list]:
    """Every prefix (in topological order) of replicable nodes that only Conv layers read
    from outside, shortest first."""
    kind_of = {i.name: "caller" for i in info.graph.inputs}  # as the compiler sees them (channel_layout.layer_rules)
    region: list = []
    inside: set[str] = set()
    out: list[list] = []
    for nd, rule in zip(info.graph.nodes, rules):
        for i, o in enumerate(nd.outputs):
            kind_of[o] = "rep" if rule.kind == "rep" else "split" if i == 0 and rule.kind != "whole" else "whole"
        if rule.kind == "rep" and not any(t in inside for t in nd.inputs):
            continue  # shape arithmetic, constants, cheap work on the model inputs: unchanged
        if not _replicable(info, nd, rule, inside, kind_of):
            break
        region.append(nd)
        inside.add(nd.outputs[0])
        if _closed(info, region, inside):
            out.append(list(region))
    return out


def _replicable(info: ModelInfo, nd, rule, inside: set[str], kind_of: dict[str, str]) -> bool:
    p = info.protos[nd.name]
    if len(nd.outputs) != 1 or any(info.used(o) for o in p.output[1:]) or nd.outputs[0] in info.model_outputs:
        return False
    outside = [t for t in nd.inputs if not info.is_const(t) and t not in inside]
    c = info.contraction(nd.name)
    if rule.kind == "contract":
        # a Conv of the model input (or of cheap work on it) or of the prefix
        return (nd.op_type == "Conv" and c is not None and info.is_const(c.w)
                and all(kind_of.get(t) in ("caller", "rep") for t in outside))
    if rule.kind != "local" or rule.axis != 1 or not any(t in inside for t in nd.inputs):
        return False
    if nd.op_type not in ELEMENTWISE and p.input[0] not in inside:
        return False  # the data input of Pad, pooling, BatchNormalization, a depthwise Conv
    if any(kind_of.get(t) != "rep" for t in outside):
        return False  # another split tensor: it has one copy, the prefix has n
    if nd.op_type == "Pad" or nd.op_type in POOLS:
        return True
    if nd.op_type in ("Conv", "BatchNormalization", "InstanceNormalization"):  # depthwise: the rule checked it
        return not outside
    if nd.op_type in ELEMENTWISE:
        rank = len(info.shapes[nd.outputs[0]])
        c = info.shapes[nd.outputs[0]][1]
        if any(len(info.shape(t)) != rank or info.shape(t)[1] != c for t in nd.inputs if t in inside):
            return False  # a 1-channel map broadcast over the channels (spatial attention): n copies would not line up
        for t in outside:  # computed, shape-sized inputs: fine unless they carry channels
            s = info.shape(t)
            if len(s) >= rank - 1 and s[len(s) - rank + 1] != 1:
                return False
        return True
    return False


def _readers(info: ModelInfo, region: list, inside: set[str]) -> list:
    """The nodes outside the prefix that read it, in topological order."""
    names = {nd.name for nd in region}
    idx = sorted({i for t in inside for i in info.consumers.get(t, ())})
    return [info.graph.nodes[i] for i in idx if info.graph.nodes[i].name not in names]


def _closed(info: ModelInfo, region: list, inside: set[str]) -> bool:
    """True when every reader outside the prefix is a Conv (group 1) reading it as its input x."""
    for nd in _readers(info, region, inside):
        c = info.contraction(nd.name)
        # a Conv reading it as x (a MatMul would contract a spatial axis of these conv outputs)
        if nd.op_type != "Conv" or c is None or c.x not in inside or any(t in inside for t in info.protos[nd.name].input[1:]):
            return False
    return True


# -- the rewrite ------------------------------------------------------------------------------------------

def _rewrite(model: onnx.ModelProto, info: ModelInfo, lay, region: list, n: int) -> list[str]:
    inits = {i.name: i for i in model.graph.initializer}
    protos = {nd.name or nd.output[0]: nd for nd in model.graph.node}
    inside = {nd.outputs[0] for nd in region}

    replaced: set[str] = set()

    def put(name: str, arr: np.ndarray) -> str:
        replaced.add(name)
        new = _fresh(model, inits, f"{name}:x{n}")
        t = numpy_helper.from_array(arr, new)
        model.graph.initializer.append(t)
        inits[new] = t
        return new

    def tile(a: np.ndarray, axis: int) -> np.ndarray:
        return np.concatenate([a] * n, axis=axis)

    for nd in region:
        p = _proto(protos, info, nd)
        op = nd.op_type
        if op == "Conv":
            w = info.array(p.input[1])
            group = attr(p, "group", 1)
            if group == 1 and p.input[0] in inside:  # block-diagonal: each copy reads its own copy
                w2 = np.zeros((n * w.shape[0], n * w.shape[1], *w.shape[2:]), w.dtype)
                for k in range(n):
                    w2[k * w.shape[0]:(k + 1) * w.shape[0], k * w.shape[1]:(k + 1) * w.shape[1]] = w
            else:  # of the model input, or depthwise: the copies stacked
                w2 = tile(w, 0)
            p.input[1] = put(p.input[1], w2)
            if len(p.input) > 2 and p.input[2]:
                p.input[2] = put(p.input[2], tile(info.array(p.input[2]), 0))
            if group != 1:
                for a in p.attribute:
                    if a.name == "group":
                        a.i = group * n
        elif op in ("BatchNormalization", "InstanceNormalization"):
            for i in range(1, len(p.input)):
                if p.input[i]:
                    p.input[i] = put(p.input[i], tile(info.array(p.input[i]), 0))
        elif op in ELEMENTWISE:  # constants may come first (Mul(scale, x))
            rank = len(info.shapes[nd.outputs[0]])
            for i in range(len(p.input)):
                t = p.input[i]
                if t and info.is_const(t):
                    a = info.array(t)
                    ax = a.ndim - rank + 1  # the channel axis, broadcast from the right
                    if 0 <= ax < a.ndim and a.shape[ax] > 1:
                        p.input[i] = put(t, tile(a, ax))
    readers = []
    for nd in _readers(info, region, inside):
        readers.append(nd.name)
        _pick_copy(_proto(protos, info, nd), info, nd, lay, n, put)
    keep = [vi for vi in model.graph.value_info if vi.name not in inside]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    # the replaced weights, unless something else still reads them
    read = {t for nd in model.graph.node for t in nd.input}
    for nd in model.graph.node:  # and what subgraphs (If, Loop) read from outside
        for a in nd.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                read.update(t for sub in g.node for t in sub.input)
    kept = [t for t in model.graph.initializer if t.name in read or t.name not in replaced]
    gone = {t.name for t in model.graph.initializer} - {t.name for t in kept}
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    inputs = [i for i in model.graph.input if i.name not in gone]  # older exporters list weights as inputs
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return readers


def _pick_copy(p, info: ModelInfo, nd, lay, n: int, put) -> None:
    """A layer after the prefix: output channel o reads the copy of the device that computes o."""
    c = info.contraction(nd.name)
    y = lay.layouts.get(nd.outputs[0])
    c_out = c.used.shape[0]
    if isinstance(y, Split):
        owner = y.owner
    elif isinstance(y, Whole) and y.device >= 0:
        owner = np.full(c_out, y.device)
    else:
        owner = np.zeros(c_out, dtype=np.int64)
    W = info.array(c.w)  # a Conv's: [C_out, C_in, k...]
    W2 = np.zeros((W.shape[0], n * W.shape[1], *W.shape[2:]), W.dtype)
    ci = W.shape[1]
    for k in range(n):
        rows = owner == k
        W2[rows, k * ci:(k + 1) * ci] = W[rows]
    p.input[1] = put(c.w, W2)


def _proto(protos: dict, info: ModelInfo, nd):
    orig = info.protos[nd.name]
    return protos[orig.name or orig.output[0]]


def _fresh(model: onnx.ModelProto, inits: dict, base: str) -> str:
    used = set(inits) | {t for nd in model.graph.node for t in nd.output} | {i.name for i in model.graph.input}
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}~{i}"
    return name

"""The codec policy: how a float activation travels between devices, for every strategy.

`--wire-codec` names it: `dense`, `auto` (lossless, chosen per route), `bitmap`, `fp16`, `int8`. The
codecs themselves (encode and decode) live in edgepart.codecs, on the device side; this module only
chooses them, from the model (docs/architecture.md, "Codecs").
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from edgepart.errors import ModelError
from edgepart.plan import Codec
from edgepart.packager.model.graph import Graph, constant_value


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
    a = next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name), None)
    if a is None:
        nd = next((nd for nd in model.graph.node if nd.op_type == "Constant" and name in nd.output), None)
        try:
            a = constant_value(nd) if nd is not None else None
        except ModelError:  # a kind of value the compiler cannot read
            return None
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None

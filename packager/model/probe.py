"""Look inside a model with onnxruntime: the one place the packager builds a session to read
intermediate tensors (their sizes and shapes for analysis, small values for the channel compiler,
calibration activations for the restructurings, constants to fold, outputs for a report).

    session(model, optimize=False)          a quiet CPU session over an in-memory model
    exposing(model, names, only_needed=)    a copy of `model` whose outputs are `names`
    run(model, names, feeds, optimize=)     `names` computed on `feeds`, in that order

Graph optimizations are off by default: a probe reads the tensors the model names, which
onnxruntime's fusions could remove. Calibration runs keep them on (`optimize=True`), as the
agents run the steps.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np
import onnx


def session(model: onnx.ModelProto, *, optimize: bool = False):
    """An onnxruntime CPU session over `model`, logging only errors."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def exposing(model: onnx.ModelProto, names: Sequence[str], *, only_needed: bool = False) -> onnx.ModelProto:
    """A copy of `model` with every tensor of `names` among its outputs. `only_needed`: the outputs
    are exactly `names`, and only the nodes they need are kept (calibration over a large model)."""
    m = copy.deepcopy(model)
    if not only_needed:
        known = {o.name for o in m.graph.output} | {i.name for i in m.graph.initializer} | {i.name for i in m.graph.input}
        m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in known)
        return m
    made = {o: nd for nd in m.graph.node for o in nd.output}
    need, todo, keep = set(), list(names), set()
    while todo:
        t = todo.pop()
        if t in need:
            continue
        need.add(t)
        nd = made.get(t)
        if nd is not None and id(nd) not in keep:
            keep.add(id(nd))
            todo.extend(i for i in nd.input if i)
            for a in nd.attribute:  # subgraph captures
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    todo.extend(i for sub in g.node for i in sub.input if i)
    nodes = [nd for nd in m.graph.node if id(nd) in keep]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names)
    return m


def run(model: onnx.ModelProto, names: Sequence[str], feeds: Mapping[str, np.ndarray], *,
        optimize: bool = False) -> list:
    """`names` computed on `feeds` (only the feeds the model takes are passed). Raises what
    onnxruntime raises: callers turn it into their own error."""
    sess = session(exposing(model, names), optimize=optimize)
    takes = {i.name for i in sess.get_inputs()}
    return sess.run(list(names), {k: v for k, v in feeds.items() if k in takes})


__all__ = ["exposing", "run", "session"]

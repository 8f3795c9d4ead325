"""Fold what is computed from constants alone into initializers, before a model is planned.

A tensor that depends only on initializers and Constant nodes is the same for every request: a
weight that a PyTorch export reads through `Identity` (a shared parameter), a `Cast`, `Reshape` or
`Transpose` of a weight, `Shape` arithmetic on constants, padding vectors built with
`ConstantOfShape`/`Concat`. Left as ordinary nodes, such a tensor is computed in one stage and sent
to the next with every request. `fold_constants` evaluates these nodes once (onnxruntime, graph
optimisations off: the kernels that would compute them at run time) and stores their results as
initializers, which every stage that reads them gets a copy of, so they never cross a cut
(docs/planning.md, "Constants"). An `Identity` of a constant becomes the constant itself, so a
shared weight is stored once.

Left in place: random generators (their value must be drawn once per request and shared), nodes
whose result is a model output (a model output must be computed by a node), and anything that does
not evaluate to a tensor (a sequence, a map).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from edgepart.packager.model.graph import captured_inputs, first_line, topological_order

log = logging.getLogger("edgepart")

_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def constant_only(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes (besides Constant) whose every input is an initializer, a Constant's output or the
    result of another such node, in topological order; random generators and producers of model
    outputs excluded."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for nd in g.node if nd.op_type == "Constant" for o in nd.output}
    model_outputs = {o.name for o in g.output}
    out = []
    for nd in topological_order(g, set(consts)):
        reads = [t for t in list(nd.input) + captured_inputs(nd) if t]
        if _random(nd) or model_outputs & set(nd.output) or not all(t in consts for t in reads):
            continue
        out.append(nd)
        consts.update(o for o in nd.output if o)
    return out


def _random(nd: onnx.NodeProto) -> bool:
    """A random generator, a Dropout that may be in training mode, or a node whose subgraphs hold one."""
    if nd.op_type in _RANDOM or (nd.op_type == "Dropout" and len(nd.input) > 2 and nd.input[2]):
        return True
    return any(_random(sn) for a in nd.attribute
               for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)) for sn in sg.node)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every constant-only node evaluated into an initializer (the same object when
    there is none). The result computes exactly what `model` computes."""
    fold = constant_only(model)
    for _ in range(3):  # a node whose result is not a tensor stays, and so do the nodes that read it
        if not fold:
            return model
        values = _evaluate(model, fold)
        if values is None:
            return model
        bad = {t for t, v in values.items() if not isinstance(v, np.ndarray)}
        if not bad:
            return _rewrite(model, fold, values)
        kept, left = set(bad), []
        for nd in fold:
            if set(nd.output) & kept or set(_reads(nd)) & kept:
                kept.update(nd.output)
            else:
                left.append(nd)
        fold = left
    return model


def _reads(nd: onnx.NodeProto) -> list[str]:
    return [t for t in list(nd.input) + captured_inputs(nd) if t]


def _needed(model: onnx.ModelProto, fold: list[onnx.NodeProto]) -> list[str]:
    """Outputs of folded nodes that a node left in the graph reads (the rest are dead once folded)."""
    folded = {id(nd) for nd in fold}
    made = {o for nd in fold for o in nd.output if o}
    read = {t for nd in model.graph.node if id(nd) not in folded for t in _reads(nd)}
    return [o for nd in fold for o in nd.output if o in made and o in read]


def _evaluate(model: onnx.ModelProto, fold: list[onnx.NodeProto]) -> dict[str, object] | None:
    """The values of the folded nodes' outputs that the rest of the graph reads, or None when
    onnxruntime cannot compute them (then nothing is folded and the model is planned as it is)."""
    from edgepart.packager.model import probe

    names = _needed(model, fold)
    if not names:
        return {}
    g = model.graph
    reads = {t for nd in fold for t in _reads(nd)}
    const_nodes = [nd for nd in g.node if nd.op_type == "Constant" and set(nd.output) & reads]
    sub = onnx.helper.make_graph(
        nodes=[copy.deepcopy(nd) for nd in const_nodes + fold], name="constants", inputs=[],
        outputs=[onnx.ValueInfoProto(name=t) for t in names],
        initializer=[i for i in g.initializer if i.name in reads])
    m = onnx.helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                               functions=list(model.functions))
    try:
        return dict(zip(names, probe.session(m).run(names, {})))
    except Exception as e:  # onnxruntime's errors are untyped
        log.warning("could not fold the model's constant-only nodes (%s); they stay ordinary nodes, "
                    "and what they compute crosses cuts like any activation", first_line(e))
        return None


def _rewrite(model: onnx.ModelProto, fold: list[onnx.NodeProto], values: dict[str, object]) -> onnx.ModelProto:
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for nd in g.node if nd.op_type == "Constant" for o in nd.output}
    read_before = _read_before(g)
    # an Identity of a constant is that constant: its readers are pointed at the source, stored once
    alias: dict[str, str] = {}
    for nd in fold:
        if nd.op_type == "Identity" and (nd.input[0] in consts or nd.input[0] in alias):
            alias[nd.output[0]] = alias.get(nd.input[0], nd.input[0])
    folded = {id(nd) for nd in fold}
    made = {o for nd in fold for o in nd.output}
    keep = [copy.deepcopy(nd) for nd in g.node if id(nd) not in folded]
    for nd in keep:
        _rename_reads(nd, alias)
    read = {t for nd in keep for t in _reads(nd)}
    graph_inputs = {i.name for i in g.input}
    # what nothing read before folding stays as it was; what only folded nodes read goes
    inits = [i for i in g.initializer if i.name in read or i.name not in read_before or i.name in graph_inputs]
    new = [t for t in values if t in read]
    inits += [numpy_helper.from_array(np.asarray(values[t]), t) for t in new]
    keep = [nd for nd in keep if nd.op_type != "Constant" or set(nd.output) & read or not set(nd.output) & read_before]
    out = copy.deepcopy(model)
    og = out.graph
    del og.node[:]
    og.node.extend(keep)
    del og.initializer[:]
    og.initializer.extend(inits)
    value_info = [vi for vi in og.value_info if vi.name not in made]
    del og.value_info[:]
    og.value_info.extend(value_info)
    log.info("folded %d constant-only node(s) into %d initializer(s)", len(fold), len(new))
    return out


def _read_before(g: onnx.GraphProto) -> set[str]:
    return {t for nd in g.node for t in _reads(nd)}


def _rename_reads(nd: onnx.NodeProto, alias: dict[str, str]) -> None:
    """Point `nd`'s inputs (and its subgraphs' reads of outer names) at the aliases' sources."""
    if not alias:
        return
    for i, t in enumerate(nd.input):
        if t in alias:
            nd.input[i] = alias[t]
    for a in nd.attribute:
        for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            local = {i.name for i in sg.input} | {i.name for i in sg.initializer} | {o for sn in sg.node for o in sn.output}
            inner = {k: v for k, v in alias.items() if k not in local}
            for sn in sg.node:
                _rename_reads(sn, inner)

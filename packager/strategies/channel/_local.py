"""Per-channel nodes on the channels each device owns (a node whose decision is "local").

Device k computes its channels C_k of the node's output from its channels of the inputs: constants
sliced to C_k (per-channel weights, biases and scales, an embedding table's columns), activations
asked of the emitter with `deliver`, so only the channels k lacks cross (docs/channel.md). An
elementwise node whose split inputs k already holds whole (a LayerNorm computed whole there,
docs/channel.md "LayerNorm over split channels") is computed whole on k, k's piece taken from it; a
Reshape splitting the split axis into (groups, inner), or merging them back, reads the channels of
k's groups and gets k's count in its target shape.

The emitting functions take `em`, the channel Emitter (_emitter.py) that calls them; it is not
imported here, so that the emitter and its helpers do not import each other.
"""

from __future__ import annotations

import numpy as np

from edgepart.packager.strategies.channel._layout import Split
from edgepart.packager.strategies.channel._ops import ELEMENTWISE, aligned


def emit_local(em, nd, k: int) -> None:
    """A per-channel node on the channels device k owns."""
    rule = em.lay.rules[nd.index]
    p = em.info.protos[nd.name]
    out = nd.outputs[0]
    lo: Split = em.lay.layouts[out]
    rows = lo.of(k)
    if rows.size == 0:
        return
    name = em.fresh(f"{out}@{em.dev[k]}")
    em.piece[(out, k)] = name
    origin = [(out, lo.axis, len(rows))]
    macs = nd.macs * len(rows) / len(lo.owner)
    op = nd.op_type
    if op in ELEMENTWISE and _whole_inputs(em, p, k):
        _local_whole(em, nd, p, k, name)
        return
    if rule.link in ("group", "merge"):
        _regroup(em, nd, k, rows, name, origin, macs)
        return
    if op == "Gather" and not rule.ins:  # an embedding: this device's columns of the table
        table, inits = em.info.array(p.input[0]), []
        cols = em.sliced(p.input[0], table[:, rows], table, k, inits)
        em.op(k, p, [cols, em.deliver(p.input[1], k)], [name], inits, macs, origins=origin)
        return
    if rule.link == "flatten" or (op in ("Flatten", "Reshape") and rule.link == "same"):
        x = p.input[0]
        lx = em.lay.layouts[x]
        xin = em.deliver(x, k, lx.of(k) if rule.link == "flatten" else rows, lx.axis)
        em.op(k, "Flatten", [xin], [name], macs=macs, origins=origin, axis=int(lx.axis))
        return
    if rule.link == "concat":
        parts = []
        for t in p.input:
            lt = em.lay.layouts[t]
            if lt.of(k).size:
                parts.append(em.deliver(t, k, lt.of(k), lt.axis))
        em.op(k, p, parts, [name], macs=macs, origins=origin)
        return
    ins, inits, extra = [], [], {}
    r_out = len(em.info.shapes[out])
    for i, s in enumerate(p.input):
        if not s:
            ins.append("")
            continue
        if op in ELEMENTWISE or op in ("Concat", "MatMul"):
            idx = em.lay.layouts[s].axis if op == "Concat" else aligned(em.info.shape(s), r_out, lo.axis)
            shape = em.info.shape(s)
            per_channel = idx >= 0 and shape[idx] == len(lo.owner) and not (shape[idx] == 1 and len(lo.owner) != 1)
        elif op in ("BatchNormalization", "InstanceNormalization") or (op == "Conv" and i > 0):
            idx, per_channel = (1, True) if i == 0 else (0, True)
        else:
            idx, per_channel = (em.lay.layouts[s].axis, True) if i == 0 else (None, False)
        if em.info.is_const(s):
            if per_channel:
                whole = em.info.array(s)
                ins.append(em.sliced(s, np.take(whole, rows, axis=idx), whole, k, inits))
            else:
                ins.append(s)
                inits.append(em.copy_const(s))
        else:
            ins.append(em.deliver(s, k, rows, idx) if per_channel else em.deliver(s, k))
    if op == "Conv":
        extra["group"] = len(rows)
    outs = [name] + [""] * (len(p.output) - 1)
    em.op(k, p, ins, outs, inits, macs, origins=origin + [None] * (len(outs) - 1), **extra)


def _whole_inputs(em, p, k: int) -> bool:
    """Whether device k holds every split input of elementwise node p whole (and one at least)."""
    split = [s for s in p.input if s and not em.info.is_const(s) and isinstance(em.lay.layouts[s], Split)]
    return bool(split) and all((s, k) in em.whole_on for s in split)


def _local_whole(em, nd, p, k: int, name: str) -> None:
    """An elementwise node on the whole tensors device k holds (the model's own constants): its
    output whole there too, and k's piece taken from it."""
    out = nd.outputs[0]
    lo: Split = em.lay.layouts[out]
    ins, inits = [], []
    for s in p.input:
        if not s:
            ins.append("")
        elif em.info.is_const(s):
            ins.append(s)
            inits.append(em.copy_const(s))
        elif isinstance(em.lay.layouts[s], Split):
            ins.append(em.whole_on[(s, k)])
        else:
            ins.append(em.deliver(s, k))
    whole = em.fresh(f"{out}@{em.dev[k]}:whole")
    em.op(k, p, ins, [whole] + [""] * (len(p.output) - 1), inits, nd.macs,
            origins=[(out, None, None)] + [None] * (len(p.output) - 1))
    em.whole_on[(out, k)] = whole
    em.piece[(out, k)] = em.take(k, whole, out, lo.of(k), lo.axis, np.arange(len(lo.owner)), out=name)


def _regroup(em, nd, k: int, rows: np.ndarray, name: str, origin, macs: float) -> None:
    """A Reshape splitting the split axis into (groups, inner) or merging (groups, inner) back, on
    device k's groups: the target shape's entry for the split axis becomes the device's count."""
    rule = em.lay.rules[nd.index]
    p = em.info.protos[nd.name]
    x, target = p.input[0], p.input[1]
    a = rule.axis
    if rule.link == "group":  # rows are groups: read their channels
        chans = (rows[:, None] * rule.inner + np.arange(rule.inner)[None, :]).reshape(-1)
    else:  # rows are channels of merged groups: read those groups
        chans = np.unique(rows // rule.inner)
    xin = em.deliver(x, k, chans, a)
    inits = []
    if em.info.is_const(target):
        shape = em.info.array(target).astype(np.int64).copy()
        shape[a] = len(rows)
        tname, init = em.const(shape, f"{target}@{em.dev[k]}")
        inits.append(init)
    else:
        full = em.deliver(target, k)
        r = int(em.info.shape(target)[0])
        mask = np.ones(r, dtype=np.int64)
        mask[a] = 0
        add = np.zeros(r, dtype=np.int64)
        add[a] = len(rows)
        masked, tname = em.fresh(f"{target}@{em.dev[k]}:masked"), em.fresh(f"{target}@{em.dev[k]}:local")
        mn, mi = em.const(mask, f"{tname}:mask")
        an, ai = em.const(add, f"{tname}:add")
        em.op(k, "Mul", [full, mn], [masked], [mi], origins=[(target, None, None)])
        em.op(k, "Add", [masked, an], [tname], [ai], origins=[(target, None, None)])
    em.op(k, p, [xin, tname], [name], inits, macs, origins=origin)

"""LayerNormalization over the split axis: per-token statistics cross devices, not the features.

Device k holds channels C_k of x. For each token (every position outside the normalised axes) it
computes the mean m_k and the variance v_k of its own n_k values, sends the pair (two numbers per
token) to every other device holding channels of x, and combines all the pairs it has with Chan's
parallel formula

    n = Σ n_j        m = Σ (n_j / n) m_j        v = Σ (n_j / n) (v_j + (m_j - m)²)

before normalising its own channels with its slice of scale and bias. Each part's variance is taken
around its own mean (two passes over values the device already holds), so the combination does not
suffer the cancellation of Σx² - n m²: the result matches onnxruntime's LayerNormalization to float32
rounding. The output keeps the input's partition.

Where every device reads all of the output anyway (the Q/K/V and MLP-up projections after a
transformer's LayerNorms, with dense weights), the statistics would be a round of messages of their
own before the output's channels cross in the next one. There each device instead receives the
*input's* other channels (as many bytes as the output's, and no statistics) and normalises the whole
tensor itself, exactly as one session would: one exchange instead of two (docs/channel.md,
"LayerNorm over split channels"). `norms_to_gather` finds those LayerNorms from what the first pass
of emission asked for.

The emitting functions take `em`, the channel Emitter (_emitter.py) that calls them; it is not
imported here, so that the emitter and its helpers do not import each other.
"""

from __future__ import annotations


import numpy as np

from edgepart.packager.strategies.channel._ops import aligned, attr



def emit_norm(em, nd) -> None:
    """A LayerNormalization split like its input: statistics exchanged, each device normalises its channels."""
    info, lay = em.info, em.lay
    p = info.protos[nd.name]
    x, out = p.input[0], nd.outputs[0]
    lo = lay.layouts[out]
    a, c = lo.axis, len(lo.owner)
    shape = info.shapes[x]
    rank = len(shape)
    axes = tuple(range(attr(p, "axis", -1) % rank, rank))
    other = int(np.prod([shape[i] for i in axes if i != a], dtype=np.int64))
    dtype = np.dtype(info.dtypes[x])
    devs = [k for k in range(lay.n_devices) if lo.of(k).size]
    ones = tuple(1 for _ in axes)

    def stat_origin(last: int):  # x's shape with the normalised axes 1, the last one `last`
        return [(x, axes, ones[:-1] + (last,))]

    if len(devs) > 1 and out in em.gather_norm:
        _emit_gathered(em, nd, p, devs)
        return
    pieces, stats = {}, {}
    for k in devs:
        rows = lo.of(k)
        xk = em.deliver(x, k, rows, a)
        pieces[k] = xk
        if len(devs) == 1:
            break
        base = f"{x}@{em.dev[k]}"
        mean, diff, sq, var, st = (em.fresh(f"{base}:{s}") for s in ("mean", "diff", "sq", "var", "stats"))
        _reduce_mean(em, k, xk, axes, mean, stat_origin(1))
        em.op(k, "Sub", [xk, mean], [diff], origins=[(x, a, len(rows))])
        em.op(k, "Mul", [diff, diff], [sq], origins=[(x, a, len(rows))])
        _reduce_mean(em, k, sq, axes, var, stat_origin(1))
        em.op(k, "Concat", [mean, var], [st], origins=stat_origin(2), axis=rank - 1)
        stats[k] = st
        for j in devs:
            if j != k:
                em.route(st, k, j)

    counts = np.array([lo.of(j).size * other for j in devs], dtype=np.float64)
    weights = (counts / counts.sum()).astype(dtype)
    eps = np.array(attr(p, "epsilon", 1e-5), dtype=dtype)
    for k in devs:
        rows = lo.of(k)
        name = em.fresh(f"{out}@{em.dev[k]}")
        em.piece[(out, k)] = name
        origin = [(out, a, len(rows))]
        macs = nd.macs * len(rows) / c
        ins, inits = [pieces[k]], []
        for s in p.input[1:3]:
            if not s:
                ins.append("")
                inits.append([])
                continue
            whole, own = info.array(s), []
            idx = aligned(whole.shape, rank, a)
            per_channel = idx >= 0 and whole.shape[idx] == c and c != 1
            ins.append(em.sliced(s, np.take(whole, rows, axis=idx), whole, k, own) if per_channel
                       else _copy(em, s, own))
            inits.append(own)
        if len(devs) == 1:  # every channel on one device: the op as it is
            em.op(k, p, ins, [name] + [""] * (len(p.output) - 1), sum(inits, []), macs,
                  origins=origin + [None] * (len(p.output) - 1))
            continue
        base = f"{out}@{em.dev[k]}"
        allst, means, variances, mean = (em.fresh(f"{base}:{s}") for s in ("allstats", "means", "vars", "mean"))
        em.op(k, "Concat", [stats[j] for j in devs], [allst], origins=stat_origin(2 * len(devs)), axis=rank - 1)
        mi, mi_init = em.const(np.arange(0, 2 * len(devs), 2, dtype=np.int64), f"{base}:mean_idx")
        vi, vi_init = em.const(np.arange(1, 2 * len(devs), 2, dtype=np.int64), f"{base}:var_idx")
        em.op(k, "Gather", [allst, mi], [means], [mi_init], origins=stat_origin(len(devs)), axis=rank - 1)
        em.op(k, "Gather", [allst, vi], [variances], [vi_init], origins=stat_origin(len(devs)), axis=rank - 1)
        wn, w_init = em.const(weights, f"{base}:weights")
        wmeans, dm, dm2, spread, wspread, var, veps, std, cen, normed, scaled = (em.fresh(f"{base}:{s}") for s in (
            "wmeans", "dm", "dm2", "spread", "wspread", "var", "var_eps", "std", "centred", "normed", "scaled"))
        parts = stat_origin(len(devs))
        em.op(k, "Mul", [means, wn], [wmeans], [w_init], origins=parts)
        _reduce_sum(em, k, wmeans, rank - 1, mean, stat_origin(1))
        em.op(k, "Sub", [means, mean], [dm], origins=parts)
        em.op(k, "Mul", [dm, dm], [dm2], origins=parts)
        em.op(k, "Add", [variances, dm2], [spread], origins=parts)
        em.op(k, "Mul", [spread, wn], [wspread], [w_init], origins=parts)
        _reduce_sum(em, k, wspread, rank - 1, var, stat_origin(1))
        en, e_init = em.const(eps, f"{base}:eps")
        em.op(k, "Add", [var, en], [veps], [e_init], origins=stat_origin(1))
        em.op(k, "Sqrt", [veps], [std], origins=stat_origin(1))
        em.op(k, "Sub", [pieces[k], mean], [cen], origins=origin)
        em.op(k, "Div", [cen, std], [normed], origins=origin, macs=macs)
        if ins[2:] and ins[2]:
            em.op(k, "Mul", [normed, ins[1]], [scaled], inits[0], origins=origin)
            em.op(k, "Add", [scaled, ins[2]], [name], inits[1], origins=origin)
        else:
            em.op(k, "Mul", [normed, ins[1]], [name], inits[0], origins=origin)


def norms_to_gather(em) -> frozenset[str]:
    """The outputs of `norm` LayerNorms that every device holding channels of them receives whole
    from every other (from a first, collecting pass of emission): there sending the input is one
    exchange fewer and no more bytes."""
    lay, out = em.lay, set()
    for nd, dec in zip(lay.graph.nodes, lay.decisions):
        if dec.kind != "norm":
            continue
        y = nd.outputs[0]
        lo = lay.layouts[y]
        devs = [k for k in range(lay.n_devices) if lo.of(k).size]
        if len(devs) > 1 and all(set(lo.of(j).tolist()) <= em.demand.get((y, j, k), set())
                                 for k in devs for j in devs if j != k):
            out.add(y)
    return frozenset(out)


def _emit_gathered(em, nd, p, devs: list[int]) -> None:
    """Each device gathers the whole input, normalises it as the model does, and keeps the whole
    output for its readers (collect_channels takes their channels from it) and its own piece."""
    x, out = p.input[0], nd.outputs[0]
    lo = em.lay.layouts[out]
    c = len(lo.owner)
    for k in devs:
        xk = em.full(x, k)
        inits: list = []
        ins = [xk] + [(_copy(em, s, inits) if s else "") for s in p.input[1:]]
        whole = em.fresh(f"{out}@{em.dev[k]}:whole")
        em.op(k, p, ins, [whole] + [""] * (len(p.output) - 1), inits, nd.macs,
              origins=[(out, None, None)] + [None] * (len(p.output) - 1))
        em.whole_on[(out, k)] = whole
        em.piece[(out, k)] = em.take(k, whole, out, lo.of(k), lo.axis, np.arange(c), out=em.fresh(f"{out}@{em.dev[k]}"))


def _copy(em, name: str, inits: list) -> str:
    inits.append(em.copy_const(name))
    return name


def _reduce_mean(em, k: int, x: str, axes, out: str, origins) -> None:
    _reduce(em, k, "ReduceMean", x, list(axes), out, origins)


def _reduce_sum(em, k: int, x: str, axis: int, out: str, origins) -> None:
    _reduce(em, k, "ReduceSum", x, [axis], out, origins)


def _reduce(em, k: int, op: str, x: str, axes: list[int], out: str, origins) -> None:
    """A keepdims reduction, with `axes` as an attribute or (ReduceSum from opset 13, the others from
    18) as an input."""
    if em.info.opset >= (13 if op == "ReduceSum" else 18):
        an, init = em.const(np.array(axes, dtype=np.int64), f"{out}:axes")
        em.op(k, op, [x, an], [out], [init], origins=origins, keepdims=1)
    else:
        em.op(k, op, [x], [out], origins=origins, axes=axes, keepdims=1)

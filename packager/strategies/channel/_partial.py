"""Partial sums per device pair: a contraction's partial products cross devices instead of its inputs.

Device k computes y[C_k] = Σ_j W[C_k, U_kj] · x_j[U_kj]. By default each device j sends k the input
channels U_kj that k's rows of W read. Device j can instead compute the partial product
W[C_k, U_kj] · x_j[U_kj] itself and send that: |C_k| channels of y rather than |U_kj| channels of x.
This is exact (k sums the partial products with its own), and fewer bytes whenever k has fewer output
channels than it would read from j — a down-projection (MiniLM's MLP 1536 -> 384, EfficientNet's 1x1
project convs), never an expansion.

The choice is made per (receiver, sender) pair and per input tensor: when several split contractions
read the same x (Q, K and V read one LayerNorm output), k receives x's channels from j once for all
of them, so partial sums must beat that one message, not one per contraction. When anything else
reads x's channels across devices (an op that is not a split contraction, a model output), x crosses
anyway and partial sums are never chosen for it.

The emitting functions take `em`, the channel Emitter (_emitter.py) that calls them; it is not
imported here, so that the emitter and its helpers do not import each other.
"""

from __future__ import annotations


import numpy as np

from edgepart.packager.strategies.channel._layout import Split
from edgepart.packager.strategies.channel._ops import attr

# -- emission ------------------------------------------------------------------------------------------

def emit_partials(em, nd, k: int, rows: np.ndarray, cols: np.ndarray, senders, origin):
    """Partial products of output channels `rows` on each sender, routed to k. Returns the input
    channels k still reads itself and the names of the partial products on k."""
    owner = em.lay.layouts[em.info.contraction(nd.name).x].owner[cols]
    sums = []
    for j in senders:
        if np.any(owner == j):
            name = em.fresh(f"{nd.outputs[0]}@{em.dev[j]}>{em.dev[k]}:partial")
            em.product(nd, j, rows, cols[owner == j], name, origin, bias=False)
            em.route(name, j, k)
            em.partial_of[(nd.outputs[0], j, k)] = name
            sums.append(name)
    return cols[~np.isin(owner, list(senders))], sums


def emit_sum(em, nd, k: int, rows: np.ndarray, parts: list[str], out: str, origin) -> None:
    """The partial products of `rows` summed on k, plus their bias."""
    c = em.info.contraction(nd.name)
    p = em.info.protos[nd.name]
    if c.b is None:
        em.op(k, "Sum", parts, [out], origins=[origin])
        return
    b = em.info.array(c.b)
    if p.op_type == "Conv":
        bias = b[rows].reshape([len(rows)] + [1] * (len(em.info.shapes[nd.outputs[0]]) - 2))
    else:  # Gemm: C broadcast to [M, N], scaled by beta
        n_out = c.used.shape[0]
        bk = b[..., rows] if b.ndim >= 1 and b.shape[-1] == n_out and n_out > 1 else b
        bias = (bk * attr(p, "beta", 1.0)).astype(b.dtype)
    total = em.fresh(f"{nd.outputs[0]}@{em.dev[k]}:sum")
    bn, bi = em.const(bias, f"{nd.outputs[0]}@{em.dev[k]}:bias")
    em.op(k, "Sum", parts, [total], origins=[origin])
    em.op(k, "Add", [total, bn], [out], [bi], origins=[origin])


# -- both halves (2 devices) ---------------------------------------------------------------------------

def both_halves_candidates(lay, demand) -> frozenset[str]:
    """Contractions over exactly 2 devices that send each other partial sums both ways, and whose
    output, or an elementwise result of it, each device then receives whole from the other (from
    the `demand` of a collecting pass): there sending both halves at once costs no extra bytes."""
    from edgepart.packager.strategies.channel._ops import ELEMENTWISE

    if lay.n_devices != 2:
        return frozenset()
    g, info = lay.graph, lay.info
    out = set()
    for nd, d in zip(g.nodes, lay.decisions):
        lo = lay.layouts[nd.outputs[0]]
        if (d.kind != "contract" or set(d.partial) != {(0, 1), (1, 0)} or not isinstance(lo, Split)
                or not all(lo.of(k).size for k in (0, 1))):
            continue
        seen, todo = set(), [nd.outputs[0]]
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            lt = lay.layouts[t]
            if isinstance(lt, Split) and all(set(lt.of(j).tolist()) <= demand.get((t, j, 1 - j), set()) for j in (0, 1)):
                out.add(nd.outputs[0])
                break
            for i in info.consumers.get(t, []):
                c = g.nodes[i]
                if lay.decisions[i].kind == "local" and c.op_type in ELEMENTWISE:
                    todo.append(c.outputs[0])
    return frozenset(out)


def emit_both_halves(em, nd) -> None:
    """On 2 devices with partial sums both ways, device k also sends j its own product of k's rows
    (in the message that carries j's partial sums: the same step). j already computed its partial
    for k's rows, so it sums k's channels of y too and holds y whole: the all-gather of y that its
    readers would need next is not needed. As many bytes as partial sums then the all-gather, one
    exchange round fewer (docs/channel.md, "Partial sums per device pair")."""
    y = nd.outputs[0]
    lo = em.lay.layouts[y]
    for j in (0, 1):
        k = 1 - j
        own, part = em.own_of.get((y, k)), em.partial_of.get((y, j, k))
        if own is None or part is None or (y, j) not in em.piece:
            return  # (a device with no own product: no whole output, readers gather as usual)
    for j in (0, 1):
        k = 1 - j
        own, part = em.own_of[(y, k)], em.partial_of[(y, j, k)]
        em.route(own, k, j)
        theirs = em.fresh(f"{y}@{em.dev[j]}:of{em.dev[k]}")
        em.op(j, "Sum", [own, part], [theirs], origins=[(y, lo.axis, len(lo.of(k)))])
        both = em.fresh(f"{y}@{em.dev[j]}:both")
        em.op(j, "Concat", [em.piece[(y, j)], theirs], [both], origins=[(y, None, None)], axis=int(lo.axis))
        order = np.concatenate([lo.of(j), lo.of(k)])
        em.whole_on[(y, j)] = em.take(j, both, y, np.arange(len(lo.owner)), lo.axis, order)

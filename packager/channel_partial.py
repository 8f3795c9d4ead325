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
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .channel_layout import Decision, Split
from .channel_ops import ModelInfo, attr

if TYPE_CHECKING:
    from .channel_emit import _Emitter


def plan_partial_sums(info: ModelInfo, rules, layouts, decisions, n: int) -> list[Decision]:
    """`decisions` with `partial` set on the split contractions where partial sums move fewer bytes."""
    graph = info.graph
    out = list(decisions)
    readers: dict[str, list[int]] = {}
    for nd, d in zip(graph.nodes, decisions):
        c = info.contraction(nd.name)
        if d.kind == "contract" and c is not None:
            lx = layouts[c.x]
            if isinstance(lx, Split) and lx.axis == c.in_axis:
                readers.setdefault(c.x, []).append(nd.index)
    for x, idxs in readers.items():
        if _read_elsewhere(info, rules, layouts, decisions, x, set(idxs)):
            continue
        lx = layouts[x]
        bpc_x = info.bytes_per_channel(x, lx.axis)
        pairs: dict[int, list[tuple[int, int]]] = {i: [] for i in idxs}
        saved: dict[int, float] = {i: 0.0 for i in idxs}
        for k in range(n):
            for j in range(n):
                if j == k:
                    continue
                received: set[int] = set()
                partial, users = 0.0, []
                for i in idxs:
                    nd = graph.nodes[i]
                    c = info.contraction(nd.name)
                    ly = layouts[nd.outputs[0]]
                    rows = ly.of(k)
                    used = np.flatnonzero(c.used[rows].any(0) & (lx.owner == j)) if rows.size else ()
                    if len(used):
                        received.update(np.asarray(used).tolist())
                        partial += info.bytes_per_channel(nd.outputs[0], ly.axis) * len(rows)
                        users.append(i)
                if received and partial < bpc_x * len(received):
                    for i in users:
                        pairs[i].append((k, j))
                        saved[i] += (bpc_x * len(received) - partial) / len(users)
        for i in idxs:
            if pairs[i]:
                out[i] = replace(out[i], partial=tuple(pairs[i]), note=(
                    f"partial sums instead of input channels for {len(pairs[i])} device pair(s) "
                    f"(receiver, sender) {list(pairs[i])}: {int(round(saved[i]))} B fewer"))
    return out


def _read_elsewhere(info: ModelInfo, rules, layouts, decisions, x: str, contractions: set[int]) -> bool:
    """Whether anything but the split contractions reads channels of x held on another device."""
    if x in info.model_outputs:
        return True
    lx = layouts[x]
    for i in info.consumers.get(x, []):
        if i in contractions or rules[i].kind == "rep":
            continue
        nd = info.graph.nodes[i]
        lo = layouts.get(nd.outputs[0])
        same = (decisions[i].kind in ("local", "norm") and rules[i].link == "same" and x in rules[i].ins
                and isinstance(lo, Split) and lo.axis == lx.axis and np.array_equal(lo.owner, lx.owner))
        if not same:  # it may read channels from other devices: x crosses anyway
            return True
    return False


# -- emission ------------------------------------------------------------------------------------------

def emit_partials(em: "_Emitter", nd, k: int, rows: np.ndarray, cols: np.ndarray, senders, origin):
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


def emit_sum(em: "_Emitter", nd, k: int, rows: np.ndarray, parts: list[str], out: str, origin) -> None:
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
    from .channel_ops import ELEMENTWISE

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


def emit_both_halves(em: "_Emitter", nd) -> None:
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

"""Low-rank cross-device blocks: a restructuring that sends r numbers where pruning sends r channels.

In a channel split, device k computes y[C_k] = W[C_k, U_k] x[U_k] + sum_j W[C_k, U_j] x[U_j], and
the dense split ships every x[U_j] from device j to k. Pruning keeps a subset of those input
channels. This keeps a rank-r projection of them instead: device j computes z_kj = B_kj x[U_j]
(r channels) and sends that; device k computes y[C_k] = W'[C_k, U_k] x[U_k] + sum_j A_kj z_kj.
A kept channel is the special case of a projection on one axis, and r = |C_k| is the partial product
W[C_k, U_j] x[U_j] itself (exact), so this never needs more bytes than pruning or partial sums.

    y = Op(x, W)   becomes   y_own = Op(x, W with every cross-device block zero)   (bias stays here)
                             z     = Op1x1(x, B)   B's rows for pair (k<-j) read only j's channels;
                                                   z's channels for (k<-j) are placed on device j
                             y     = y_own + Op1x1(z, A)   A's rows C_k read only pairs (k<-j)

Plain Conv/Gemm/MatMul nodes: the channel compiler needs nothing new (z's partition puts each
pair's channels on its sender, so computing z is local and only z crosses).

How, on calibration inputs:
- B: the activation-aware best rank-r approximation of each cross-device block (SVD of
  chol(cov x_j)^T W_kj^T), so it keeps what the block does to real inputs, not its largest weights.
  Layers reading the same tensor (attention's Q, K, V) share one projection per pair.
- r: one budget for the whole model. By default (allocation="error") the smallest ranks that leave
  the same fraction of every block's output energy out (singular values squared, each layer's output
  normalised), that fraction the smallest that fits, found by bisection; allocation="energy" is
  greedy by energy recovered per byte (measured worse on MiniLM and EfficientNet-Lite0).
- refit: layer by layer in topological order, y's rows for device k are refitted by least squares
  on [own inputs, received z] of the restructured model so far, against the original outputs, so
  each layer corrects the errors of those before it.

Eligible: Conv 1x1 (stride 1, no padding, group 1), Gemm and MatMul with constant weights, decided
`contract` by the compiler, whose input is split or held whole by one device. Other split layers
keep their dense routes and count against the budget as they are.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepart.errors import ModelError, PlanningError

from edgepart.packager.strategies.channel.compiler import channel_bytes
from edgepart.packager.strategies.channel._layout import BytesReport, plan_layout
from edgepart.packager.strategies.channel._ops import ModelInfo, attr
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.channel.restructure.activations import Layer, set_owners, sample_positions, collect, find_layers, get_weights

log = logging.getLogger("edgepart")


@dataclass(frozen=True)
class GroupReport:
    """One group of layers reading the same tensor: its pairs' ranks and the layers' errors."""

    input: str
    layers: tuple[str, ...]
    bytes_per_channel: float
    dense_bytes: int  # the dense split's bytes for this input (each pair: the sender's channels)
    used_bytes: int  # sum of ranks x bytes per channel
    ranks: tuple[tuple[int, int, int, int], ...]  # (dst, src, rank, channels the dense split sends)
    error: tuple[tuple[float, float], ...]  # per layer: relative output error before / after the refit


@dataclass(frozen=True)
class LowRankReport:
    """Like RePurpose's SparseReport (same `layers` rows, `table`, `to_dict`), plus the groups' ranks."""

    n_devices: int
    comm_budget: float
    steps: tuple[str, ...]
    layers: tuple  # LayerReport per restructured layer: error_pruned = before the refit, error = after
    groups: tuple[GroupReport, ...]
    bytes: BytesReport  # channel_bytes of the ORIGINAL model (dense) ...
    used_bytes: int  # ... and what the restructured model's split layers send as compiled (sent_bytes)
    replicated: object = None  # replicate.ReplicateReport when the first layers were replicated first

    @property
    def dense_bytes(self) -> int:
        return self.bytes.dense_bytes

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.used_bytes, 1)

    def to_dict(self) -> dict:
        return {"n_devices": self.n_devices, "comm_budget": self.comm_budget, "steps": list(self.steps),
                "dense_bytes": self.dense_bytes, "used_bytes": self.used_bytes, "ratio": self.ratio,
                "layers": [x.__dict__ for x in self.layers],
                "groups": [{**g.__dict__, "ranks": [list(r) for r in g.ranks], "error": list(g.error),
                            "layers": list(g.layers)} for g in self.groups],
                "replicated": self.replicated.to_dict() if self.replicated is not None else None}

    def table(self) -> str:
        lines = [f"{'input':<44} {'layers':>6} {'dense B':>9} {'used B':>9} {'ratio':>6} {'max rel err':>11}"]
        for g in self.groups:
            lines.append(f"{g.input[-44:]:<44} {len(g.layers):>6} {g.dense_bytes:>9} {g.used_bytes:>9} "
                         f"{g.dense_bytes / max(g.used_bytes, 1):>5.1f}x {max((e[1] for e in g.error), default=0):>11.4f}")
        lines.append(f"{'total (all split layers)':<44} {'':>6} {self.dense_bytes:>9} {self.used_bytes:>9} "
                     f"{self.ratio:>5.1f}x")
        return "\n".join(lines)


def _eligible(L: Layer) -> bool:
    if L.kind != "contract" or L.in_owner is None or L.out_owner is None or L.w_shape[2:] not in ((), (1, 1)):
        return False
    if L.op == "Conv":
        p = L.proto
        return (list(attr(p, "strides", [1, 1])) == [1, 1] and not any(attr(p, "pads", [0, 0, 0, 0]))
                and attr(p, "auto_pad", "NOTSET") in ("NOTSET", "VALID") and attr(p, "group", 1) == 1)
    return L.op == "MatMul" or (L.op == "Gemm" and not attr(L.proto, "transA", 0))


def _projection(Xj: np.ndarray, Wt: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(P [c_j, m], s [m]): the activation-aware best rank-r projections of the block Wt [c_j, rows]
    for every r (the first r columns of P), and the output energy each one recovers, descending."""
    S = Xj.T @ Xj / max(len(Xj), 1)
    S += np.eye(len(S)) * (eps * max(np.trace(S) / max(len(S), 1), 1e-30))
    C = np.linalg.cholesky(S)  # S = C C^T: ||Xj G||^2 ~ ||C^T G||^2
    U, s, _ = np.linalg.svd(C.T @ Wt, full_matrices=False)
    P = np.linalg.solve(C.T, U)  # z = Xj P spans the best rank-r approximation of Xj Wt
    return P, s * s


def _lstsq(F: np.ndarray, Y: np.ndarray, ridge: float) -> np.ndarray:
    G = F.T @ F
    G += np.eye(len(G)) * (ridge * max(np.trace(G) / max(len(G), 1), 1e-30))
    return np.linalg.solve(G, F.T @ Y)


def lowrank(model: onnx.ModelProto, calib: Mapping[str, np.ndarray], n_devices: int, comm_budget: float, *,
            partition: Mapping[str, np.ndarray] | None = None, max_positions: int = 16384, batch_size: int = 64,
            ridge: float = 1e-6, refit: bool = True, allocation: str = "error", input_shapes: Mapping[str, tuple[int, ...]] | None = None,
            seed: int = 0, reference: BytesReport | None = None):
    """Restructure `model` so its channel split over `n_devices` sends at most `comm_budget` x the
    dense split's bytes between devices, every cross-device block replaced by a low-rank projection
    computed by the sender. Returns Repurposed(model, partition, LowRankReport).

    `reference`: the dense split the budget is a fraction of, when `model` was already restructured
    (replicate.py); by default `model`'s own."""
    from edgepart.packager.strategies.channel.restructure.results import LayerReport, Repurposed

    if not 0.0 <= comm_budget <= 1.0:
        raise PlanningError(f"comm_budget is a fraction of the dense channel split's bytes, in 0..1; got {comm_budget}.")
    if allocation not in ("error", "energy"):
        raise PlanningError(f"Unknown allocation {allocation!r}; choose 'error' or 'energy'.")
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    missing = [n for n in names if n not in calib]
    if missing:
        raise ModelError(f"The calibration inputs lack {missing}; give a batch [N, ...] for each model input.")
    n_cal = len(next(iter(calib.values())))
    original = model
    model = copy.deepcopy(model)
    shapes = dict(input_shapes or {k: (1,) + tuple(np.asarray(v).shape[1:]) for k, v in calib.items()})
    graph = analyse(model, shapes)
    info = ModelInfo(model, graph)
    lay = plan_layout(model, graph, n_devices, partition, info)
    # every split tensor's partition, explicit, so adding layers cannot move a default
    part = {t: lay.layouts[t].owner for t in _partitionable(model, graph, info) if hasattr(lay.layouts.get(t), "owner")}
    part.update({k: np.asarray(v) for k, v in (partition or {}).items()})
    layers = find_layers(model, graph, n_devices, info)
    set_owners(model, graph, n_devices, part, info, layers)
    dense = channel_bytes(graph, part, model, n_devices)
    ref = reference or dense
    by_x: dict[str, list[Layer]] = {}
    outputs = {o.name for o in model.graph.output}
    for L in layers:
        if _eligible(L) and L.y not in outputs:
            by_x.setdefault(L.x, []).append(L)
    groups = list(by_x.items())
    eligible = {L.node for _, g in groups for L in g}
    fixed = BytesReport(tuple(lb for lb in dense.layers if lb.node not in eligible)).sent_bytes
    target = comm_budget * ref.dense_bytes - fixed
    if target < 0:
        raise PlanningError(f"The split layers this cannot restructure already send {fixed:,} bytes, more than "
                            f"comm_budget {comm_budget} x {ref.dense_bytes:,}; raise the budget.")

    rng = np.random.default_rng(seed)
    flat = [L for _, g in groups for L in g]
    idx = sample_positions(flat, n_cal, max_positions, rng)
    # positions shared by a group (one input tensor): the first layer's
    for _, g in groups:
        for L in g[1:]:
            idx[L.node] = idx[g[0].node]

    # pass 1: on the original model, each (group, pair)'s energies -> ranks under one budget
    ys: dict[str, np.ndarray] = {}
    wts = {L.node: get_weights(original, L)[0][:, :, 0] for L in flat}
    items = []  # (gain per byte, group index, pair, rank)
    energies: dict[tuple[int, int, int], tuple[np.ndarray, float]] = {}  # (energies, the rows' total)
    # every group's samples in one pass over the calibration inputs: one session, not one per group
    # (MiniLM has dozens of groups, and building a session costs more than running it)
    firsts = {g[0].node for _, g in groups}
    got = collect(original, calib, flat, idx, want_x=True, want_y=True, batch_size=batch_size, x_of=firsts) if flat else {}
    for gi, (x, g) in enumerate(groups):
        X = got[g[0].node].X[:, :, 0].astype(np.float64)
        for L in g:
            ys[L.node] = got[L.node].Y
        bpc = g[0].bytes_per_channel
        for k, j, rows, cols in _pairs(g, n_devices):
            Wt = _stacked(g, k, cols, ys, wts)
            _, e = _projection(X[:, cols], Wt)
            energies[(gi, k, j)] = (e, float(Wt.shape[1]))  # each normalised row carries energy ~1 per sample
            items += [(float(ei) / bpc, gi, k, j) for ei in e]
        del X
    del got
    rank = _allocate(items, energies, groups, target, allocation)

    # pass 2: restructure group by group, refitting on the restructured model's own inputs
    reports = []
    renamed: dict[str, str] = {}  # a layer's output -> the sum its readers now read
    for gi, (x, g) in enumerate(groups):
        for L in g:
            L.x = renamed.get(L.x, L.x)
        X = collect(model, calib, g[:1], {g[0].node: idx[g[0].node]}, want_y=False, batch_size=batch_size)[g[0].node].X
        X = X[:, :, 0].astype(np.float64)
        proj: dict[tuple[int, int], np.ndarray] = {}
        for k, j, rows, cols in _pairs(g, n_devices):
            r = rank[(gi, k, j)]
            if r:
                P, _ = _projection(X[:, cols], _stacked(g, k, cols, ys, wts))
                proj[(k, j)] = P[:, :r]
        errors = _rewrite(model, g, proj, X, ys, n_devices, part, ridge, refit, renamed)
        bpc = g[0].bytes_per_channel
        dense_g = sum(int(round(bpc * len(cols))) for _, _, _, cols in _pairs(g, n_devices))
        ranks = tuple((k, j, rank[(gi, k, j)], len(cols)) for k, j, _, cols in _pairs(g, n_devices))
        reports.append(GroupReport(x, tuple(L.node for L in g), bpc, dense_g,
                                   int(round(bpc * sum(r[2] for r in ranks))), ranks, tuple(errors)))
    onnx.checker.check_model(model)
    used = channel_bytes(analyse(model, shapes), part, model, n_devices).sent_bytes
    rows = []
    per_layer = {lb.node: lb for lb in dense.layers}
    for (x, g), gr in zip(groups, reports):
        for L, (e0, e1) in zip(g, gr.error):
            lb = per_layer.get(L.node)
            rows.append(LayerReport(L.node, L.y, L.in_channels, L.out_channels, lb.dense_bytes if lb else 0,
                                    int(round(gr.used_bytes / len(g))), float("nan"), float("nan"), e0, e1))
    steps = ("lowrank", "adjust") if refit else ("lowrank",)
    return Repurposed(model, part, LowRankReport(n_devices, comm_budget, steps, tuple(rows), tuple(reports), ref, used))


def _partitionable(model, graph, info) -> list[str]:
    from edgepart.packager.strategies.channel._layout import partitionable

    return list(partitionable(model, graph, info))


def _allocate(items, energies, groups, target: float, allocation: str) -> dict[tuple[int, int, int], int]:
    """The rank of every (group, dst, src) under `target` bytes.

    energy  greedy over singular directions by output energy recovered per byte (most energy kept)
    error   the same relative error in every block: the smallest ranks leaving at most a fraction eps
            of each block's output energy out, eps the smallest that fits (bisection)"""
    bpc = {gi: g[1][0].bytes_per_channel for gi, g in enumerate(groups)}
    if allocation == "energy":
        rank = {key: 0 for key in energies}
        spent = 0.0
        for _, gi, k, j in sorted(items, key=lambda t: -t[0]):
            if spent + bpc[gi] <= target + 1e-9:
                rank[(gi, k, j)] += 1
                spent += bpc[gi]
        return rank

    def ranks(eps: float) -> dict:
        out = {}
        for key, (e, total) in energies.items():
            left = np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]]) / max(total, 1e-30)  # left[r]: energy past rank r
            out[key] = int(np.argmax(left <= eps))
        return out

    def cost(r: dict) -> float:
        return sum(bpc[key[0]] * v for key, v in r.items())

    lo, hi = 1e-12, 1e3
    if cost(ranks(lo)) <= target:
        return ranks(lo)
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        if cost(ranks(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return ranks(hi)


def _pairs(g: list[Layer], n: int):
    """(dst k, src j, k's output rows of the first layer, j's input channels) for each j != k that
    holds channels of the group's input and k computes rows of some layer of the group."""
    L0 = g[0]
    for k in range(n):
        if not any((L.out_owner == k).any() for L in g):
            continue
        for j in range(n):
            cols = np.flatnonzero(L0.in_owner == j)
            if j != k and len(cols):
                yield k, j, np.flatnonzero(L0.out_owner == k), cols


def _stacked(g: list[Layer], k: int, cols: np.ndarray, ys: dict, wts: dict) -> np.ndarray:
    """[|cols|, rows]: the group's blocks W[C_k, cols]^T side by side, each layer's outputs
    normalised by their rms so every layer counts the same."""
    blocks = []
    for L in g:
        W = wts[L.node]
        rows = np.flatnonzero(L.out_owner == k)
        if len(rows):
            rms = np.sqrt(np.mean(np.square(ys[L.node], dtype=np.float64))) or 1.0
            blocks.append(W[rows][:, cols].T / rms)
    return np.concatenate(blocks, axis=1)


def _rewrite(model: onnx.ModelProto, g: list[Layer], proj: dict, X: np.ndarray, ys: dict, n: int,
             part: dict, ridge: float, refit: bool, renamed: dict) -> list[float]:
    """Replace the group's layers by own-block + projection + expansion; returns each layer's error."""
    pairs = sorted(proj)  # (k, j)
    R = sum(proj[p].shape[1] for p in pairs)
    C_in = g[0].in_channels
    Bfull = np.zeros((R, C_in))
    zowner = np.zeros(R, dtype=np.int64)
    offs, o = {}, 0
    for (k, j) in pairs:
        P = proj[(k, j)]
        cols = np.flatnonzero(g[0].in_owner == j)
        Bfull[o:o + P.shape[1], cols] = P.T
        zowner[o:o + P.shape[1]] = j
        offs[(k, j)] = (o, o + P.shape[1])
        o += P.shape[1]
    Z = X @ Bfull.T if R else None
    errors = []
    inits = {i.name: i for i in model.graph.initializer}
    z_name = None
    if R:
        z_name = _add_layer(model, g[0], f"{g[0].x}:lowrank", Bfull, inits)
        part[z_name] = zowner
    for L in g:
        W, b = get_weights(model, L)
        W = W[:, :, 0]
        Y = ys[L.node].astype(np.float64)
        fits = {}  # "svd": own weights kept, each block's expansion fitted in z; "refit": all rows refitted
        for how in ("svd", "refit") if refit else ("svd",):
            Wn, A, bn = np.zeros_like(W), np.zeros((L.out_channels, R)), None if b is None else b.copy()
            for k in range(n):
                rows = np.flatnonzero(L.out_owner == k)
                if not len(rows):
                    continue
                own = np.flatnonzero(L.in_owner == k)
                srcs = [j for j in range(n) if (k, j) in offs]
                zc = np.concatenate([np.arange(*offs[(k, j)]) for j in srcs] or [np.zeros(0, int)])
                F = np.concatenate([X[:, own], Z[:, zc] if len(zc) else np.zeros((len(X), 0))], axis=1)
                if b is not None:
                    F = np.concatenate([F, np.ones((len(F), 1))], axis=1)
                if how == "refit" and len(F) >= 2 * F.shape[1]:
                    theta = _lstsq(F, Y[:, rows], ridge)
                else:
                    blocks = [_lstsq(Z[:, np.arange(*offs[(k, j)])], X[:, L.in_owner == j] @ W[rows][:, L.in_owner == j].T, ridge)
                              for j in srcs]
                    theta = np.concatenate([W[rows][:, own].T, *blocks] + ([b[rows][None, :]] if b is not None else []))
                Wn[np.ix_(rows, own)] = theta[:len(own)].T
                A[np.ix_(rows, zc)] = theta[len(own):len(own) + len(zc)].T
                if b is not None:
                    bn[rows] = theta[-1]
            pred = X @ Wn.T + (Z @ A.T if R else 0) + (bn if bn is not None else 0)
            fits[how] = (Wn, A, bn, float(np.linalg.norm(pred - Y) / max(np.linalg.norm(Y), 1e-30)))
        Wn, A, bn, err = fits["refit" if refit else "svd"]
        errors.append((fits["svd"][3], err))
        _set(model, L, Wn, bn, inits)
        if R:
            y2 = _add_layer(model, L, f"{L.y}:expand", A, inits, x=z_name)
            renamed[L.y] = _add_sum(model, L, y2)
    return errors


def _set(model, L: Layer, W: np.ndarray, b, inits) -> None:
    from edgepart.packager.strategies.channel.restructure.activations import set_weights

    set_weights(model, L, W[:, :, None], b)


def _add_layer(model: onnx.ModelProto, like: Layer, name: str, W: np.ndarray, inits, x: str | None = None) -> str:
    """A new bias-free contraction like `like` (Conv 1x1 or MatMul) computing W [out, in] of `x`
    (default: like's input), inserted right after `like`'s node; returns its output's name."""
    x = x or like.x
    out = _fresh(model, name)
    dtype = numpy_helper.to_array(inits[like.w]).dtype
    w_name = _fresh(model, f"{name}.weight")
    if like.op == "Conv":
        arr = W.reshape(W.shape[0], W.shape[1], 1, 1)
        node = helper.make_node("Conv", [x, w_name], [out], name=out, kernel_shape=[1, 1])
    else:
        arr = W.T
        node = helper.make_node("MatMul", [x, w_name], [out], name=out)
    init = numpy_helper.from_array(arr.astype(dtype), w_name)
    model.graph.initializer.append(init)
    inits[w_name] = init
    _insert_after(model, node, [x, like.y] if x != like.x else [like.y])
    return out


def _add_sum(model: onnx.ModelProto, L: Layer, y2: str) -> str:
    """y = y_own + y2: L's node keeps its output name (a partition may name it); its readers read the sum."""
    s = _fresh(model, f"{L.y}:sum")
    for nd in model.graph.node:
        for i, t in enumerate(nd.input):
            if t == L.y:
                nd.input[i] = s
    _insert_after(model, helper.make_node("Add", [L.y, y2], [s], name=s), [L.y, y2])
    return s


def _insert_after(model: onnx.ModelProto, node: onnx.NodeProto, after: list[str]) -> None:
    """Insert `node` right after the last node producing any of `after` (keeps topological order)."""
    nodes = list(model.graph.node)
    pos = max(i for i, nd in enumerate(nodes) if set(after) & set(nd.output))
    nodes.insert(pos + 1, node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _fresh(model: onnx.ModelProto, base: str) -> str:
    used = {t for nd in model.graph.node for t in nd.output} | {i.name for i in model.graph.initializer} | \
        {i.name for i in model.graph.input}
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}~{i}"
    return name

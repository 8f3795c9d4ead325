"""RePurpose (docs/architecture.md, "The three ideas"; arXiv 2008.08289): restructure a trained model for a sparse channel
split, without retraining, on calibration inputs.

    repurpose(model, calib, n_devices, comm_budget) -> Repurposed(model, partition, report)

    assign  output channels (neurons) of every split layer go to devices by a balanced assignment
            (scipy's linear_sum_assignment, one column per device slot) that keeps the strongest
            connections, |W[o, c]| x rms(x_c), inside a device; sweeps alternate over the layers, each
            layer seeing its input's partition and the partitions of the layers that read it
    prune   keep the cross-device (device k, input channel c) column blocks that matter most and zero
            the rest, so the split's bytes fit `comm_budget` x the bytes of the dense channel split;
            chosen by forward selection on the calibration data (the gain of refitting with the
            block, as orthogonal matching pursuit does) when `adjust` follows, else by block norm
    adjust  refit every layer's surviving weights and bias by ridge least squares, its own pruned
            inputs against the original model's outputs, layer by layer in topological order

The zeroed blocks need nothing else: the channel compiler reads only the channels each device's
rows of W use (docs/channel.md). Every step is measured per layer (`SparseReport`).
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import logging
from typing import Mapping, Sequence

import numpy as np
import onnx
from scipy.cluster.hierarchy import DisjointSet

from edgepart.errors import ModelError, PlanningError

from edgepart.packager.strategies.channel.compiler import channel_bytes
from edgepart.packager.strategies.channel._layout import default_partition, plan_layout
from edgepart.packager.strategies.channel._ops import ModelInfo
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.channel.restructure.results import LayerReport, Repurposed, SparseReport
from edgepart.packager.strategies.channel.restructure.activations import Layer, Samples, set_owners, sample_positions, collect, find_layers, get_weights, rel_error, set_weights

log = logging.getLogger("edgepart")

STEPS = ("assign", "prune", "adjust")
SELECTIONS = ("auto", "omp", "norm", "magnitude")


# -- step 1: assign ------------------------------------------------------------------------------------

def _strength(W: np.ndarray, sq: np.ndarray, count: int) -> np.ndarray:
    """[C_out, C_in] |W[o, c]| x rms(x_c), normalised to sum 1 (each layer counts the same)."""
    s = np.linalg.norm(W, axis=2) * np.sqrt(sq / max(count, 1))[None, :]
    return s / max(s.sum(), 1e-30)


def _inside(S: np.ndarray, out_owner, in_owner) -> float:
    if in_owner is None or out_owner is None:
        return float("nan")
    return float(S[out_owner[:, None] == in_owner[None, :]].sum() / max(S.sum(), 1e-30))


def balanced_assign(profit: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    """Device of each row maximising sum(profit[row, device]), device k taking capacities[k] rows."""
    from scipy.optimize import linear_sum_assignment

    slots = np.repeat(np.arange(len(capacities)), capacities)
    rows, cols = linear_sum_assignment(profit[:, slots], maximize=True)
    owner = np.empty(profit.shape[0], dtype=np.int64)
    owner[rows] = slots[cols]
    return owner


def _classes(lay) -> dict[str, str]:
    """Tensor -> root of its class: tensors tied by per-channel ops share one partition (as the compiler does)."""
    classes = DisjointSet()
    for nd, rule in zip(lay.graph.nodes, lay.rules):
        if rule.kind == "local" and rule.link == "same":
            for t in rule.ins:
                classes.add(nd.outputs[0])
                classes.add(t)
                classes.merge(nd.outputs[0], t)
    return {t: classes[t] for t in classes}


def assign(model, graph, info, layers: Sequence[Layer], n: int, strength: Mapping[str, np.ndarray],
           iterations: int) -> dict[str, np.ndarray]:
    """Alternating balanced assignment of each class of split outputs (coordinate ascent on the
    strength kept inside devices, over all layers)."""
    lay = plan_layout(model, graph, n, None, info)
    root = _classes(lay)
    split = [L for L in layers if L.kind == "contract"]
    units: dict[str, list[Layer]] = {}
    for L in split:
        units.setdefault(root.get(L.y, L.y), []).append(L)
    readers: dict[str, list[Layer]] = {}
    for L in split:
        r = root.get(L.x, L.x)
        if r in units and units[r][0].out_channels == L.in_channels:
            readers.setdefault(r, []).append(L)
    part = {L.y: lay.partition[L.y] for L in split}
    for sweep in range(iterations):
        changed = False
        for r, writers in units.items():
            set_owners(model, graph, n, part, info, layers)
            c = writers[0].out_channels
            profit = np.zeros((c, n))
            for W in writers:
                if W.in_owner is not None:
                    profit += strength[W.node] @ np.eye(n)[W.in_owner]
            for R in readers.get(r, []):
                if R.out_owner is not None and R not in writers:
                    profit += strength[R.node].T @ np.eye(n)[R.out_owner]
            if not profit.any():
                continue
            owner = balanced_assign(profit, np.bincount(default_partition(c, n), minlength=n))
            old = part[writers[0].y]
            # keep the current partition unless the new one is strictly better (no churn on ties)
            if profit[np.arange(c), owner].sum() > profit[np.arange(c), old].sum() + 1e-12:
                changed = True
                for W in writers:
                    part[W.y] = owner
        if not changed:
            break
    return part


# -- step 2: prune --------------------------------------------------------------------------------------

def _gram(X: np.ndarray, Y: np.ndarray, intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """G = [X 1]^T [X 1] / P and B = [X 1]^T Y / P in float64."""
    Xf = X.reshape(len(X), -1).astype(np.float64)
    if intercept:
        Xf = np.concatenate([Xf, np.ones((len(Xf), 1))], axis=1)
    return Xf.T @ Xf / len(Xf), Xf.T @ Y.astype(np.float64) / len(Xf)


def omp_order(G: np.ndarray, B: np.ndarray, base: np.ndarray, groups: Sequence[np.ndarray],
              ridge: float) -> list[tuple[int, float]]:
    """Forward selection of feature groups for the least-squares fit of B's columns, starting from the
    features `base`: each step adds the group that cuts the residual most (group orthogonal matching
    pursuit with exact refits). Returns (group, gain) in the order chosen, gains in units of B's
    residual energy. An incremental Cholesky factor keeps a step at O(|S| d + d R) per feature."""
    d = G.shape[0]
    G = G + ridge * np.mean(np.diag(G)) * np.eye(d)
    T = np.zeros((d, d))  # rows 0..m: L^-1 G[S, :], L the Cholesky factor of G[S, S]
    u = np.zeros((d, B.shape[1]))  # rows 0..m: L^-1 B[S]
    schur = np.diag(G).copy()  # G_jj - |T[:m, j]|^2: what feature j adds beyond S
    Bt = B.copy()  # B - T[:m]^T u[:m]: each feature's correlation with the residual
    m = 0

    def add(j: int) -> None:
        nonlocal m
        piv = np.sqrt(max(schur[j], 1e-12 * G[j, j] + 1e-30))
        T[m] = (G[j] - T[:m, j] @ T[:m]) / piv
        u[m] = (B[j] - T[:m, j] @ u[:m]) / piv
        schur[:] -= T[m] * T[m]
        Bt[:] -= np.outer(T[m], u[m])
        m += 1

    for j in base:
        add(int(j))
    order: list[tuple[int, float]] = []
    left = np.arange(len(groups))
    single = all(len(g) == 1 for g in groups)
    flat = np.array([g[0] for g in groups]) if single else None
    while left.size:
        if single:
            f = flat[left]
            gains = (Bt[f] ** 2).sum(1) / np.maximum(schur[f], 1e-12 * np.diag(G)[f] + 1e-30)
        else:
            gains = np.empty(left.size)
            for i, gi in enumerate(left):
                g = groups[gi]
                S = G[np.ix_(g, g)] - T[:m, g].T @ T[:m, g]
                S += (1e-9 * np.trace(S) / len(g) + 1e-30) * np.eye(len(g))
                gains[i] = np.sum(Bt[g] * np.linalg.solve(S, Bt[g]))
        i = int(np.argmax(gains))
        best = int(left[i])
        order.append((best, float(gains[i])))
        left = np.delete(left, i)
        for j in groups[best]:
            add(int(j))
    return order


def _queues(L: Layer, W: np.ndarray, s: Samples | None, selection: str, ridge: float):
    """Per device k of the layer: the cross-device input channels in the order to keep them, with gains
    (relative output energy each recovers)."""
    queues = []
    if selection == "omp":
        G, B = _gram(s.X, s.Y, intercept=True)
        Yc = s.Y.astype(np.float64) - s.Y.mean(0)
    K = W.shape[2]
    for k in range(int(L.out_owner.max()) + 1 if L.out_owner is not None else 0):
        rows = np.flatnonzero(L.out_owner == k)
        cand = [c for c in np.flatnonzero(L.in_owner != k) if np.any(W[rows, c] != 0)]
        if not rows.size or not cand:
            continue
        if selection == "omp":
            base = np.concatenate([np.arange(c * K, c * K + K) for c in np.flatnonzero(L.in_owner == k)]
                                  + [np.array([G.shape[0] - 1])]).astype(np.int64)
            groups = [np.arange(c * K, c * K + K) for c in cand]
            energy = max(float((Yc[:, rows] ** 2).sum() / len(Yc)), 1e-30)
            order = omp_order(G, B[:, rows], base, groups, ridge)
            queues.append((k, [(int(cand[gi]), g / energy) for gi, g in order]))
        else:
            w2 = (W ** 2).sum(2)
            if selection == "norm":
                w2 = w2 * (s.sq / max(s.count, 1))[None, :]
            gain = w2[rows][:, cand].sum(0) / max(w2.sum(), 1e-30)
            queues.append((k, sorted(zip(map(int, cand), gain.tolist()), key=lambda t: -t[1])))
    return queues


def select_blocks(layers: Sequence[Layer], queues: Mapping[str, list], budget_bytes: float,
                  allocation: str, comm_budget: float) -> dict[str, set[tuple[int, int]]]:
    """Greedy knapsack over all (layer, device, channel) blocks by gain per byte."""
    keep: dict[str, set[tuple[int, int]]] = {L.node: set() for L in layers}
    groups = [[L] for L in layers] if allocation == "layer" else [list(layers)]
    for group in groups:
        budget = budget_bytes if allocation == "global" else comm_budget * sum(dense_bytes_of(L) for L in group)
        heap = []
        for L in group:
            for k, q in queues.get(L.node, []):
                if q:
                    heapq.heappush(heap, (-q[0][1] / L.bytes_per_channel, L.node, k, 0))
        by = {L.node: L for L in group}
        qs = {(L.node, k): q for L in group for k, q in queues.get(L.node, [])}
        used = 0.0
        while heap:
            _, node, k, i = heapq.heappop(heap)
            L, q = by[node], qs[(node, k)]
            if used + L.bytes_per_channel > budget + 1e-6:
                continue  # this queue is done: every block of a layer costs the same
            used += L.bytes_per_channel
            keep[node].add((k, q[i][0]))
            if i + 1 < len(q):
                heapq.heappush(heap, (-q[i + 1][1] / L.bytes_per_channel, node, k, i + 1))
    return keep


def dense_bytes_of(L: Layer) -> float:
    """Bytes the layer's input moves in the dense channel split (as the compiler counts them)."""
    if L.in_owner is None or L.out_owner is None:
        return 0.0
    return float(sum(L.bytes_per_channel * np.count_nonzero(L.in_owner != k)
                     for k in np.unique(L.out_owner)))


def _prune(W: np.ndarray, L: Layer, keep: set[tuple[int, int]]) -> np.ndarray:
    W = W.copy()
    cross = L.out_owner[:, None] != L.in_owner[None, :]
    kept = np.zeros_like(cross)
    for k, c in keep:
        kept[L.out_owner == k, c] = True
    W[cross & ~kept] = 0.0
    return W


# -- step 3: adjust -------------------------------------------------------------------------------------

def refit(W: np.ndarray, b: np.ndarray | None, X: np.ndarray, Y: np.ndarray, ridge: float,
          intercept: bool, min_rows: float = 2.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Least squares of each output neuron over the input channels it still reads (its non-zero
    columns), all neurons with the same support solved at once. The ridge pulls towards the current
    weights, not towards zero: an exact layer on exact inputs stays exactly as it is, and channels the
    calibration inputs barely excite keep their trained weights. Neurons with fewer than `min_rows`
    samples per weight keep their weights."""
    K = W.shape[2]
    G, B = _gram(X, Y, intercept)
    d = G.shape[0]
    lam = ridge * np.mean(np.diag(G))
    G = G + lam * np.eye(d)
    prior = W.reshape(W.shape[0], -1)
    if intercept:
        prior = np.concatenate([prior, (b if b is not None else np.zeros(W.shape[0]))[:, None]], axis=1)
    support = np.any(W != 0, axis=2)  # [C_out, C_in]
    W2, b2 = W.copy(), (b.copy() if b is not None else (np.zeros(W.shape[0]) if intercept else None))
    keys: dict[bytes, list[int]] = {}
    for o in range(W.shape[0]):
        keys.setdefault(support[o].tobytes(), []).append(o)
    for rows in keys.values():
        chans = np.flatnonzero(support[rows[0]])
        feats = (chans[:, None] * K + np.arange(K)).ravel()
        if intercept:
            feats = np.append(feats, d - 1)
        if not feats.size or len(X) < min_rows * len(feats):  # too few samples for this many weights
            continue
        rhs = B[np.ix_(feats, rows)] + lam * prior[np.ix_(rows, feats)].T
        sol = np.linalg.solve(G[np.ix_(feats, feats)], rhs)  # [f, len(rows)]
        nw = len(chans) * K
        W2[np.ix_(rows, chans)] = sol[:nw].T.reshape(len(rows), len(chans), K)
        if intercept:
            b2[rows] = sol[nw]
    return W2, b2


# -- the whole pipeline ---------------------------------------------------------------------------------

def repurpose(model: onnx.ModelProto, calib: Mapping[str, np.ndarray], n_devices: int, comm_budget: float, *,
              steps: Sequence[str] = STEPS, iterations: int = 4, selection: str = "auto",
              allocation: str = "global", ridge: float = 1e-4, max_positions: int = 16384,
              batch_size: int = 64, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
              seed: int = 0, method: str = "prune", replicate: float = 0.0) -> Repurposed:
    """Restructure `model` for a channel split over `n_devices` whose cross-device bytes are at most
    `comm_budget` x those of the dense channel split. `calib` maps each model input to a batch of
    calibration inputs [N, ...].

    method  "prune": zero cross-device (device, input channel) blocks (assign, prune, adjust);
            "lowrank": replace each cross-device block of the 1x1 conv / Gemm / MatMul layers by a
            rank-r projection its sender computes (lowrank.py; `steps` without "adjust" skips the
            refit; assign is not used: the compiler's default partition, heads kept whole).
    replicate  with "lowrank": first replicate the model's first layers on every device, up to this
            fraction of the model's MACs extra per device (replicate.py: exact, and those layers then
            send nothing); the budget stays a fraction of the ORIGINAL model's dense split."""
    if method not in ("prune", "lowrank"):
        raise PlanningError(f"Unknown RePurpose method {method!r}; choose 'prune' or 'lowrank'.")
    if replicate and method != "lowrank":
        raise PlanningError("replicate works with method 'lowrank' (prune's assignment would move the copies of the "
                            "replicated layers between devices); use method='lowrank', or replicate=0.")
    if method == "lowrank":
        from edgepart.packager.strategies.channel.restructure.lowrank import lowrank

        reference = rep = partition = None
        if replicate:
            from edgepart.packager.strategies.channel.restructure.replicate import replicate as replicate_first

            shapes = dict(input_shapes or {k: (1,) + tuple(np.asarray(v).shape[1:]) for k, v in calib.items()})
            reference = channel_bytes(analyse(model, shapes), None, model, n_devices)
            rep = replicate_first(model, n_devices, replicate, input_shapes=shapes)
            model, partition = rep.model, rep.partition
        out = lowrank(model, calib, n_devices, comm_budget, max_positions=max_positions, batch_size=batch_size,
                      refit="adjust" in steps, input_shapes=input_shapes, seed=seed, partition=partition,
                      reference=reference)
        if rep is not None:
            out = out._replace(report=dataclasses.replace(out.report, replicated=rep.report))
        return out
    steps = tuple(steps)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise PlanningError(f"Unknown RePurpose step(s) {bad}; choose from {list(STEPS)}.")
    if selection not in SELECTIONS:
        raise PlanningError(f"Unknown selection {selection!r}; choose one of {list(SELECTIONS)}.")
    if allocation not in ("global", "layer"):
        raise PlanningError(f"Unknown allocation {allocation!r}; choose 'global' or 'layer'.")
    if not 0.0 <= comm_budget <= 1.0:
        raise PlanningError(f"comm_budget is a fraction of the dense channel split's bytes, in 0..1 (0.2: 5x fewer); "
                            f"got {comm_budget}.")
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    missing = [n for n in names if n not in calib]
    if missing or not calib:
        raise ModelError(f"The calibration inputs lack {missing or names}; give a batch [N, ...] for each model input.")
    if selection == "auto":
        selection = "omp" if "adjust" in steps else "norm"

    model = copy.deepcopy(model)
    shapes = dict(input_shapes or {k: (1,) + tuple(np.asarray(v).shape[1:]) for k, v in calib.items()})
    graph = analyse(model, shapes)
    info = ModelInfo(model, graph)
    layers = find_layers(model, graph, n_devices, info)
    n_calib = len(next(iter(calib.values())))
    rng = np.random.default_rng(seed)
    idx = sample_positions(layers, n_calib, max_positions, rng)
    orig = collect(model, calib, layers, idx, batch_size=batch_size)
    weights = {L.node: get_weights(model, L) for L in layers}
    strength = {L.node: _strength(weights[L.node][0], orig[L.node].sq, orig[L.node].count) for L in layers}

    set_owners(model, graph, n_devices, None, info, layers)
    inside_default = {L.node: _inside(strength[L.node], L.out_owner, L.in_owner) for L in layers}
    partition = {L.y: L.out_owner for L in layers if L.kind == "contract" and L.out_owner is not None}
    if "assign" in steps:
        partition = assign(model, graph, info, layers, n_devices, strength, iterations)
    set_owners(model, graph, n_devices, partition, info, layers)
    inside = {L.node: _inside(strength[L.node], L.out_owner, L.in_owner) for L in layers}

    prunable = [L for L in layers if L.kind == "contract" and L.in_owner is not None and L.out_owner is not None]
    if "prune" in steps:
        queues = {L.node: _queues(L, weights[L.node][0], orig[L.node], selection, ridge) for L in prunable}
        dense = sum(dense_bytes_of(L) for L in prunable)
        keep = select_blocks(prunable, queues, comm_budget * dense, allocation, comm_budget)
        for L in prunable:
            W, b = weights[L.node]
            weights[L.node] = (_prune(W, L, keep[L.node]), b)
            set_weights(model, L, *weights[L.node])
            log.debug("RePurpose: %s keeps %d of its cross-device blocks", L.node, len(keep[L.node]))

    err_pruned = {}
    if "adjust" in steps and "prune" in steps and prunable:
        # layers before the first pruned one see exact inputs and keep their weights
        first = min(L.index for L in prunable)
        for L in layers:
            if L.index < first:
                continue
            s = collect(model, calib, [L], idx, want_y=False, batch_size=batch_size)[L.node]
            W, b = weights[L.node]
            err_pruned[L.node] = rel_error(s.X, W, b, orig[L.node].Y)
            W, b = refit(W, b, s.X, orig[L.node].Y, ridge, intercept=L.op != "MatMul")
            weights[L.node] = (W, b)
            set_weights(model, L, W, b)
            log.debug("RePurpose: %s refitted, relative output error %.4f before", L.node, err_pruned[L.node])
    final = collect(model, calib, layers, idx, want_y=False, batch_size=batch_size)
    report_bytes = channel_bytes(analyse(model, shapes), partition, model, n_devices)
    if "prune" in steps and report_bytes.used_bytes > comm_budget * report_bytes.dense_bytes + 1:
        log.warning("RePurpose: the compiler counts %d bytes between devices, over the budget of %d; it laid "
                    "out some layer's input differently than expected", report_bytes.used_bytes,
                    int(comm_budget * report_bytes.dense_bytes))
    by_node = {x.node: x for x in report_bytes.layers}
    rows = []
    for L in layers:
        W, b = weights[L.node]
        err = rel_error(final[L.node].X, W, b, orig[L.node].Y)
        lb = by_node.get(L.node)
        rows.append(LayerReport(L.node, L.y, L.in_channels, L.out_channels, lb.dense_bytes if lb else 0,
                                lb.used_bytes if lb else 0, inside_default[L.node], inside[L.node],
                                err_pruned.get(L.node, err), err))
    report = SparseReport(n_devices, comm_budget, steps, tuple(rows), report_bytes)
    return Repurposed(model, {k: np.asarray(v, dtype=np.int64) for k, v in partition.items()}, report)

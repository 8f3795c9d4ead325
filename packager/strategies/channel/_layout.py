"""Channel-split layouts: which device owns which channel of every tensor, and how each node runs.

    plan_layout(model, graph, n_devices, partition) -> ChannelLayout
        every activation gets a layout   Split(axis, owner)  device owner[c] holds channel c
                                         Whole(device)       one device (CALLER_DEV: the caller) holds it
                                         REP                 shape arithmetic, recomputed where needed
        every node a Decision            contract  device k computes y[C_k] = W[C_k, U_k] x[U_k]
                                                   (or sums partial products sent by some peers)
                                         local     per-channel op: each device on the channels it owns
                                         norm      LayerNorm over the split axis: statistics exchanged
                                         whole     inputs gathered on one device, run there
                                         reduce    partial products on every device, summed on one
                                         rep       recomputed on every device that needs it

Three passes. A: each node's rule from its inputs' kinds (channel_ops.classify). B: partitions:
tensors tied by per-channel ops (a residual stream, `Add(conv_out, shortcut)`) form one class
(union-find) and share one partition: the first one given for a member in topological order,
else contiguous blocks, kept to whole groups where a class is reshaped into heads. Q, K and V of
one attention are one class: their heads meet in Q·K^T and P·V. Flatten, channel-Concat and the
Reshapes into and out of heads derive theirs from their inputs (a derived partition that disagrees
with its class is redistributed where they meet: exact, and noted).
C: layouts in topological order; a whole-tensor op runs where most of its input bytes already are;
a contraction whose output is only needed whole picks, by bytes moved, among split-then-gather,
gather-the-input (whole@r) and partial products reduced on one device (reduce@r). Then, per device
pair, split contractions take partial sums where those are fewer bytes (channel_partial).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np
import onnx
from scipy.cluster.hierarchy import DisjointSet

from edgepart.errors import PlanningError

from edgepart.packager.strategies.channel._ops import ModelInfo, Rule, classify
from edgepart.packager.model.graph import Graph

CALLER_DEV = -1  # the layout device of a model input: the caller sends it where it is needed


@dataclass(frozen=True, eq=False)
class Split:
    """Channel-split along `axis`: device owner[c] holds channel c (ascending order on each device)."""

    axis: int
    owner: np.ndarray

    def of(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.owner == k)


@dataclass(frozen=True)
class Whole:
    """The whole tensor on one device (CALLER_DEV for a model input)."""

    device: int


@dataclass(frozen=True)
class Rep:
    """Small derived tensors (shapes, pads): computed on each device that needs them."""


REP = Rep()
Layout = Split | Whole | Rep


@dataclass(frozen=True)
class Decision:
    kind: str  # contract | local | whole | reduce | rep
    device: int = -1  # whole/reduce: where it runs
    note: str = ""
    options: tuple[tuple[str, int], ...] = ()  # contract: (mode@device, cross-device bytes) compared
    # contract: (receiver, sender) pairs where the sender sends partial sums W[C_receiver, U] x[U]
    # instead of its input channels U (fewer bytes when the receiver has fewer output channels)
    partial: tuple[tuple[int, int], ...] = ()


# -- the layout ------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ChannelLayout:
    """Where every channel of every activation lives, and how every node runs."""

    info: ModelInfo
    n_devices: int
    rules: tuple[Rule, ...]
    layouts: dict[str, Layout]
    decisions: tuple[Decision, ...]
    partition: dict[str, np.ndarray]  # the partition each split contraction output got
    notes: tuple[str, ...] = ()

    @property
    def graph(self) -> Graph:
        return self.info.graph


def default_partition(channels: int, n_devices: int) -> np.ndarray:
    """Contiguous blocks, as equal as possible: [0..C/N) on device 0, and so on."""
    counts = [channels // n_devices + (i < channels % n_devices) for i in range(n_devices)]
    return np.repeat(np.arange(n_devices), counts)


def plan_layout(model: onnx.ModelProto, graph: Graph, n_devices: int,
                partition: Mapping[str, np.ndarray] | None = None, info: ModelInfo | None = None) -> ChannelLayout:
    """Layouts and decisions for a channel split over `n_devices` (pure: no files, one onnxruntime probe)."""
    if n_devices < 1:
        raise PlanningError("A channel split needs at least one device; the cluster lists none.")
    info = info or ModelInfo(model, graph)
    notes: list[str] = []

    rules = layer_rules(info)
    user = _check_partition(info, rules, partition or {}, n_devices)

    # pass B: partitions (one per class of tensors tied by per-channel ops)
    uf = _classes(info, rules)
    granule = _granules(info, rules, uf)
    class_user: dict[str, tuple[str, np.ndarray]] = {}
    for nd, rule in zip(graph.nodes, rules):
        o = nd.outputs[0]
        if rule.kind == "contract" and o in user:
            root = uf.find(o)
            if root not in class_user:
                class_user[root] = (o, user[o])
            elif not np.array_equal(class_user[root][1], user[o]):
                notes.append(f"partition of {o!r} replaced by that of {class_user[root][0]!r}: they are tied by "
                             f"per-channel ops (one residual stream, or one attention's heads) and must share "
                             f"one partition")
    owner: dict[str, np.ndarray] = {}
    class_owner: dict[str, np.ndarray] = {}
    for nd, rule in zip(graph.nodes, rules):
        if rule.kind not in ("contract", "local", "norm"):
            continue
        o = nd.outputs[0]
        root = uf.find(o)
        p = info.protos[nd.name]
        derived = None
        if rule.link in ("flatten", "merge"):
            derived = np.repeat(owner[p.input[0]], rule.inner)
        elif rule.link == "group":
            derived = _group_owner(owner[p.input[0]], rule.inner, n_devices)
            if not np.array_equal(np.repeat(derived, rule.inner), owner[p.input[0]]):
                notes.append(f"{p.input[0]!r} is reshaped into groups of {rule.inner} channels (heads) that its "
                             f"partition splits; each group goes to the device holding most of it, which "
                             f"receives the rest")
        elif rule.link == "concat":
            derived = np.concatenate([owner[t] for t in p.input])
        if derived is not None:
            class_owner.setdefault(root, derived)
            if not np.array_equal(class_owner[root], derived):
                notes.append(f"{o!r} is made with a partition that differs from the tensors it is added to; "
                             f"they are redistributed where they meet")
            owner[o] = derived
            continue
        if root not in class_owner:
            c = info.shapes[o][rule.axis]
            g = granule.get(root, 1)
            class_owner[root] = class_user[root][1] if root in class_user else \
                np.repeat(default_partition(c // g, n_devices), g)
            if root in class_user and o not in user and rule.kind == "contract":
                notes.append(f"{o!r} takes the partition given for {class_user[root][0]!r} (tied by per-channel "
                             f"ops: same residual stream or same heads)")
        owner[o] = class_owner[root]
        if rule.kind == "contract" and o in user and not np.array_equal(owner[o], user[o]):
            notes.append(f"partition of {o!r} not used: it is tied to a tensor whose partition was fixed before")

    # pass C: layouts and decisions, in topological order
    layouts: dict[str, Layout] = {i.name: Whole(CALLER_DEV) for i in graph.inputs}
    decisions: list[Decision] = []
    for nd, rule in zip(graph.nodes, rules):
        o = nd.outputs[0]
        if rule.kind == "rep":
            dec = Decision("rep", note=rule.why)
            for t in nd.outputs:
                layouts[t] = REP
        elif rule.kind == "local":
            layouts[o] = Split(rule.axis, owner[o])
            dec = Decision("local", note=_local_note(rule, owner[o], n_devices))
        elif rule.kind == "norm":
            dec = Decision("norm", note="per-token statistics (mean, variance) of each device's channels "
                                        "exchanged; each device normalises its own channels")
            layouts[o] = Split(rule.axis, owner[o])
        elif rule.kind == "contract":
            dec = _contract_decision(info, nd, rules, layouts, owner[o], n_devices, rule.axis)
            layouts[o] = Split(rule.axis, owner[o]) if dec.kind == "contract" else Whole(dec.device)
        else:
            r = best_device(info, nd.inputs, layouts, n_devices)
            dec = Decision("whole", r, note=rule.why)
            for t in nd.outputs:
                layouts[t] = Whole(r)
        decisions.append(dec)
    decisions = plan_partial_sums(info, rules, layouts, decisions, n_devices)
    partition_out = {nd.outputs[0]: owner[nd.outputs[0]]
                     for nd, d in zip(graph.nodes, decisions) if d.kind == "contract"}
    return ChannelLayout(info, n_devices, tuple(rules), layouts, tuple(decisions), partition_out, tuple(notes))


def layer_rules(info: ModelInfo) -> list[Rule]:
    """Pass A: every node's rule, from its inputs' kinds alone."""
    kind_of: dict[str, str] = {i.name: "caller" for i in info.graph.inputs}
    axis_of: dict[str, int | None] = {}
    rules: list[Rule] = []
    for nd in info.graph.nodes:
        rule = classify(info, nd, axis_of, kind_of)
        rules.append(rule)
        for i, o in enumerate(nd.outputs):
            split = rule.kind in ("contract", "local", "norm") and i == 0
            kind_of[o] = "split" if split else ("rep" if rule.kind == "rep" else "whole")
            axis_of[o] = rule.axis if split else None
    return rules


def partitionable(model: onnx.ModelProto, graph: Graph, info: ModelInfo | None = None) -> dict[str, int]:
    """The tensors a partition may name (outputs of the Conv/Gemm/MatMul layers split by output
    channels), with their channel counts, in topological order."""
    info = info or ModelInfo(model, graph)
    return {nd.outputs[0]: info.shapes[nd.outputs[0]][r.axis]
            for nd, r in zip(graph.nodes, layer_rules(info)) if r.kind == "contract"}


def _check_partition(info: ModelInfo, rules, partition: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    outs = {nd.outputs[0]: nd for nd, r in zip(info.graph.nodes, rules) if r.kind == "contract"}
    checked = {}
    for t, arr in partition.items():
        if t not in outs:
            some = ", ".join(list(outs)[:6]) + (", ..." if len(outs) > 6 else "")
            raise PlanningError(f"The partition names {t!r}, which is not the output of a Conv/Gemm/MatMul the "
                                f"compiler splits. Key the partition by those outputs: {some or '(none)'}.")
        arr = np.asarray(arr)
        c = info.shapes[t][rules[outs[t].index].axis]
        if arr.shape != (c,) or arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() >= n)):
            raise PlanningError(f"The partition of {t!r} must be an int array of {c} device indices in 0..{n - 1} "
                                f"(one per output channel); got shape {arr.shape}, dtype {arr.dtype}.")
        checked[t] = arr.astype(np.int64)
    return checked


def _local_note(rule: Rule, owner: np.ndarray, n: int) -> str:
    if rule.link == "group":
        return f"{rule.why}: {', '.join(map(str, np.bincount(owner, minlength=n)))} per device"
    return rule.why


class _Classes(DisjointSet):
    """scipy's union-find over tensor names, with the two calls this module makes."""

    def find(self, x: str) -> str:
        self.add(x)
        return self[x]

    def union(self, a: str, b: str) -> None:
        self.add(a)
        self.add(b)
        self.merge(a, b)


def _classes(info: ModelInfo, rules) -> _Classes:
    """Tensors that must share one partition. Per-channel ops tie their output to their split inputs;
    tensors reshaped into groups (heads) of the same size that end up in one class are tied too, so
    that Q, K and V of one attention are split alike (their heads meet in Q·K^T and P·V)."""
    uf = _Classes()
    for nd, rule in zip(info.graph.nodes, rules):
        if rule.kind in ("local", "norm") and rule.link == "same":
            for t in rule.ins:
                uf.union(nd.outputs[0], t)
    grouped = [(nd.outputs[0], info.protos[nd.name].input[0], rule.inner)
               for nd, rule in zip(info.graph.nodes, rules) if rule.kind == "local" and rule.link == "group"]
    changed = True
    while changed:
        changed = False
        first: dict[tuple[str, int], str] = {}
        for out, x, inner in grouped:
            key = (uf.find(out), inner)
            if key in first and uf.find(first[key]) != uf.find(x):
                uf.union(first[key], x)
                changed = True
            first.setdefault(key, x)
    return uf


def _granules(info: ModelInfo, rules, uf: _Classes) -> dict[str, int]:
    """Class root -> channels per group (head) of a Reshape reading the class: default partitions keep
    whole groups on one device."""
    out: dict[str, int] = {}
    for nd, rule in zip(info.graph.nodes, rules):
        if rule.kind == "local" and rule.link == "group":
            x = info.protos[nd.name].input[0]
            root, c = uf.find(x), info.shapes[x][rule.axis]
            g = int(np.lcm(out.get(root, 1), rule.inner))
            if c % g == 0:
                out[root] = g
    return out


def _group_owner(owner: np.ndarray, inner: int, n: int) -> np.ndarray:
    """Each group of `inner` consecutive channels to the device that holds most of them (lowest on ties)."""
    per = owner.reshape(-1, inner)
    counts = (per[:, :, None] == np.arange(n)[None, None, :]).sum(1)
    return counts.argmax(1).astype(np.int64)


def held_bytes(info: ModelInfo, t: str, layout: Layout, n: int) -> np.ndarray:
    """[n] bytes of `t` each device already holds."""
    out = np.zeros(n)
    if isinstance(layout, Split):
        bpc = info.bytes_per_channel(t, layout.axis)
        out += np.bincount(layout.owner, minlength=n)[:n] * bpc
    elif isinstance(layout, Whole) and layout.device >= 0:
        out[layout.device] += info.graph.tensor_bytes.get(t, 0)
    return out


def best_device(info: ModelInfo, tensors, layouts, n: int) -> int:
    """Where a whole-tensor op runs: the device already holding most of its inputs (lowest on ties)."""
    held = sum((held_bytes(info, t, layouts[t], n) for t in tensors), np.zeros(n))
    return int(np.argmax(held))


def _whole_consumed(info: ModelInfo, t: str, rules) -> bool:
    kinds = [rules[i].kind for i in info.consumers.get(t, [])]
    kinds = [k for k in kinds if k != "rep"]
    return (bool(kinds) or t in info.model_outputs) and all(k == "whole" for k in kinds)


def _contract_decision(info, nd, rules, layouts, owner_y, n, out_axis) -> Decision:
    """Split by output channels, unless the output is only needed whole: then whichever of split +
    gather, gather the inputs (whole@r) or partial products summed (reduce@r) moves fewest bytes."""
    y = nd.outputs[0]
    if not _whole_consumed(info, y, rules):
        return Decision("contract")
    c = info.contraction(nd.name)
    lx = layouts[c.x]
    bpc_x = info.bytes_per_channel(c.x, c.in_axis)
    bpc_y = info.bytes_per_channel(y, out_axis)
    x_owner = _owner_of(lx, info.shapes[c.x][c.in_axis], c.in_axis)
    split = 0.0
    for k in range(n):
        rows = np.flatnonzero(owner_y == k)
        if rows.size and x_owner is not None:
            split += bpc_x * np.count_nonzero(c.used[rows].any(0) & (x_owner != k))
    counts = np.bincount(owner_y, minlength=n)
    r_gather = int(np.argmax(counts))
    split += bpc_y * (len(owner_y) - counts[r_gather])
    options = [(f"contract+gather@{r_gather}", int(round(split)))]
    need = c.used.any(0)
    held = held_bytes(info, c.x, lx, n)
    for r in range(n):
        if x_owner is not None:
            moved = bpc_x * np.count_nonzero(need & (x_owner != r))
        elif isinstance(lx, Split):  # split on another axis: gathered whole
            moved = info.graph.tensor_bytes.get(c.x, 0) - held[r]
        else:  # from the caller, or recomputed: nothing crosses devices
            moved = 0
        options.append((f"whole@{r}", int(round(moved))))
    if isinstance(lx, Split) and lx.axis == c.in_axis:
        y_bytes = info.graph.tensor_bytes.get(y, 0)
        senders = set(np.unique(lx.owner[need]).tolist())
        for r in range(n):
            options.append((f"reduce@{r}", y_bytes * len(senders - {r})))
    best = min(options, key=lambda o: o[1])  # first of equals: split, then whole, then reduce
    mode, _, dev = best[0].partition("@")
    kind = {"contract+gather": "contract"}.get(mode, mode)
    return Decision(kind, -1 if kind == "contract" else int(dev), note=f"output needed whole; chose {best[0]}",
                    options=tuple(options))


def _owner_of(layout: Layout, channels: int, axis: int) -> np.ndarray | None:
    """The owner array of a tensor along `axis` (a whole tensor: all on its device); None for caller/rep."""
    if isinstance(layout, Split):
        return layout.owner if layout.axis == axis else None
    if isinstance(layout, Whole) and layout.device >= 0:
        return np.full(channels, layout.device)
    return None


# -- bytes per split layer --------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerBytes:
    """One split layer: bytes its input moves between devices per inference, dense vs what W uses."""

    node: str
    output: str
    input: str
    in_channels: int
    out_channels: int
    dense_bytes: int  # every device receives every input channel it does not hold
    used_bytes: int  # only the channels its rows of W read
    # as compiled: used, except for the device pairs that send partial sums of the receiver's output
    # channels instead (fewer bytes); partial_bytes is that part of it
    sent_bytes: int = 0
    partial_bytes: int = 0


@dataclass(frozen=True)
class BytesReport:
    """Per split layer, and in total. Layers that read one tensor (attention's Q, K and V) receive it
    in one message, so the totals count each input tensor once: the most any of its layers needs
    (partial sums are separate messages, added per layer)."""

    layers: tuple[LayerBytes, ...]

    def _total(self, field: str) -> int:
        by_input: dict[str, list[LayerBytes]] = {}
        for x in self.layers:
            by_input.setdefault(x.input, []).append(x)
        total = 0
        for xs in by_input.values():
            if field == "sent_bytes":
                total += sum(x.partial_bytes for x in xs) + max(x.sent_bytes - x.partial_bytes for x in xs)
            elif field == "partial_bytes":
                total += sum(x.partial_bytes for x in xs)
            else:
                total += max(getattr(x, field) for x in xs)
        return total

    @property
    def dense_bytes(self) -> int:
        return self._total("dense_bytes")

    @property
    def used_bytes(self) -> int:
        return self._total("used_bytes")

    @property
    def ratio(self) -> float:
        """dense channel-split bytes / sparse bytes (inf when nothing crosses)."""
        return self.dense_bytes / self.used_bytes if self.used_bytes else float("inf")

    @property
    def sent_bytes(self) -> int:
        """As compiled: used bytes, with partial sums where they are fewer."""
        return self._total("sent_bytes")

    @property
    def partial_bytes(self) -> int:
        return self._total("partial_bytes")

    def to_dict(self) -> dict:
        return {"dense_bytes": self.dense_bytes, "used_bytes": self.used_bytes, "sent_bytes": self.sent_bytes,
                "partial_bytes": self.partial_bytes, "layers": [x.__dict__ for x in self.layers]}


def layer_bytes(lay: ChannelLayout) -> BytesReport:
    """Per split layer, the bytes crossing devices dense vs used (model inputs from the caller count 0)."""
    info, n = lay.info, lay.n_devices
    rows = []
    for nd, dec in zip(lay.graph.nodes, lay.decisions):
        if dec.kind != "contract":
            continue
        c = info.contraction(nd.name)
        y_owner = lay.layouts[nd.outputs[0]].owner
        x_owner = _owner_of(lay.layouts[c.x], info.shapes[c.x][c.in_axis], c.in_axis)
        bpc = info.bytes_per_channel(c.x, c.in_axis)
        bpc_y = info.bytes_per_channel(nd.outputs[0], lay.layouts[nd.outputs[0]].axis)
        dense = used = sent = partial = 0.0
        if x_owner is not None:
            for k in range(n):
                out_k = np.flatnonzero(y_owner == k)
                if out_k.size:
                    dense += bpc * np.count_nonzero(x_owner != k)
                    read = c.used[out_k].any(0)
                    for j in range(n):
                        if j == k:
                            continue
                        from_j = bpc * np.count_nonzero(read & (x_owner == j))
                        used += from_j
                        if (k, j) in dec.partial:
                            partial += bpc_y * out_k.size * bool(from_j)
                        else:
                            sent += from_j
        rows.append(LayerBytes(nd.name, nd.outputs[0], c.x, c.used.shape[1], c.used.shape[0], int(round(dense)),
                               int(round(used)), int(round(sent + partial)), int(round(partial))))
    return BytesReport(tuple(rows))


# -- partial sums: where a contraction's partial products cross instead of its inputs (_partial.py emits them)

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

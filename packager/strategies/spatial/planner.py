"""Plan a spatial split (docs/spatial.md): pick the fused prefix, size each device's strip by its
speed, and find every strip's halo at every layer with the row arithmetic of halo.py.

    fused prefix   the nodes the cut tensor T is computed from (its ancestors), all of them ops the
                   row arithmetic knows, T the only one of their results read after them
    strips         rows [a, b) of T per device, in proportion to the devices' GFLOP/s
    halo           walking the prefix backwards, the rows of every tensor a strip needs

The choice of T, when not given (`tile_until`), is the cost model's (packager/cost.py): of every
valid cut, the one with the least estimated latency (strips sent, computed in parallel, gathered,
the rest of the model on the gathering device). Pure functions of the graph and the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgepart.errors import PlanningError

from edgepart.packager.cluster import Cluster
from edgepart.packager.cost import CostModel, busy_ms, caller_io_ms, compute_ms
from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.spatial.halo import Rows, Rule, rule_for


@dataclass(frozen=True)
class Prefix:
    """The fused prefix: the image input, the cut tensor T, the prefix's nodes (graph indices, in
    order) with their row rules, and the rest of the model's nodes."""

    image: str
    until: str  # T, the fused output
    nodes: tuple[int, ...]
    rules: tuple[Rule, ...]
    rest: tuple[int, ...]
    image_rows: int
    until_rows: int


@dataclass(frozen=True)
class NodeRows:
    """What one prefix node does for one strip: its spatial inputs cropped to `needs` (global rows),
    its padding above and below, and the rows of its output it makes."""

    node: int
    needs: Rows
    pad_top: int
    pad_bottom: int
    makes: Rows


@dataclass(frozen=True)
class Strip:
    device: str
    rows: Rows  # of T
    input_rows: Rows  # of the image, halo included
    held: tuple[tuple[str, Rows], ...]  # rows of every prefix tensor this strip holds
    nodes: tuple[NodeRows, ...]
    flops: float
    in_bytes: int  # the image strip sent to it
    out_bytes: int  # its rows of T sent to the gathering device
    weight_bytes: int
    peak_bytes: int  # largest working set of one of its nodes (inputs + output, strip sizes)
    compute_ms: float


@dataclass(frozen=True)
class SpatialPlan:
    prefix: Prefix
    strips: tuple[Strip, ...]
    gather: str  # the device that slices the image, gathers the strips and runs the rest
    rest_flops: float
    rest_ms: float
    rest_weight_bytes: int
    rest_peak_bytes: int
    latency_ms: float
    whole_memory_bytes: int  # the unsplit model on one device: weights + largest working set
    whole_weight_bytes: int
    prefix_flops: float
    candidates: tuple[tuple[str, float], ...] = ()  # (T, estimated latency) of every valid cut

    def memory(self, device: str, with_rest: bool = True) -> tuple[int, int]:
        """(weight bytes, peak activation bytes) `device` needs: its strip, and the rest if it gathers."""
        own = [s for s in self.strips if s.device == device]
        w = sum(s.weight_bytes for s in own[:1])
        peak = max([s.peak_bytes for s in own[:1]] + [0])
        if device == self.gather and with_rest:
            w += self.rest_weight_bytes
            peak = max(peak, self.rest_peak_bytes)
        return int(w), int(peak)

    def memory_bytes(self, device: str, with_rest: bool = True) -> int:
        return sum(self.memory(device, with_rest))


def fixed_shapes(model: onnx.ModelProto, graph: Graph) -> dict[str, tuple[int, ...]]:
    """Every activation's shape at the planning shapes, by onnx's shape inference with the inputs fixed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    given = dict(graph.input_shapes)
    for vi in m.graph.input:
        shape = given.get(vi.name)
        if shape is None:
            spec = next((s for s in graph.inputs if s.name == vi.name), None)
            if spec is None or not all(isinstance(d, int) and d > 0 for d in spec.shape):
                continue
            shape = spec.shape
        dims = vi.type.tensor_type.shape.dim
        for d, v in zip(dims, shape):
            d.Clear()
            d.dim_value = int(v)
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - what inference cannot tell is measured below
        pass
    out = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0 for d in t.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    missing = [t for nd in graph.nodes for t in nd.outputs if t and t not in out]
    if missing:  # as the analysis does (docs/planning.md, "Graph analysis", Shapes): one run on zeros measures them
        from edgepart.packager.model import probe

        feeds = {}
        for spec in graph.inputs:
            shape = given.get(spec.name) or spec.shape
            if all(isinstance(d, int) and d > 0 for d in shape):
                feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        try:
            got = probe.run(model, missing, feeds)
            out.update({t: tuple(int(d) for d in np.shape(v)) for t, v in zip(missing, got)})
        except Exception:  # noqa: BLE001 - a tensor still unknown is reported by the node that reads it
            pass
    return out


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for nd in model.graph.node:
        if nd.op_type == "Constant":
            from edgepart.packager.model.graph import constant_value

            out[nd.output[0]] = constant_value(nd)
    return out


def _rules(model, graph, shapes, consts):
    """Per node index: its Rule, or the PlanningError saying why it cannot be tiled; tiled tensors
    are the image input and the outputs of tileable nodes that read only tiled activations."""
    from edgepart.packager.model.submodel import placed_protos

    protos = placed_protos(model, graph)
    images = [s.name for s in graph.inputs if len(shapes.get(s.name, ())) == 4]
    tiled = set(images)
    rules: dict[int, Rule | PlanningError] = {}
    for nd in graph.nodes:
        if not nd.inputs or not set(nd.inputs) <= tiled:
            if set(nd.inputs) & tiled:
                rules[nd.index] = PlanningError(
                    f"Node {nd.name!r} ({nd.op_type}) reads the image's rows together with a value computed "
                    f"otherwise; the spatial split cannot tile it.")
            continue
        try:
            rules[nd.index] = rule_for(protos[nd.name], nd.name, shapes, consts, tiled)
            tiled.update(nd.outputs[:1])
        except PlanningError as e:
            rules[nd.index] = e
    return rules, images


def _ancestors(graph: Graph, t: str) -> set[int]:
    out, todo = set(), [t]
    while todo:
        p = graph.producer.get(todo.pop(), -1)
        if p >= 0 and p not in out:
            out.add(p)
            todo.extend(graph.nodes[p].inputs)
    return out


def prefix_for(model, graph: Graph, t: str, rules, images, shapes) -> Prefix:
    """The fused prefix that ends with tensor `t`, or a PlanningError saying why it cannot."""
    anc = _ancestors(graph, t)
    for i in sorted(anc):
        r = rules.get(i)
        if isinstance(r, PlanningError):
            raise r
        if r is None:
            nd = graph.nodes[i]
            raise PlanningError(f"Node {nd.name!r} ({nd.op_type}) before {t!r} does not read the image's rows; the "
                                f"spatial split tiles layers that do.")
    reads = {i for n in anc for i in graph.nodes[n].inputs if graph.producer.get(i, -1) < 0}
    if len(reads) != 1 or not reads <= set(images):
        raise PlanningError(f"The layers up to {t!r} read {sorted(reads)}; the spatial split tiles one image input.")
    made = {o for n in anc for o in graph.nodes[n].outputs}
    leaks = sorted({i for nd in graph.nodes if nd.index not in anc for i in nd.inputs if i in made and i != t}
                   | ({o.name for o in graph.outputs} & made - {t}))
    if leaks:
        raise PlanningError(f"Cutting after {t!r} leaves {leaks[0]!r} read by later layers too (a skip across the "
                            f"cut); choose a cut no branch crosses.")
    nodes = tuple(sorted(anc))
    image = next(iter(reads))
    return Prefix(image, t, nodes, tuple(rules[i] for i in nodes),
                  tuple(i for i in range(graph.n) if i not in anc), shapes[image][2], shapes[t][2])


def split_rows(total: int, speeds: list[float]) -> list[Rows]:
    """`total` rows in contiguous shares proportional to `speeds`, each at least one (largest remainder)."""
    n = len(speeds)
    if n > total:
        raise PlanningError(f"{n} strips of an output with {total} rows: the spatial split needs at least one row "
                            f"per device. Cut earlier (tile_until) or use fewer devices.")
    w = np.asarray(speeds, dtype=np.float64)
    exact = total * w / w.sum()
    share = np.maximum(1, np.floor(exact)).astype(int)
    while share.sum() < total:  # the rows left go to the largest remainders
        share[int(np.argmax(exact - share))] += 1
    while share.sum() > total:  # the minimum of one row took them: from the most over their share
        share[int(np.argmax(np.where(share > 1, share - exact, -np.inf)))] -= 1
    edges = np.concatenate([[0], np.cumsum(share)])
    return [(int(edges[k]), int(edges[k + 1])) for k in range(n)]


def _hull(a: Rows | None, b: Rows) -> Rows:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def strip_rows(graph: Graph, prefix: Prefix, rows: Rows) -> tuple[dict[str, Rows], list[NodeRows]]:
    """Walking the prefix backwards from rows `rows` of T: the rows of every tensor the strip needs,
    and what each node does (docs/spatial.md, "The halo")."""
    need: dict[str, Rows] = {prefix.until: rows}
    per: list[NodeRows] = []
    for i, rule in zip(reversed(prefix.nodes), reversed(prefix.rules)):
        nd = graph.nodes[i]
        out = need[nd.outputs[0]]
        (lo, hi), top, bottom = rule.need(out)
        per.append(NodeRows(i, (lo, hi), top, bottom, out))
        for name in rule.spatial_names:
            need[name] = _hull(need.get(name), (lo, hi))
    return need, per[::-1]


def plan_spatial(model: onnx.ModelProto, graph: Graph, cluster: Cluster, tile_until: str | None = None,
                 rest: str = "gather") -> SpatialPlan:
    """The spatial plan: the fused prefix (`tile_until` names its last node or tensor; else the cost
    model's choice), each device's strip and halo, and the estimates. `rest`: "gather" (the gathering
    device must hold the rest too) or "pipeline" (the rest is planned after, and its stages'
    memory checked with the strips then: rest.py)."""
    with_rest = rest == "gather"
    shapes = fixed_shapes(model, graph)
    consts = constants(model)
    rules, images = _rules(model, graph, shapes, consts)
    if not images:
        raise PlanningError("The spatial split tiles a 4-D image input [N, C, H, W]; this model has none at the "
                            "planning shapes (give them with --input-shape).")
    first = [nd for nd in graph.nodes if set(nd.inputs) & set(images)]
    if first and all(isinstance(rules.get(nd.index), PlanningError) or nd.index not in rules for nd in first):
        nd = first[0]
        why = rules.get(nd.index)
        raise PlanningError(f"The model's first layer {nd.name!r} ({nd.op_type}) is not spatial: "
                            f"{why if why else 'it does not map image rows to rows'} The spatial split needs a "
                            f"convolutional front.")
    # the fastest device gathers; of equally fast ones, the app's (`caller`), whose input is local there
    devices = sorted(cluster.devices, key=lambda d: (-d.gflops, d.name != cluster.caller))
    gather = devices[0].name
    if tile_until is not None:
        t = _tensor_named(graph, str(tile_until))
        cands = [prefix_for(model, graph, t, rules, images, shapes)]
    else:
        cands = []
        for nd in graph.nodes:
            r = rules.get(nd.index)
            if isinstance(r, Rule) and shapes.get(nd.outputs[0], (0, 0, 0))[2] >= len(devices):
                try:
                    cands.append(prefix_for(model, graph, nd.outputs[0], rules, images, shapes))
                except PlanningError:
                    continue
        if not cands:
            raise PlanningError("No layer of this model can end a fused prefix: every cut after a spatial layer "
                                "is crossed by a branch, or has fewer rows than devices.")
    plans = [_evaluate(graph, cluster, p, gather, shapes) for p in cands]
    fits = [sp for sp in plans if not _too_small(sp, cluster, with_rest)]
    if not fits:
        d, need = _too_small(plans[0], cluster, with_rest)[0]
        raise PlanningError(f"{d} needs {need / 2**20:,.1f} MiB for its part of the spatial split (weights and peak "
                            f"activations) and has {cluster.device(d).memory_mb:,.0f} MiB (memory_mb in the cluster "
                            f"file). Cut earlier, or use --strategy pipeline or channel.")
    plans = fits
    best = min(plans, key=lambda sp: (round(sp.latency_ms, 9), -len(sp.prefix.nodes)))
    import dataclasses

    return dataclasses.replace(best, candidates=tuple((sp.prefix.until, round(sp.latency_ms, 6)) for sp in plans))


def _too_small(sp: SpatialPlan, cluster: Cluster, with_rest: bool = True) -> list[tuple[str, int]]:
    """The devices (and what they need) whose memory cannot hold their part of `sp`."""
    return [(d.name, sp.memory_bytes(d.name, with_rest)) for d in cluster.devices
            if sp.memory_bytes(d.name, with_rest) > d.memory_bytes]


def _tensor_named(graph: Graph, name: str) -> str:
    for nd in graph.nodes:
        if nd.name == name or name in nd.outputs:
            return name if name in nd.outputs else nd.outputs[0]
    raise PlanningError(f"tile_until={name!r} names no node or tensor of the model.")


def _evaluate(graph: Graph, cluster: Cluster, prefix: Prefix, gather: str, shapes) -> SpatialPlan:
    cm = CostModel(graph, cluster)
    devs = list(cluster.devices)
    shares = split_rows(prefix.until_rows, [d.gflops for d in devs])
    consts = {c for i in prefix.nodes for c in graph.nodes[i].constants}
    weights = int(sum(graph.constant_bytes[c] for c in consts))
    strips = []
    for d, rows in zip(devs, shares):
        need, per = strip_rows(graph, prefix, rows)
        flops = 0.0
        peak = 0.0
        for nr in per:
            nd = graph.nodes[nr.node]
            h_out = shapes[nd.outputs[0]][2]
            frac = (nr.makes[1] - nr.makes[0]) / h_out
            flops += 2.0 * nd.macs * frac
            work = graph.tensor_bytes.get(nd.outputs[0], 0) * frac
            for i in nd.inputs:
                if i in need:
                    work += graph.tensor_bytes.get(i, 0) * (need[i][1] - need[i][0]) / shapes[i][2]
            peak = max(peak, work)
        inr = need[prefix.image]
        in_b = int(graph.tensor_bytes[prefix.image] * (inr[1] - inr[0]) / prefix.image_rows)
        out_b = int(graph.tensor_bytes[prefix.until] * (rows[1] - rows[0]) / prefix.until_rows)
        held = tuple(sorted(need.items()))
        strips.append(Strip(d.name, rows, inr, held, tuple(per), flops, in_b, out_b, weights, int(peak),
                            round(float(compute_ms(flops, d.gflops)), 6)))
    rest_flops = float(sum(2.0 * graph.nodes[i].macs for i in prefix.rest))
    rest_consts = {c for i in prefix.rest for c in graph.nodes[i].constants}
    rest_w = int(sum(graph.constant_bytes[c] for c in rest_consts))
    rest_peak = max([int(cm.work_bytes[i]) for i in prefix.rest] + [2 * graph.tensor_bytes.get(prefix.until, 0)])
    g = cluster.device(gather)
    rest_ms = float(compute_ms(rest_flops, g.gflops))
    finish = []
    for s in strips:
        t = s.compute_ms
        if s.device != gather:
            lk = cluster.link(gather, s.device)
            t += busy_ms(s.in_bytes, lk) + busy_ms(s.out_bytes, lk) + 2 * lk.latency_ms
        finish.append(t)
    latency = max(finish) + rest_ms + caller_io_ms(graph, cluster, gather, gather)
    whole = int(cm.stage_memory_bytes(0, graph.n))
    prefix_flops = float(sum(2.0 * graph.nodes[i].macs for i in prefix.nodes))
    return SpatialPlan(prefix, tuple(strips), gather, rest_flops, round(rest_ms, 6), rest_w, int(rest_peak),
                       round(float(latency), 6), whole, int(graph.total_param_bytes), prefix_flops)

"""Channel-parallel split (docs/architecture.md, "The three ideas"): every Conv/Gemm/MatMul layer
split by output channels across the cluster's devices, each device receiving only the input channels its rows of
the weights use, compiled into the same per-device steps and routes the agents already run.

    compile_channel(model, graph, cluster, partition) -> ChannelProgram   steps (ONNX), routes, report
    package_channel(model, graph, cluster, out_dir, partition)           bundles, like package.package
    channel_bytes(graph, partition, model)                               per split layer: dense vs used bytes

    channel_ops.py     what each op can do (rules), the model as the compiler reads it
    channel_layout.py  partitions and layouts of every tensor, and each node's decision
    channel_partial.py where a contraction's partial sums cross instead of its inputs (per device pair)
    channel_emit.py    per-device ops with local names, Gathers of channel subsets, routes
    channel_norm.py    LayerNormalization over split channels: statistics exchanged, not features

`partition` maps the output of a Conv/Gemm/MatMul to an int array [C_out] of device indices (the
cluster's order); layers it does not name get contiguous, near-equal blocks. A device's ops are
grouped into steps by level (the number of messages on the longest path reaching them), so work
that needs no communication in between is one sub-model. Codecs stay dense: a route carries
exactly the channels its receiver needs, cut out by a Gather inside the sender's step.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import helper

from edgepart.errors import PlanningError
from edgepart.plan import CALLER, Codec, Plan, Route, Step, TensorSpec

from edgepart.packager.model import submodel as emit
from edgepart.packager.bundles import StepModel, model_plan, write_bundles
from edgepart.packager.strategies.channel._emitter import Emitter
from edgepart.packager.strategies.channel._layout import BytesReport, ChannelLayout, Decision, layer_bytes, plan_layout
from edgepart.packager.strategies.channel._norm import norms_to_gather
from edgepart.packager.strategies.channel._partial import both_halves_candidates
from edgepart.packager.cluster import Cluster
from edgepart.packager.cost import compute_ms, critical_path_ms
from edgepart.packager.model.graph import Graph


@dataclass(frozen=True)
class RouteBytes:
    tensor: str
    src: str
    dst: str
    channels: int | None  # for a channel subset: how many channels it carries
    size_bytes: int  # per inference, at the planning shapes


@dataclass(frozen=True)
class ChannelReport:
    """What the compiler chose and what crosses devices: per route, per decision, per split layer."""

    routes: tuple[RouteBytes, ...]
    decisions: tuple[tuple[str, str, Decision], ...]  # (node, op, decision): all but plain per-channel ops
    layers: BytesReport
    notes: tuple[str, ...]
    latency_ms: float  # critical path of the steps, with the cluster's speeds and links
    param_bytes: tuple[tuple[str, int], ...] = ()  # per device: bytes of the weights it holds
    macs: tuple[tuple[str, int], ...] = ()  # per device: multiply-accumulates per inference
    devices: tuple[str, ...] = ()  # Decision.device indexes these
    # with the fixed costs of steps and messages (docs/planning.md, "Fixed costs"): the critical path,
    # and per device its steps, per directed link its messages (one per step and peer it sends to)
    latency_fixed_ms: float = 0.0
    steps: tuple[tuple[str, int], ...] = ()
    messages: tuple[tuple[str, str, int], ...] = ()

    @property
    def cross_device_bytes(self) -> int:
        return sum(r.size_bytes for r in self.routes if CALLER not in (r.src, r.dst))

    @property
    def caller_bytes(self) -> int:
        return sum(r.size_bytes for r in self.routes if CALLER in (r.src, r.dst))

    def to_dict(self) -> dict:
        return {
            "cross_device_bytes": self.cross_device_bytes, "caller_bytes": self.caller_bytes,
            "latency_ms": self.latency_ms, "latency_with_fixed_ms": self.latency_fixed_ms,
            "steps": dict(self.steps), "messages": [list(m) for m in self.messages], "notes": list(self.notes),
            "routes": [r.__dict__ for r in self.routes],
            "decisions": [{"node": n, "op": op, "kind": d.kind, "note": d.note,
                           "device": self.devices[d.device] if 0 <= d.device < len(self.devices) else None,
                           "options": [list(o) for o in d.options],
                           "partial_sums": [[self.devices[j], self.devices[k]] for k, j in d.partial]}
                          for n, op, d in self.decisions],
            "layers": self.layers.to_dict(),
            "param_bytes": dict(self.param_bytes), "macs": dict(self.macs),
        }



@dataclass(frozen=True, eq=False)
class ChannelProgram:
    layout: ChannelLayout
    steps: tuple[StepModel, ...]
    routes: tuple[Route, ...]
    report: ChannelReport


# -- steps -------------------------------------------------------------------------------------------

def _levels(em: Emitter) -> None:
    """Level of each op: messages on the longest path reaching it. Ops computed from constants alone
    (shape and pad arithmetic) join their first consumer's step, so they never cross a step boundary."""
    floating: set[int] = set()
    for i, op in enumerate(em.ops):
        lv = 0
        for t in op.reads:
            if t in em.made:
                src = em.ops[em.made[t]]
                lv = max(lv, src.level + (src.device != op.device))
        op.level = lv
        if all(t in em.made and em.made[t] in floating and em.ops[em.made[t]].device == op.device for t in op.reads):
            floating.add(i)
    for i in sorted(floating, reverse=True):
        users = _local_users(em, em.ops[i].node.output)
        if users:
            em.ops[i].level = min(em.ops[u].level for u in users)


def _set_dims(shape: list, axis, count) -> list:
    """`shape` with axis (or each of a tuple of axes) set to count (or the matching counts)."""
    if isinstance(axis, tuple):
        for a, c in zip(axis, count):
            shape[a] = int(c)
    elif axis is not None:
        shape[axis] = int(count)
    return shape


def _spec(em: Emitter, name: str) -> TensorSpec:
    t, axis, count = em.origin[name]
    info = em.info
    spec = info.graph.specs.get(t)
    probe = info.shapes[t]
    if spec is not None and len(spec.shape) == len(probe) and spec.shape != ("?",):
        shape = list(spec.shape)
    else:
        shape = list(probe) if t in {i.name for i in info.graph.inputs} else ["?"] * len(probe)
    return TensorSpec(name, info.dtypes[t], tuple(_set_dims(shape, axis, count)))


def _nbytes(em: Emitter, name: str) -> int:
    t, axis, count = em.origin[name]
    shape = _set_dims(list(em.info.shapes[t]), axis, count)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(em.info.dtypes[t]).itemsize


def _steps(em: Emitter, cluster: Cluster) -> list[StepModel]:
    model, g = em.info.model, em.lay.graph
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, op in enumerate(em.ops):
        groups[(op.device, op.level)].append(i)
    step_of: dict[int, tuple[int, int]] = {i: key for key, idxs in groups.items() for i in idxs}
    routed_from = {(name, src) for (name, src, _dst) in em.routes}
    out: list[StepModel] = []
    for k, dev in enumerate(em.dev):
        levels = sorted(lv for (d, lv) in groups if d == k)
        gflops = cluster.device(dev).gflops
        for i, lv in enumerate(levels):
            idxs = groups[(k, lv)]
            nodes = [em.ops[j].node for j in idxs]
            inits: dict[str, onnx.TensorProto] = {}
            for j in idxs:
                for init in em.ops[j].inits:
                    inits.setdefault(init.name, init)
            produced = {o for n in nodes for o in n.output if o}
            reads = (t for j in idxs for t in em.ops[j].reads)
            inputs = list(dict.fromkeys(t for t in reads if t not in produced and t not in inits))
            outputs = []
            for n in nodes:
                for o in n.output:
                    if not o:
                        continue
                    later = any(step_of.get(u) != (k, lv) for u in _local_users(em, [o]))
                    if later or (o, dev) in routed_from:
                        outputs.append(o)
            in_specs = tuple(_spec(em, t) for t in inputs)
            out_specs = tuple(_spec(em, t) for t in dict.fromkeys(outputs))
            name = f"step{i}@{dev}"
            m = emit.assemble(model, nodes, in_specs, out_specs, list(inits.values()), f"{g.name}_{name}",
                              f"The channel step {name}")
            macs = sum(em.ops[j].macs for j in idxs)
            out.append(StepModel(name, dev, f"step{i}.onnx", m, in_specs, out_specs, len(nodes),
                                 round(compute_ms(2.0 * macs, gflops), 6)))
    return out


def _local_users(em: Emitter, names) -> list[int]:
    """Ops on the same device that read any of `names`."""
    if not hasattr(em, "_users"):
        users: dict[str, list[int]] = defaultdict(list)
        for i, op in enumerate(em.ops):
            for t in op.reads:
                if t in em.made and em.ops[em.made[t]].device == op.device:
                    users[t].append(i)
        em._users = users
    return [u for n in names if n for u in em._users.get(n, [])]


# -- entry points --------------------------------------------------------------------------------------

def compile_channel(model: onnx.ModelProto, graph: Graph, cluster: Cluster,
                    partition: Mapping[str, np.ndarray] | None = None,
                    layout: ChannelLayout | None = None, wire_codec: str = "dense", *,
                    fewer_rounds: bool = True) -> ChannelProgram:
    """Per-device steps (as ONNX models, not yet written) and routes for a channel split (pure).

    `wire_codec` applies to float activations sent between devices, as for a pipeline (`bitmap`
    lossless, `auto` bitmap only on routes carrying a ReLU's output, `fp16`/`int8` lossy); the
    channel subsets themselves are cut inside the sender's step. `fewer_rounds=False` keeps every
    LayerNorm's statistics and every all-gather after partial sums (the plans before issue 10: for
    comparisons, docs/agents.md "Exchanges")."""
    from edgepart.packager.wire_codecs import WIRE_CODECS, float_route_codec

    if wire_codec not in WIRE_CODECS:
        raise PlanningError(f"Unknown wire codec {wire_codec!r}; choose one of: {', '.join(WIRE_CODECS)}.")
    devices = [d.name for d in cluster.devices]
    lay = layout or plan_layout(model, graph, len(devices), partition)
    first = Emitter(lay, devices, None)
    first.emit()
    # LayerNorms whose output every device reads whole: their input crosses instead of statistics
    # then output, one exchange fewer (channel_norm.py); the demand is collected again with them
    gathered = norms_to_gather(first) if fewer_rounds else frozenset()
    if gathered:
        first = Emitter(lay, devices, None, gathered)
        first.emit()
    em = Emitter(lay, devices, first.demand, gathered)
    em.emit()
    # on 2 devices, contractions exchanging partial sums both ways may send both halves at once,
    # one round fewer each (channel_partial.py): kept where that moves no more bytes in all
    halves = both_halves_candidates(lay, first.demand) if fewer_rounds else frozenset()
    both = frozenset()
    if halves:
        first2 = Emitter(lay, devices, None, gathered, halves)
        first2.emit()
        em2 = Emitter(lay, devices, first2.demand, gathered, halves)
        em2.emit()
        if _cross_bytes(em2) <= _cross_bytes(em):
            em, both = em2, halves
    _levels(em)
    steps = _steps(em, cluster)
    def codec(name: str, src: str, dst: str) -> Codec:
        # the model's tensor this route carries channels of (for partial sums: the layer's output,
        # before any activation, so `auto` keeps those dense)
        origin = em.origin[name][0]
        floating = em.info.dtypes[origin] in ("float32", "float64", "float16")
        if not floating or CALLER in (src, dst):
            return Codec()
        return float_route_codec(wire_codec, model, graph, origin)

    routes = [Route(n, s, d, codec(n, s, d)) for (n, s, d) in em.routes]
    sizes = {n: _nbytes(em, n) for n in em.origin}
    rows = tuple(RouteBytes(r.tensor, r.src, r.dst, c if isinstance(c := em.origin[r.tensor][2], int) else None,
                            sizes[r.tensor]) for r in routes)
    decisions = tuple((nd.name, nd.op_type, _noted(d, nd.outputs[0], gathered, both))
                      for nd, d in zip(graph.nodes, lay.decisions) if d.kind not in ("local", "rep") or d.note)
    params = {d: 0 for d in devices}
    for st in steps:
        params[st.device] += sum(_init_bytes(i) for i in st.model.graph.initializer)
    macs = {d: 0.0 for d in devices}
    for op in em.ops:
        macs[devices[op.device]] += op.macs
    made_by = {o.name: st.name for st in steps for o in st.outputs}
    msgs = Counter((r.src, r.dst) for r in {(made_by.get(r.tensor), r.src, r.dst): r for r in routes
                                            if CALLER not in (r.src, r.dst)}.values())
    report = ChannelReport(rows, decisions, layer_bytes(lay), lay.notes, critical_path_ms(steps, routes, sizes, cluster),
                           tuple(params.items()), tuple((d, int(round(m))) for d, m in macs.items()), tuple(devices),
                           critical_path_ms(steps, routes, sizes, cluster, fixed=True, shared=True),
                           tuple(Counter(st.device for st in steps).items()),
                           tuple((a, b, n) for (a, b), n in msgs.items()))
    return ChannelProgram(lay, tuple(steps), tuple(routes), report)


def _cross_bytes(em: Emitter) -> int:
    return sum(_nbytes(em, n) for (n, s, d) in em.routes if CALLER not in (s, d))


def _noted(d: Decision, y: str, gathered: frozenset[str], both: frozenset[str]) -> Decision:
    if y in gathered:
        return dataclasses.replace(d, note="every device reads the whole output: the input's channels cross (no "
                                           "statistics) and each device normalises the whole tensor, one exchange instead of two")
    if y in both:
        return dataclasses.replace(d, note=d.note + "; both halves at once: each device also sends its own product, "
                                           "so both hold the whole output (no all-gather next, one exchange fewer)")
    return d


def _init_bytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def channel_plan(program: ChannelProgram, graph: Graph, cluster: Cluster, steps: list[Step], model_name: str) -> Plan:
    """The Plan of a compiled channel program, its steps written (hashes known)."""
    rep = program.report
    msgs = len({(r.src, r.dst, st.name) for r in program.routes for st in steps
                if r.src == st.device and any(o.name == r.tensor for o in st.outputs)})
    return model_plan("channel", graph, cluster, steps, program.routes, model_name, "latency",
                      (("latency_ms", rep.latency_ms), ("cross_device_bytes", float(rep.cross_device_bytes)),
                       ("caller_bytes", float(rep.caller_bytes)), ("messages", float(msgs))))


@dataclass(frozen=True)
class PackagedChannel:
    plan: Plan
    program: ChannelProgram
    out_dir: Path
    bundle_dirs: dict[str, Path]

    @property
    def report(self) -> ChannelReport:
        return self.program.report


def package_channel(
    model: onnx.ModelProto,
    graph: Graph,
    cluster: Cluster,
    out_dir: Path | str,
    partition: Mapping[str, np.ndarray] | None = None,
    model_name: str = "model",
    external_data_min_bytes: int | None = None,
    progress: Callable[[str], None] | None = None,
    wire_codec: str = "dense",
    *,
    fewer_rounds: bool = True,
) -> PackagedChannel:
    """Compile the channel split and write one bundle folder per device under `out_dir`."""
    program = compile_channel(model, graph, cluster, partition, wire_codec=wire_codec, fewer_rounds=fewer_rounds)
    limit = emit.EXTERNAL_DATA_MIN_BYTES if external_data_min_bytes is None else external_data_min_bytes
    plan, dirs = write_bundles(program.steps, lambda steps: channel_plan(program, graph, cluster, steps, model_name),
                               Path(out_dir), limit, progress)
    return PackagedChannel(plan, program, Path(out_dir), dirs)


def channel_bytes(graph: Graph, partition: Mapping[str, np.ndarray] | None, model: onnx.ModelProto,
                  n_devices: int | None = None) -> BytesReport:
    """Bytes crossing devices per inference for each split layer, dense vs only the used channels.

    `model` carries the weights (zeroed columns cut traffic) and attributes; `n_devices` defaults to
    the largest device index in `partition` + 1."""
    if n_devices is None:
        if not partition:
            raise PlanningError("channel_bytes needs n_devices when no partition is given.")
        n_devices = 1 + max(int(np.max(v)) for v in partition.values())
    return layer_bytes(plan_layout(model, graph, n_devices, partition))


__all__ = ["BytesReport", "ChannelProgram", "ChannelReport", "PackagedChannel", "RouteBytes", "channel_bytes",
           "channel_plan", "compile_channel", "package_channel"]

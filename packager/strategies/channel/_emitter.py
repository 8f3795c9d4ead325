"""Channel layout -> per-device programs: ONNX steps and the routes between them (the Plan agents run).

Every node becomes ops on the devices that compute it, with device-local tensor names:

    t@dev          dev's piece of a split tensor t (its channels, ascending), or a recomputed shape
    t@src>dst      the channels of t that dst needs from src, cut out on src by a Gather with
                   constant indices, so the wire stays dense (the subset is baked into both ends)
    t@dev:in3      a local gather/concat of channels, a full gather, a partial product (…:partial)
    y@src>dst:partial   src's partial products for dst's output channels of y (sent instead of inputs)
    x@dev:stats    dev's per-token (mean, variance) of its channels of x, sent to every peer
    t@dev:whole    all of split t on dev, computed there (a LayerNorm over its gathered input, or an
                   elementwise op of such): readers on dev take their channels from it
    y@dev:own      dev's own product of its rows of y; on 2 devices sent with the partial sums
    t              a whole tensor keeps its model name (model inputs and outputs, whole-op results)

What crosses devices is found by asking for tensors: `deliver(t, k, channels)` adds the Gathers,
routes and Concats that put those channels of t on device k. The program is emitted twice: the
first pass only records which channels each (tensor, sender, receiver) pair is asked for, the
second sends their union once and lets every consumer take its subset locally.

A LayerNormalization over the split axis is emitted by channel_norm (statistics cross, not
features); partial products sent instead of input channels by channel_partial; per-channel nodes on
each device's own channels by _local.py.

Ops are then grouped into steps: an op's level is the number of messages on the longest path
that reaches it, and a device's ops of one level form one step (one sub-model). Consecutive work
with no communication in between is one step; each step sends at most one message per peer.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepart.plan import CALLER

from edgepart.packager.strategies.channel._layout import CALLER_DEV, ChannelLayout, Rep, Split, Whole
from edgepart.packager.strategies.channel._local import emit_local
from edgepart.packager.strategies.channel._norm import emit_norm
from edgepart.packager.strategies.channel._ops import attr
from edgepart.packager.strategies.channel._partial import emit_both_halves, emit_partials, emit_sum
from edgepart.packager.model.graph import captured_inputs


@dataclass
class _Op:
    device: int
    node: onnx.NodeProto
    inits: list[onnx.TensorProto]
    reads: list[str]  # activations it reads: its inputs and names its subgraphs capture
    macs: float = 0.0
    level: int = 0


# -- the emitter -------------------------------------------------------------------------------------

class Emitter:
    def __init__(self, lay: ChannelLayout, devices: list[str], demand: dict | None,
                 gather_norm: frozenset[str] = frozenset(), allreduce: frozenset[str] = frozenset()):
        self.lay, self.info, self.dev = lay, lay.info, devices
        self.gather_norm = gather_norm  # LayerNorm outputs computed whole on each device (channel_norm.py)
        self.whole_on: dict[tuple[str, int], str] = {}  # (split tensor, device) -> its whole there
        # contractions whose partial sums are exchanged both ways on 2 devices and whose own products
        # travel with them, so each device sums the whole output (channel_partial.py, "both halves")
        self.allreduce = allreduce
        self.own_of: dict[tuple[str, int], str] = {}  # (y, k) -> k's own product of its rows of y
        self.partial_of: dict[tuple[str, int, int], str] = {}  # (y, j, k) -> j's partial for k's rows
        self.collect = demand is None
        self.demand: dict[tuple[str, int, int], set[int]] = defaultdict(set) if demand is None else demand
        self.ops: list[_Op] = []
        self.made: dict[str, int] = {}  # local name -> index of the op that makes it
        self.routes: dict[tuple[str, str, str], None] = {}
        self.origin: dict[str, tuple[str, int | None, int | None]] = {}  # name -> (tensor, axis, channels)
        self.taken: set[str] = set(lay.graph.producer) | set(lay.graph.constant_bytes)
        self.piece: dict[tuple[str, int], str] = {}
        self.cache: dict[tuple, str] = {}
        self.sent: dict[tuple[str, int, int], tuple[str, np.ndarray]] = {}
        self.n_new = 0
        for i in lay.graph.inputs:
            self.origin[i.name] = (i.name, None, None)

    # -- names, constants, ops ---------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            i += 1
            name = f"{base}~{i}"
        self.taken.add(name)
        return name

    def const(self, arr: np.ndarray, hint: str) -> tuple[str, onnx.TensorProto]:
        name = self.fresh(hint)
        return name, numpy_helper.from_array(np.ascontiguousarray(arr), name)

    def copy_const(self, name: str) -> onnx.TensorProto:
        if name in self.info.inits:
            return self.info.inits[name]
        return numpy_helper.from_array(self.info.array(name), name)

    def op(self, k: int, op_type: str | onnx.NodeProto, inputs, outputs, inits=(), macs: float = 0.0,
           origins=None, **attrs) -> None:
        if isinstance(op_type, onnx.NodeProto):
            node = copy.deepcopy(op_type)
            del node.input[:], node.output[:]
            node.input.extend(inputs)
            node.output.extend(outputs)
            for key, v in attrs.items():
                kept = [a for a in node.attribute if a.name != key]
                del node.attribute[:]
                node.attribute.extend(kept + [helper.make_attribute(key, v)])
        else:
            node = helper.make_node(op_type, list(inputs), list(outputs), **attrs)
        self.n_new += 1
        node.name = f"{node.name or node.op_type}@{self.dev[k]}#{self.n_new}"
        reads = [t for t in inputs if t and t not in {i.name for i in inits}]
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            reads += [t for t in captured_inputs(node) if not self.info.is_const(t)]
        self.ops.append(_Op(k, node, list(inits), list(dict.fromkeys(reads)), macs))
        for o, origin in zip(outputs, origins or [None] * len(outputs)):
            if o:
                self.made[o] = len(self.ops) - 1
                if origin is not None:
                    self.origin[o] = origin

    def route(self, name: str, src: int, dst: int) -> None:
        s = CALLER if src == CALLER_DEV else self.dev[src]
        d = CALLER if dst == CALLER_DEV else self.dev[dst]
        if s != d:
            self.routes[(name, s, d)] = None

    # -- putting channels where they are needed ----------------------------------------------------
    def holding(self, t: str, j: int) -> str:
        """The name of what device j holds of t (its piece, or the whole tensor)."""
        lt = self.lay.layouts[t]
        return t if isinstance(lt, Whole) else self.piece[(t, j)]

    def deliver(self, t: str, k: int, chans: np.ndarray | None = None, axis: int | None = None) -> str:
        """The name, on device k, of tensor t restricted to channels `chans` along `axis`, in that
        order (chans None: the whole tensor)."""
        lt = self.lay.layouts[t]
        if isinstance(lt, Split):
            if chans is not None and axis == lt.axis:
                return self.collect_channels(t, lt, k, np.asarray(chans))
            base = self.full(t, k)
        elif isinstance(lt, Rep):
            base = self.materialize(t, k)
        elif lt.device == CALLER_DEV:
            self.route(t, CALLER_DEV, k)
            base = t
        elif chans is not None and lt.device != k:
            c = self.info.shapes[t][axis]
            return self.collect_channels(t, Split(axis, np.full(c, lt.device)), k, np.asarray(chans))
        else:
            self.route(t, lt.device, k)
            base = t
        if chans is None:
            return base
        return self.take(k, base, t, np.asarray(chans), axis, np.arange(self.info.shapes[t][axis]))

    def take(self, k: int, name: str, t: str, chans: np.ndarray, axis: int, within: np.ndarray,
             out: str | None = None) -> str:
        """Channels `chans` of t (global indices) out of `name` on device k, which holds `within`."""
        pos = np.searchsorted(within, chans) if np.all(np.diff(within) > 0) else \
            np.array([int(np.flatnonzero(within == c)[0]) for c in chans], dtype=np.int64)
        if len(pos) == len(within) and np.array_equal(pos, np.arange(len(within))):
            return name
        key = ("take", name, k, axis, pos.tobytes())
        if key not in self.cache:
            res = out or self.fresh(f"{t}@{self.dev[k]}:in")
            idx, init = self.const(pos.astype(np.int64), f"{res}:idx")
            self.op(k, "Gather", [name, idx], [res], [init], origins=[(t, axis, len(chans))], axis=int(axis))
            self.cache[key] = res
        return self.cache[key]

    def collect_channels(self, t: str, lt: Split, k: int, chans: np.ndarray) -> str:
        """Channels `chans` of split t on device k: local ones taken, remote ones received, concatenated."""
        key = ("collect", t, k, lt.axis, chans.tobytes())
        if key in self.cache:
            return self.cache[key]
        whole = self.whole_on.get((t, k))
        if whole is not None:  # k computed all of t itself: take the channels, receive nothing
            self.cache[key] = self.take(k, whole, t, chans, lt.axis, np.arange(len(lt.owner)))
            return self.cache[key]
        own = lt.owner[chans]
        parts, order = [], []
        for j in dict.fromkeys(own.tolist()):
            sel = chans[own == j]
            if j == k:
                parts.append(self.take(k, self.holding(t, k), t, sel, lt.axis, lt.of(k)))
            else:
                parts.append(self.receive(t, lt, j, k, sel))
            order.extend(sel.tolist())
        if len(parts) == 1:
            res = parts[0]
        else:
            res = self.fresh(f"{t}@{self.dev[k]}:in")
            self.op(k, "Concat", parts, [res], origins=[(t, lt.axis, len(order))], axis=int(lt.axis))
        res = self.take(k, res, t, chans, lt.axis, np.asarray(order))
        self.cache[key] = res
        return res

    def receive(self, t: str, lt: Split, j: int, k: int, sel: np.ndarray) -> str:
        """Channels `sel` of t, held by device j, on device k: one route per (t, j, k) carrying the
        union of every request (second pass), each consumer taking its own subset locally."""
        key = (t, j, k)
        if self.collect:
            self.demand[key].update(sel.tolist())
            union = np.unique(sel)
        else:
            union = np.array(sorted(self.demand[key]), dtype=np.int64)
        if key in self.sent:
            name, union = self.sent[key]
        else:
            name = self.take(j, self.holding(t, j), t, union, lt.axis, lt.of(j),
                             out=self.fresh(f"{t}@{self.dev[j]}>{self.dev[k]}"))
            self.route(name, j, k)
            if not self.collect:
                self.sent[key] = (name, union)
        return self.take(k, name, t, sel, lt.axis, union)

    def full(self, t: str, k: int, out: str | None = None) -> str:
        """The whole of split t on device k (a gather of every piece)."""
        lt = self.lay.layouts[t]
        key = ("full", t, k)
        if key not in self.cache:
            self.cache[key] = self.collect_channels(t, lt, k, np.arange(len(lt.owner)))
        res = self.cache[key]
        if out is not None and res != out:  # a model output keeps its name
            self.op(k, "Identity", [res], [out], origins=[(t, None, None)])
            res = out
        return res

    def materialize(self, t: str, k: int) -> str:
        """Recompute a REP tensor (shape arithmetic) on device k."""
        key = ("rep", t, k)
        if key in self.cache:
            return self.cache[key]
        nd = self.lay.graph.nodes[self.lay.graph.producer[t]]
        p = self.info.protos[nd.name]
        if nd.op_type in ("Shape", "Size") and not isinstance(self.lay.layouts[p.input[0]], Rep):
            res = self._shape_of(nd, p, k)
        else:
            ins, inits = [], []
            for s in p.input:
                if not s:
                    ins.append("")
                elif self.info.is_const(s):
                    ins.append(s)
                    inits.append(self.copy_const(s))
                elif isinstance(self.lay.layouts[s], Rep):
                    ins.append(self.materialize(s, k))
                else:
                    ins.append(self.deliver(s, k))  # a model input, from the caller
            outs = [self.fresh(f"{o}@{self.dev[k]}") if o else "" for o in p.output]
            self.op(k, p, ins, outs, inits, origins=[(o, None, None) for o in p.output])
            for o, name in zip(p.output, outs):
                if o:
                    self.cache[("rep", o, k)] = name
            res = self.cache[key]
        self.cache[key] = res
        return res

    def _shape_of(self, nd, p, k: int) -> str:
        """Shape/Size of a split or whole tensor: of the local piece, patched back to the full size."""
        x, t = p.input[0], p.output[0]
        lx = self.lay.layouts[x]
        if isinstance(lx, Split):
            dev = k if lx.of(k).size else int(lx.owner[0])
            src, axis, c, c_local = self.piece[(x, dev)], lx.axis, len(lx.owner), int(lx.of(dev).size)
        else:
            dev = k if lx.device == CALLER_DEV else lx.device
            src, axis = self.deliver(x, dev), None
        if (dev, t) in self.cache:
            res = self.cache[(dev, t)]
        else:
            res = self.fresh(f"{t}@{self.dev[dev]}")
            if axis is None:
                self.op(dev, p, [src], [res], origins=[(t, None, None)])
            elif nd.op_type == "Size":
                raw, scaled = self.fresh(f"{t}@{self.dev[dev]}:local"), self.fresh(f"{t}@{self.dev[dev]}:scaled")
                cn, ci = self.const(np.array(c, dtype=np.int64), f"{res}:c")
                ln, li = self.const(np.array(c_local, dtype=np.int64), f"{res}:clocal")
                self.op(dev, "Size", [src], [raw], origins=[(t, None, None)])
                self.op(dev, "Mul", [raw, cn], [scaled], [ci], origins=[(t, None, None)])
                self.op(dev, "Div", [scaled, ln], [res], [li], origins=[(t, None, None)])
            else:
                rank = len(self.info.shapes[x])
                start, end = attr(p, "start", 0), attr(p, "end", rank)
                positions = list(range(rank))[slice(start, end)]
                raw = self.fresh(f"{t}@{self.dev[dev]}:local")
                self.op(dev, "Shape", [src], [raw], origins=[(t, None, None)], **({"start": start, "end": end}
                        if attr(p, "start") is not None or attr(p, "end") is not None else {}))
                if axis in positions:
                    mask = np.array([0 if i == axis else 1 for i in positions], dtype=np.int64)
                    add = np.array([c if i == axis else 0 for i in positions], dtype=np.int64)
                    masked = self.fresh(f"{t}@{self.dev[dev]}:masked")
                    mn, mi = self.const(mask, f"{res}:mask")
                    an, ai = self.const(add, f"{res}:add")
                    self.op(dev, "Mul", [raw, mn], [masked], [mi], origins=[(t, None, None)])
                    self.op(dev, "Add", [masked, an], [res], [ai], origins=[(t, None, None)])
                else:
                    self.op(dev, "Identity", [raw], [res], origins=[(t, None, None)])
            self.cache[(dev, t)] = res
        self.route(res, dev, k)
        return res

    # -- nodes ---------------------------------------------------------------------------------------
    def emit(self) -> None:
        g = self.lay.graph
        for nd, dec in zip(g.nodes, self.lay.decisions):
            if dec.kind == "contract":
                lo = self.lay.layouts[nd.outputs[0]]
                for k in range(self.lay.n_devices):
                    rows = lo.of(k)
                    if rows.size:
                        name = self.fresh(f"{nd.outputs[0]}@{self.dev[k]}")
                        self.contract(nd, k, rows, name, lo.axis, tuple(j for r, j in dec.partial if r == k))
                        self.piece[(nd.outputs[0], k)] = name
                if nd.outputs[0] in self.allreduce:
                    emit_both_halves(self, nd)
            elif dec.kind == "local":
                for k in range(self.lay.n_devices):
                    emit_local(self, nd, k)
            elif dec.kind == "whole":
                c = self.info.contraction(nd.name)
                if c is not None:
                    self.contract(nd, dec.device, np.arange(c.used.shape[0]), nd.outputs[0], None)
                else:
                    self.whole(nd, dec.device)
            elif dec.kind == "reduce":
                self.reduce(nd, dec.device)
            elif dec.kind == "norm":
                emit_norm(self, nd)
        for o in g.outputs:
            lt = self.lay.layouts[o.name]
            if isinstance(lt, Split):
                r = int(np.argmax(np.bincount(lt.owner, minlength=self.lay.n_devices)))
                self.full(o.name, r, out=o.name)
            elif isinstance(lt, Rep):
                r = 0
                self.op(0, "Identity", [self.materialize(o.name, 0)], [o.name], origins=[(o.name, None, None)])
            else:
                r = lt.device
            self.route(o.name, r, CALLER_DEV)

    def contract(self, nd, k: int, rows: np.ndarray, out: str, out_axis: int | None,
                 partial_from: tuple[int, ...] = ()) -> None:
        """Output channels `rows` of a contraction on device k, reading only the input channels they use;
        devices in `partial_from` send their partial products for these rows instead of their channels."""
        c = self.info.contraction(nd.name)
        cols = np.flatnonzero(c.used[rows].any(0))
        lx = self.lay.layouts[c.x]
        origin = (nd.outputs[0], out_axis, len(rows)) if out_axis is not None else (nd.outputs[0], None, None)
        sums: list[str] = []
        if partial_from and isinstance(lx, Split) and lx.axis == c.in_axis:
            cols, sums = emit_partials(self, nd, k, rows, cols, partial_from, origin)
            if cols.size == 0 and sums:  # nothing left to compute on k but the sum (and the bias)
                emit_sum(self, nd, k, rows, sums, out, origin)
                return
        if cols.size == 0:  # all-zero rows: keep one input channel so the op still has its shape
            cols = np.array([int(lx.of(k)[0]) if isinstance(lx, Split) and lx.of(k).size else 0])
        if isinstance(lx, Split) and lx.axis == c.in_axis:
            own = lx.owner[cols]
            cols = cols[np.lexsort((cols, own, own != k))]  # local channels first, then by sender
        if not sums:
            self.product(nd, k, rows, cols, out, origin, bias=True)
            return
        main = self.fresh(f"{nd.outputs[0]}@{self.dev[k]}:own")
        self.product(nd, k, rows, cols, main, origin, bias=True)
        self.own_of[(nd.outputs[0], k)] = main
        self.op(k, "Sum", [main] + sums, [out], origins=[origin])

    def product(self, nd, k: int, rows: np.ndarray, cols: np.ndarray, out: str, origin, bias: bool) -> None:
        """W[rows, cols] · x[cols] on device k (with the bias of `rows` when asked), as the node's own op."""
        c = self.info.contraction(nd.name)
        p = self.info.protos[nd.name]
        xin = self.deliver(c.x, k, cols, c.in_axis)
        w = self.info.array(c.w)
        n_out, n_in = c.used.shape
        if p.op_type == "Conv" or (p.op_type == "Gemm" and attr(p, "transB", 0)):
            wk = w[rows][:, cols]
        else:
            wk = w[cols][:, rows]
        ins, inits = [xin], []
        ins.append(self.sliced(c.w, wk, w, k, inits))
        if bias and c.b is not None:
            b = self.info.array(c.b)
            if p.op_type == "Conv":
                bk = b[rows]
            elif b.ndim >= 1 and b.shape[-1] == n_out and n_out > 1:
                bk = b[..., rows]
            else:
                bk = b
            ins.append(self.sliced(c.b, bk, b, k, inits))
        macs = nd.macs * len(rows) / n_out * len(cols) / n_in
        self.op(k, p, ins, [out], inits, macs, origins=[origin])

    def sliced(self, name: str, part: np.ndarray, whole: np.ndarray, k: int, inits: list) -> str:
        if part.shape == whole.shape and np.array_equal(part, whole):
            inits.append(self.copy_const(name))
            return name
        new, init = self.const(part, f"{name}@{self.dev[k]}")
        inits.append(init)
        return new

    def reduce(self, nd, r: int) -> None:
        """Partial products on every device holding used input channels, summed (and biased) on r."""
        c = self.info.contraction(nd.name)
        p = self.info.protos[nd.name]
        y = nd.outputs[0]
        lx = self.lay.layouts[c.x]
        cols_all = np.flatnonzero(c.used.any(0))
        if cols_all.size == 0:
            cols_all = np.array([0])
        w = self.info.array(c.w)
        n_out, n_in = c.used.shape
        partials = []
        for j in np.unique(lx.owner[cols_all]).tolist():
            sel = cols_all[lx.owner[cols_all] == j]
            xin = self.deliver(c.x, j, sel, c.in_axis)
            part = self.fresh(f"{y}@{self.dev[j]}:partial")
            macs = nd.macs * len(sel) / n_in
            if p.op_type == "Conv":
                wn, wi = self.const(w[:, sel], f"{c.w}@{self.dev[j]}")
                self.op(j, p, [xin, wn], [part], [wi], macs, origins=[(y, None, None)])
            else:
                wmat = (w.T if attr(p, "transB", 0) else w) * (attr(p, "alpha", 1.0) if p.op_type == "Gemm" else 1.0)
                wn, wi = self.const(wmat[sel].astype(w.dtype), f"{c.w}@{self.dev[j]}")
                self.op(j, "MatMul", [xin, wn], [part], [wi], macs, origins=[(y, None, None)])
            self.route(part, j, r)
            partials.append(part)
        bias = None
        if c.b is not None:
            b = self.info.array(c.b)
            if p.op_type == "Conv":
                bias = b.reshape([n_out] + [1] * (len(self.info.shapes[y]) - 2))
            else:
                bias = (b * attr(p, "beta", 1.0)).astype(b.dtype)
        if bias is None:
            self.op(r, "Sum", partials, [y], origins=[(y, None, None)])
        else:
            total = self.fresh(f"{y}@{self.dev[r]}:sum")
            bn, bi = self.const(bias, f"{y}@{self.dev[r]}:bias")
            self.op(r, "Sum", partials, [total], origins=[(y, None, None)])
            self.op(r, "Add", [total, bn], [y], [bi], origins=[(y, None, None)])

    def whole(self, nd, r: int) -> None:
        """The node as it is, on device r, its activation inputs gathered there."""
        p = self.info.protos[nd.name]
        ins, inits, rename = [], [], {}
        for s in p.input:
            if not s:
                ins.append("")
            elif self.info.is_const(s):
                ins.append(s)
                inits.append(self.copy_const(s))
            else:
                ins.append(self.deliver(s, r))
        node = p
        captured = [t for t in captured_inputs(p) if t]
        if captured:
            for t in captured:
                if self.info.is_const(t):
                    inits.append(self.copy_const(t))
                else:
                    rename[t] = self.deliver(t, r)
            node = copy.deepcopy(p)
            for a in node.attribute:
                for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    _rename_captures(sg, rename)
        self.op(r, node, ins, list(p.output), inits, nd.macs, origins=[(o, None, None) for o in p.output])


def _rename_captures(g: onnx.GraphProto, rename: dict[str, str]) -> None:
    defined = {i.name for i in g.input} | {i.name for i in g.initializer}
    for n in g.node:
        for i, t in enumerate(n.input):
            if t in rename and t not in defined:
                n.input[i] = rename[t]
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_captures(sg, {k: v for k, v in rename.items() if k not in defined})
        defined.update(n.output)

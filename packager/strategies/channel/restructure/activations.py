"""What RePurpose and DISCO work on: the split layers of a model, their weights as [C_out, C_in, K],
and the calibration activations around them.

    find_layers(model, graph, n_devices) -> [Layer]   Conv (group 1) / Gemm / MatMul with constant weights
    get_weights / set_weights                          read and write them in the ONNX model
    collect(model, calib, layers, ...) -> Samples      inputs (im2col for convs) and outputs per layer
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from edgepart.packager.strategies.channel._layout import Split, Whole, plan_layout
from edgepart.packager.strategies.channel._ops import ModelInfo, attr
from edgepart.packager.model.graph import Graph

log = logging.getLogger("edgepart")


# -- the layers ----------------------------------------------------------------------------------------

@dataclass(eq=False)
class Layer:
    """A Conv (group 1, 2-D), Gemm or MatMul with constant weights: y[o] = sum_c,k W[o,c,k] x[c,k] + b[o]."""

    index: int  # topological position in the graph
    node: str
    op: str
    x: str
    y: str
    w: str
    b: str | None
    in_channels: int
    out_channels: int
    kind: str  # the channel compiler's decision in the default layout: contract | reduce | whole
    bytes_per_channel: float  # of its input, at the planning shapes
    proto: onnx.NodeProto
    per_sample: int  # output positions per sample (conv: Ho*Wo; matmul: the rows before the channel axis)
    w_shape: tuple[int, ...]
    in_bytes: int  # of x and y for one sample, at the planning shapes
    out_bytes: int
    in_owner: np.ndarray | None = None  # device of each input channel; None: not split (caller / recomputed)
    out_owner: np.ndarray | None = None

    def patches(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """[P, C_in, K] inputs of the output positions `idx` (flat over sample and spatial positions)."""
        if self.op != "Conv":
            return x.reshape(-1, self.in_channels)[idx][:, :, None]
        kh, kw, (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.conv_geometry(x.shape)
        ho, wo = self.out_hw(x.shape)
        n, r = np.divmod(idx, ho * wo)
        oy, ox = np.divmod(r, wo)
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        rows = (oy * sh)[:, None] + np.arange(kh) * dh
        cols = (ox * sw)[:, None] + np.arange(kw) * dw
        c = np.arange(x.shape[1])
        p = xp[n[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
        return p.reshape(len(idx), x.shape[1], kh * kw)

    def rows(self, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """[P, C_out] outputs at positions `idx`."""
        if self.op != "Conv":
            return y.reshape(-1, self.out_channels)[idx]
        return y.reshape(y.shape[0], self.out_channels, -1).transpose(0, 2, 1).reshape(-1, self.out_channels)[idx]

    def channel_sq(self, x: np.ndarray) -> np.ndarray:
        """Sum of squares of each input channel over a batch."""
        if self.op == "Conv":
            return np.einsum("nchw,nchw->c", x, x, dtype=np.float64)
        x2 = x.reshape(-1, self.in_channels).astype(np.float64)
        return (x2 * x2).sum(0)

    def conv_geometry(self, shape):
        kernel = list(attr(self.proto, "kernel_shape", [])) or None
        kh, kw = kernel or self.w_shape[2:]
        strides = list(attr(self.proto, "strides", [1, 1]))
        dil = list(attr(self.proto, "dilations", [1, 1]))
        pads = list(attr(self.proto, "pads", [0, 0, 0, 0]))
        auto = attr(self.proto, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for i, (size, k, s, d) in enumerate(zip(shape[2:], (kh, kw), strides, dil)):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small, big = total // 2, total - total // 2
                pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        return kh, kw, strides, dil, (pads[0], pads[1], pads[2], pads[3])

    def out_hw(self, shape) -> tuple[int, int]:
        kh, kw, (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.conv_geometry(shape)
        return ((shape[2] + pt + pb - (kh - 1) * dh - 1) // sh + 1, (shape[3] + pl + pr - (kw - 1) * dw - 1) // sw + 1)


def find_layers(model: onnx.ModelProto, graph: Graph, n_devices: int, info: ModelInfo | None = None) -> list[Layer]:
    """Every Conv (group 1, 2-D) / Gemm / MatMul with constant initializer weights, in topological order."""
    info = info or ModelInfo(model, graph)
    lay = plan_layout(model, graph, n_devices, None, info)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for nd, dec in zip(graph.nodes, lay.decisions):
        c = info.contraction(nd.name)
        if c is None or dec.kind not in ("contract", "reduce", "whole") or c.w not in inits:
            continue
        if c.b is not None and c.b not in inits:
            continue
        p = info.protos[nd.name]
        x_shape, y_shape = info.shapes[c.x], info.shapes[nd.outputs[0]]
        if nd.op_type == "Conv" and len(x_shape) != 4:
            continue
        if nd.op_type != "Conv" and c.in_axis != len(x_shape) - 1:
            continue
        per = int(np.prod(y_shape[2:])) if nd.op_type == "Conv" else int(np.prod(x_shape[1:-1], dtype=np.int64))
        L = Layer(nd.index, nd.name, nd.op_type, c.x, nd.outputs[0], c.w, c.b, c.used.shape[1], c.used.shape[0],
                  dec.kind, info.bytes_per_channel(c.x, c.in_axis), p, per, tuple(info.array(c.w).shape),
                  graph.tensor_bytes.get(c.x, 0), graph.tensor_bytes.get(nd.outputs[0], 0))
        out.append(L)
    return out


def set_owners(model, graph, n, partition, info, layers: Sequence[Layer]) -> None:
    """Set each layer's input and output owners, as the compiler lays them out for `partition`."""
    lay = plan_layout(model, graph, n, partition, info)
    for L in layers:
        lx, ly = lay.layouts.get(L.x), lay.layouts.get(L.y)
        L.in_owner = None
        if isinstance(lx, Split) and lx.owner.shape == (L.in_channels,):
            L.in_owner = lx.owner
        elif isinstance(lx, Whole) and lx.device >= 0:
            L.in_owner = np.full(L.in_channels, lx.device)
        L.out_owner = ly.owner if isinstance(ly, Split) and ly.owner.shape == (L.out_channels,) else None


# -- weights as [C_out, C_in, K] -------------------------------------------------------------------------

def get_weights(model: onnx.ModelProto, L: Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """(W [C_out, C_in, K] float64, bias [C_out] or None) of a layer, Gemm's alpha/beta folded in."""
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[L.w]).astype(np.float64)
    b = numpy_helper.to_array(inits[L.b]).astype(np.float64).reshape(-1) if L.b else None
    if L.op == "Conv":
        return w.reshape(w.shape[0], w.shape[1], -1), b
    if L.op == "Gemm":
        w = (w if attr(L.proto, "transB", 0) else w.T) * attr(L.proto, "alpha", 1.0)
        if b is not None:
            b = np.broadcast_to(b * attr(L.proto, "beta", 1.0), (L.out_channels,)).copy()
        return w[:, :, None], b
    return w.T[:, :, None], None


def set_weights(model: onnx.ModelProto, L: Layer, W: np.ndarray, b: np.ndarray | None) -> None:
    """Write W [C_out, C_in, K] (and a bias, added to a Conv/Gemm that had none) back into `model`."""
    inits = {i.name: i for i in model.graph.initializer}
    old = numpy_helper.to_array(inits[L.w])
    if L.op == "Conv":
        new = W.reshape(old.shape)
    elif L.op == "Gemm":
        w2 = W[:, :, 0] / attr(L.proto, "alpha", 1.0)
        new = w2 if attr(L.proto, "transB", 0) else w2.T
    else:
        new = W[:, :, 0].T
    inits[L.w].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), L.w))
    if b is None or L.op == "MatMul":
        return
    beta = attr(L.proto, "beta", 1.0) if L.op == "Gemm" else 1.0
    if L.b is None:
        name = f"{L.w}_bias"
        while name in inits:
            name += "_"
        model.graph.initializer.append(numpy_helper.from_array((b / beta).astype(old.dtype), name))
        node = next(nd for nd in model.graph.node if nd.name == L.node or (not nd.name and list(nd.output) == [L.y]))
        if len(node.input) > 2:
            node.input[2] = name  # an empty optional input
        else:
            node.input.append(name)
        L.b = name
    else:
        shape = numpy_helper.to_array(inits[L.b]).shape
        if int(np.prod(shape)) != L.out_channels:  # a broadcast Gemm bias: make it per neuron
            shape = (L.out_channels,)
        inits[L.b].CopyFrom(numpy_helper.from_array((b / beta).reshape(shape).astype(old.dtype), L.b))


# -- calibration data ------------------------------------------------------------------------------------

def _session(model: onnx.ModelProto, names: Sequence[str]):
    """An onnxruntime session over the part of `model` that `names` need, with `names` as outputs."""
    from edgepart.packager.model import probe

    return probe.session(probe.exposing(model, names, only_needed=True), optimize=True)


@dataclass
class Samples:
    """A layer's inputs X [P, C_in, K] and outputs Y [P, C_out] at fixed sampled output positions."""

    X: np.ndarray | None = None
    Y: np.ndarray | None = None
    sq: np.ndarray | None = None  # per input channel: sum of squares over all calibration inputs
    count: int = 0  # elements per channel summed in sq


def collect(model: onnx.ModelProto, calib: Mapping[str, np.ndarray], layers: Sequence[Layer],
            idx: Mapping[str, np.ndarray], want_x: bool = True, want_y: bool = True,
            batch_size: int = 64, batch_bytes: int = 256 << 20, x_of: set[str] | None = None) -> dict[str, Samples]:
    """Run `model` on the calibration inputs in batches and keep each layer's sampled positions.
    `x_of`: with want_x, the layers (by node) whose inputs are kept (default: all of them)."""
    xs_of = [L for L in layers if want_x and (x_of is None or L.node in x_of)]
    names = list(dict.fromkeys([L.x for L in xs_of] + [L.y for L in layers if want_y]))
    per_sample = sum(L.in_bytes for L in xs_of) + sum(L.out_bytes for L in layers if want_y)
    batch_size = int(max(1, min(batch_size, batch_bytes // max(per_sample, 1))))
    sess = _session(model, names)
    n = len(next(iter(calib.values())))
    keep_x = {L.node for L in xs_of}
    out = {L.node: Samples(sq=np.zeros(L.in_channels) if L.node in keep_x else None) for L in layers}
    parts: dict[str, tuple[list, list]] = {L.node: ([], []) for L in layers}
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        vals = dict(zip(names, sess.run(names, {k: np.asarray(v[b0:b1]) for k, v in calib.items()})))
        for L in layers:
            ix = idx[L.node]
            lo, hi = np.searchsorted(ix, [b0 * L.per_sample, b1 * L.per_sample])
            local = ix[lo:hi] - b0 * L.per_sample
            if L.node in keep_x:
                x = vals[L.x]
                parts[L.node][0].append(L.patches(x, local).astype(np.float32))
                out[L.node].sq += L.channel_sq(x)
                out[L.node].count += x.size // L.in_channels
            if want_y:
                parts[L.node][1].append(L.rows(vals[L.y], local).astype(np.float32))
    for L in layers:
        xs, ys = parts[L.node]
        out[L.node].X = np.concatenate(xs) if xs else None
        out[L.node].Y = np.concatenate(ys) if ys else None
    return out


def sample_positions(layers: Sequence[Layer], n: int, max_positions: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    idx = {}
    for L in layers:
        total = n * L.per_sample
        idx[L.node] = np.arange(total) if total <= max_positions else np.sort(
            rng.choice(total, max_positions, replace=False))
    return idx


def rel_error(X: np.ndarray, W: np.ndarray, b: np.ndarray | None, Y: np.ndarray) -> float:
    """||X.W + b - Y|| / ||Y|| over the sampled positions."""
    pred = X.reshape(len(X), -1) @ W.reshape(len(W), -1).T.astype(np.float32)
    if b is not None:
        pred += b.astype(np.float32)
    return float(np.linalg.norm(pred - Y) / max(np.linalg.norm(Y), 1e-30))

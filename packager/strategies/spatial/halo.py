"""The receptive-field arithmetic of the spatial split (docs/spatial.md, "The halo").

For every node of a fused prefix it says which input rows one output strip needs, and how the node
must be rewritten to compute exactly those output rows from exactly those input rows: a Conv or a
pool whose window reaches past the image keeps its zero (or -inf) padding only where the image
really ends, so a strip interior to the image is padded by its real neighbour rows, never by zeros.

Rows are global row indices of the whole tensor, ranges half-open `[lo, hi)`. Everything here is a
pure function of node attributes and fixed shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepart.errors import PlanningError

Rows = tuple[int, int]

ELEMENTWISE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
                         "Selu", "PRelu", "Identity", "Softplus", "Neg", "Abs", "Exp", "Sqrt", "Erf", "Cast",
                         "BatchNormalization", "Add", "Mul", "Sub", "Div", "Max", "Min", "Dropout"})
# ops that need the whole image (or drop its spatial layout): they end a fused prefix
GLOBAL = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "Flatten",
                    "Gemm", "MatMul", "Softmax", "Reshape", "Transpose", "Shape", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class Rule:
    """How one node maps rows. kind: `window` (Conv, pools, Pad: output row o reads input rows
    o*stride - top + j*dilation, j < kernel), `same` (row o reads row o of every spatial input),
    `resize` (integer upscale on H)."""

    node: str
    op: str
    kind: str
    h_in: int
    h_out: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    top: int = 0  # padding above row 0 (negative: rows cropped)
    spatial_inputs: tuple[int, ...] = (0,)  # which node inputs are spatial activations
    spatial_names: tuple[str, ...] = ()  # their names
    scale: int = 1
    linear: bool = False

    def need(self, out: Rows) -> tuple[Rows, int, int]:
        """The input rows output rows `out` need (clipped to the image) and the padding the node must
        then add above and below them."""
        a, b = out
        if self.kind == "same":
            return out, 0, 0
        if self.kind == "resize":
            s = self.scale
            if not self.linear:  # output row o is input row floor(o / s) (docs/spatial.md)
                return (a // s, (b - 1) // s + 1), 0, 0
            x0 = (a + 0.5) / s - 0.5
            x1 = (b - 1 + 0.5) / s - 0.5
            return (max(0, int(np.floor(x0))), min(self.h_in, int(np.floor(x1)) + 2)), 0, 0
        lo = a * self.stride - self.top
        hi = (b - 1) * self.stride - self.top + (self.kernel - 1) * self.dilation + 1
        return (max(lo, 0), min(hi, self.h_in)), max(0, -lo), max(0, hi - self.h_in)

    def made_from(self, held: Rows) -> Rows:
        """The output rows a resize computes from input rows `held` (before it is cropped)."""
        return held[0] * self.scale, held[1] * self.scale


def _attrs(nd: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in nd.attribute}


def rule_for(nd: onnx.NodeProto, name: str, shapes: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray],
             spatial: set[str]) -> Rule:
    """The row rule of node `nd` (named `name` in the analysis), or a PlanningError naming the node and
    its op when the arithmetic does not know it. `spatial`: the activations that are strips."""
    import dataclasses

    r = _rule(nd, name, shapes, consts, spatial)
    return dataclasses.replace(r, spatial_names=tuple(nd.input[k] for k in r.spatial_inputs))


def _rule(nd: onnx.NodeProto, name: str, shapes: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray],
          spatial: set[str]) -> Rule:
    op = nd.op_type
    if op in GLOBAL:
        raise PlanningError(f"Node {name!r} ({op}) needs the whole image (or drops its rows): it ends the fused "
                            f"prefix, which must stop before it.")
    ins = [i for i in nd.input]
    out_shape = shapes.get(nd.output[0])
    sp = tuple(k for k, i in enumerate(ins) if i in spatial)
    if not sp:
        raise PlanningError(f"Node {name!r} ({op}) reads no strip of the image; it cannot be in the fused prefix.")
    in_shape = shapes.get(ins[sp[0]])
    if in_shape is None or out_shape is None or len(in_shape) != 4 or len(out_shape) != 4:
        raise PlanningError(f"Node {name!r} ({op}) does not map a 4-D image to a 4-D image at the planning shapes "
                            f"({in_shape} -> {out_shape}); end the fused prefix before it (tile_until).")
    h_in, h_out = int(in_shape[2]), int(out_shape[2])
    at = _attrs(nd)
    if op in ("Conv", "MaxPool", "AveragePool"):
        if len(in_shape) != 4:
            raise PlanningError(f"Node {name!r} ({op}) is not 2-D; the spatial split handles 2-D images only.")
        if op == "Conv":
            w = consts.get(ins[1]) if len(ins) > 1 else None
            if w is None:
                raise PlanningError(f"Node {name!r} (Conv) has a computed weight; the spatial split needs constant weights.")
            k = int(w.shape[2])
            kw = int(w.shape[3])
        else:
            k, kw = (int(v) for v in at["kernel_shape"])
        s = int(at.get("strides", [1, 1])[0])
        d = int(at.get("dilations", [1, 1])[0])
        sw, dw, w_in = int(at.get("strides", [1, 1])[1]), int(at.get("dilations", [1, 1])[1]), int(in_shape[3])
        top, left, bottom, right = explicit_pads(at, h_in, w_in, k, kw, s, sw, d, dw)
        # the strips' nodes lose ceil_mode (their pads make H exact), so W must not need it either
        if ((h_in + top + bottom - (k - 1) * d - 1) // s + 1 != h_out
                or (w_in + left + right - (kw - 1) * dw - 1) // sw + 1 != int(out_shape[3])):
            raise PlanningError(f"Node {name!r} ({op}) rounds its output size up (ceil_mode) past the padded input; "
                                f"the spatial split cannot tile it exactly. End the fused prefix before it.")
        r = Rule(name, op, "window", h_in, h_out, k, s, d, top, sp)
        return r
    if op == "Pad":
        mode = at.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = pads_of(nd, consts)
        if mode != "constant" or pads is None or (len(ins) > 3 and ins[3]):
            raise PlanningError(f"Node {name!r} (Pad, mode {mode}) is not a constant pad with constant pads; the "
                                f"spatial split handles constant padding only.")
        return Rule(name, op, "window", h_in, h_out, top=int(pads[2]), spatial_inputs=(0,))
    if op == "Resize":
        mode = at.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctm = at.get("coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        nm = at.get("nearest_mode", b"round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        # integer scale s: nearest reads row floor(o / s) under these; linear interpolates (docs/spatial.md)
        ok_ctm = (ctm in ("half_pixel", "pytorch_half_pixel") and (mode == "linear" or nm.startswith("round"))) or \
            (ctm == "asymmetric" and mode == "nearest" and nm == "floor")
        if h_out % h_in or mode not in ("nearest", "linear") or not ok_ctm:
            raise PlanningError(f"Node {name!r} (Resize, {mode}, {ctm}) is not an integer upscale the spatial split "
                                f"knows (nearest or linear, half_pixel or asymmetric); end the fused prefix before it.")
        if shapes[nd.output[0]][3] % shapes[ins[0]][3]:
            raise PlanningError(f"Node {name!r} (Resize) scales the width by a fraction; the spatial split needs "
                                f"integer scales.")
        return Rule(name, op, "resize", h_in, h_out, spatial_inputs=(0,), scale=h_out // h_in, linear=mode == "linear")
    if op == "Concat":
        axis = int(at.get("axis", 0))
        if axis not in (1, -3) or len(sp) != len(ins):
            raise PlanningError(f"Node {name!r} (Concat on axis {axis}) joins along a spatial axis or with "
                                f"constants; the spatial split joins channels only.")
        return Rule(name, op, "same", h_in, h_out, spatial_inputs=sp)
    if op in ELEMENTWISE:
        for k, i in enumerate(ins):
            if k in sp or not i:
                continue
            c = consts.get(i)
            shp = tuple(c.shape) if c is not None else tuple(shapes.get(i, ()))
            if len(shp) >= 2 and shp[-2] != 1:
                raise PlanningError(f"Node {name!r} ({op}) reads {i!r} of shape {list(shp)}, which varies along the "
                                    f"image's rows; the spatial split needs its other operands broadcast over them.")
        if h_in != h_out:
            raise PlanningError(f"Node {name!r} ({op}) changes the number of rows; not element-wise.")
        return Rule(name, op, "same", h_in, h_out, spatial_inputs=sp)
    raise PlanningError(f"Node {name!r} ({op}) is an op the spatial split's row arithmetic does not know; end the "
                        f"fused prefix before it (tile_until), or use another strategy.")


def explicit_pads(at: dict, h: int, w: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from `pads` or `auto_pad` (ONNX Conv/pool semantics)."""
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            small = total // 2
            out.append((total - small, small) if auto == "SAME_LOWER" else (small, total - small))
        return out[0][0], out[1][0], out[0][1], out[1][1]
    if auto == "VALID":
        return 0, 0, 0, 0
    p = list(at.get("pads", [0, 0, 0, 0]))
    return int(p[0]), int(p[1]), int(p[2]), int(p[3])


def pads_of(nd: onnx.NodeProto, consts: dict[str, np.ndarray]):
    """A Pad node's pads vector (opset < 11: its attribute; later: its constant second input)."""
    at = _attrs(nd)
    if "pads" in at:
        return [int(v) for v in at["pads"]]
    if len(nd.input) > 1 and nd.input[1] in consts:
        return [int(v) for v in consts[nd.input[1]].reshape(-1)]
    return None


def rewrite(nd: onnx.NodeProto, rule: Rule, pad_top: int, pad_bottom: int, inputs: list[str], output: str,
            tag: str, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.NodeProto, list]:
    """Node `nd` reading `inputs` (the cropped strips) and making `output`, with its padding on H set to
    what the strip needs; returns it and any new initializers (a Pad's per-strip pads)."""
    new = onnx.NodeProto()
    new.CopyFrom(nd)
    new.name = f"{nd.name or rule.node}{tag}"
    del new.input[:]
    new.input.extend(inputs)
    del new.output[:]
    new.output.extend([output] + list(nd.output[1:]))
    inits = []
    if rule.op in ("Conv", "MaxPool", "AveragePool"):
        at = _attrs(nd)
        shp = shapes[nd.input[0]]
        if rule.op == "Conv":
            w = consts[nd.input[1]]
            kh, kw = int(w.shape[2]), int(w.shape[3])
        else:
            kh, kw = (int(v) for v in at["kernel_shape"])
        st = [int(v) for v in at.get("strides", [1, 1])]
        dl = [int(v) for v in at.get("dilations", [1, 1])]
        _, left, _, right = explicit_pads(at, int(shp[2]), int(shp[3]), kh, kw, st[0], st[1], dl[0], dl[1])
        keep = [a for a in new.attribute if a.name not in ("pads", "auto_pad", "ceil_mode")]
        del new.attribute[:]
        new.attribute.extend(keep + [helper.make_attribute("pads", [pad_top, left, pad_bottom, right])])
    elif rule.op == "Pad":
        pads = pads_of(nd, consts)
        rank = len(pads) // 2
        pads[2], pads[rank + 2] = pad_top, pad_bottom
        if any(a.name == "pads" for a in nd.attribute):
            keep = [a for a in new.attribute if a.name != "pads"]
            del new.attribute[:]
            new.attribute.extend(keep + [helper.make_attribute("pads", pads)])
        else:
            pname = f"{nd.name or rule.node}{tag}/pads"  # per node: Pads may share one pads initializer
            inits.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), pname))
            new.input[1] = pname
    elif rule.op == "Resize":
        out_w, in_w = shapes[nd.output[0]][3], shapes[nd.input[0]][3]
        scales = np.array([1.0, 1.0, float(rule.scale), float(out_w) / float(in_w)], dtype=np.float32)
        sname = f"{nd.name or rule.node}{tag}/scales"
        inits.append(numpy_helper.from_array(scales, sname))
        del new.input[:]
        new.input.extend([inputs[0], sname] if len(nd.input) == 2 else [inputs[0], nd.input[1], sname])
    return new, inits

"""The representative set that `edgepart profile` times when it is given neither a bundle nor a
model (docs/profile.md): one small ONNX model per operator kind of edgepart.profile, at sizes typical
of an edge vision or language model's layers. Written with onnx here, on the workstation, and shipped
in edgepart's package data (sdk/data/profile/), since a device has no onnx to build them.

    python -m edgepart.packager.profile_set sdk/data/profile      # writes them again, byte for byte
    python -m edgepart.packager.profile_set sdk/data/profile --tflite   # and their TFLite twins (converter)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(name: str, x_shape, nodes, inits, y_shape) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgepart")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def models() -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    conv = lambda i, wname, **kw: helper.make_node("Conv", [i, wname], [f"{wname}_out"], **kw)  # noqa: E731
    out = {}
    # three layers each, so the profiler sees a kind in a chain as it runs in a model
    out["conv"] = _model("conv", [1, 32, 56, 56], [
        conv("x", "w0", pads=[1, 1, 1, 1]), conv("w0_out", "w1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["w1_out", "w2"], ["y"], pads=[1, 1, 1, 1])],
        {"w0": w(32, 32, 3, 3), "w1": w(32, 32, 3, 3), "w2": w(32, 32, 3, 3)}, [1, 32, 56, 56])
    out["depthwise"] = _model("depthwise", [1, 96, 56, 56], [
        conv("x", "w0", pads=[1, 1, 1, 1], group=96), conv("w0_out", "w1", pads=[1, 1, 1, 1], group=96),
        helper.make_node("Conv", ["w1_out", "w2"], ["y"], pads=[1, 1, 1, 1], group=96)],
        {"w0": w(96, 1, 3, 3), "w1": w(96, 1, 3, 3), "w2": w(96, 1, 3, 3)}, [1, 96, 56, 56])
    out["pointwise"] = _model("pointwise", [1, 64, 56, 56], [
        conv("x", "w0"), conv("w0_out", "w1"), helper.make_node("Conv", ["w1_out", "w2"], ["y"])],
        {"w0": w(96, 64, 1, 1), "w1": w(64, 96, 1, 1), "w2": w(64, 64, 1, 1)}, [1, 64, 56, 56])
    # attention's products, both sides activations (no weights to ship): softmax(x x^T) x, 6 heads
    out["matmul"] = _model("matmul", [1, 6, 128, 64], [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]), helper.make_node("MatMul", ["x", "xt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "x"], ["y"])],
        {}, [1, 6, 128, 64])
    out["other"] = _model("other", [1, 64, 56, 56], [
        helper.make_node("Mul", ["x", "s"], ["a"]), helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["d"]), helper.make_node("Mul", ["c", "d"], ["y"])],
        {"s": w(1, 64, 1, 1), "b": w(1, 64, 1, 1)}, [1, 64, 56, 56])
    return out


def write_tflite(folder: str | Path) -> list[Path]:
    """Each ONNX model of the set in `folder` converted to TFLite (float32) beside it, and `tflite.json`:
    for each, the `io` that maps its ONNX input and output to the TFLite signature (docs/tflite.md), so
    that a device with LiteRT times the same layers on it (docs/profile.md, "LiteRT"). Uses the
    packager's converter (its environment is made on first use)."""
    import json

    from edgepart.packager.tflite import convert_step

    folder = Path(folder)
    paths, ios = [], {}
    for name in models():
        tfl, io = convert_step(folder / f"{name}.onnx", folder, step=name)
        ios[name] = [{"name": t.name, "key": t.key, "perm": list(t.perm)} for t in io]
        paths.append(tfl)
    (folder / "tflite.json").write_text(json.dumps(ios, indent=1, sort_keys=True) + "\n")
    return paths


def write(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, m in models().items():
        p = folder / f"{name}.onnx"
        p.write_bytes(m.SerializeToString())
        paths.append(p)
    return paths


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--tflite"]
    out = args[0] if args else "sdk/data/profile"
    for p in write(out) + (write_tflite(out) if "--tflite" in sys.argv else []):
        print(p, p.stat().st_size)

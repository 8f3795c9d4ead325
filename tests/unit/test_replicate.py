"""Replicating a model's first layers on every device (packager/strategies/channel/restructure/replicate.py): the rewritten
model computes the same function, its channel split is exact through the bundles, and the replicated
layers and the layers reading them send exactly nothing, at the compute the report states."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepart.errors import PlanningError
from edgepart.local import LocalCluster
from edgepart.packager.strategies.channel.compiler import channel_bytes, package_channel
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.channel.restructure import replicate, repurpose

from test_channel import ATOL, _B, cluster, run_whole  # noqa: E402  (shared helpers)

pytestmark = pytest.mark.timeout(120)

SHAPE = (1, 3, 16, 16)


def mobile(seed: int = 0) -> onnx.ModelProto:
    """A MobileNet-like net: stem conv + BN + Clip, depthwise + Relu + per-channel Mul, a project conv;
    an inverted-residual block whose Add reads the project conv's output; a head."""
    b = _B(seed)
    s = b.n("Clip", [b.bn(b.conv("x", 3, 8, bias=True), 8), b.c(0.0, np.float32), b.c(6.0, np.float32)])
    s = b.n("Relu", [b.conv(s, 8, 8, group=8)])
    s = b.n("Mul", [s, b.c(b.rng.uniform(0.5, 1.5, (1, 8, 1, 1)), np.float32)])
    p0 = b.conv(s, 8, 4, k=1)  # the expand conv and the residual Add read it
    e = b.n("Relu", [b.conv(p0, 4, 16, k=1)])
    e = b.n("Relu", [b.conv(e, 16, 16, group=16)])
    r = b.n("Add", [b.conv(e, 16, 4, k=1), p0])
    h = b.n("Relu", [b.conv(r, 4, 12, k=1)])
    g = b.n("Flatten", [b.n("GlobalAveragePool", [h])])
    y = b.n("Gemm", [g, b.w((5, 12)), b.w((5,), 0.1)], transB=1)
    return b.model("mobile", ["N", *SHAPE[1:]], y, ["N", 5])


def node(model, op: str):
    return next(nd for nd in model.graph.node if nd.op_type == op)


def macs_of(model, names) -> int:
    g = analyse(model, {"x": SHAPE})
    return sum(nd.macs for nd in g.nodes if nd.name in names)


def test_prefixes_end_where_only_contractions_read():
    m = mobile()
    r = replicate(m, 2, 1.0, input_shapes={"x": SHAPE})
    # the Add of the residual reads the first project conv: a prefix cannot stop between them, and the
    # head's Flatten cannot be replicated: so the prefixes end after the Mul and after block 1's Add
    ends = [t for t, _ in r.report.options]
    assert ends == [node(m, "Mul").output[0], node(m, "Add").output[0]], ends
    assert [f for _, f in r.report.options] == sorted(f for _, f in r.report.options)
    after_add = next(nd for nd in m.graph.node if node(m, "Add").output[0] in nd.input)
    assert r.report.nodes[-1] == node(m, "Add").name and r.report.readers == (after_add.name,)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("cap", ["short", "long"])
def test_replicated_split_is_exact_and_sends_nothing_there(n, cap, tmp_path):
    m = mobile(n)
    shapes = {"x": SHAPE}
    opts = replicate(m, n, 1.0, input_shapes=shapes).report.options
    frac = opts[0][1] if cap == "short" else opts[-1][1]
    r = replicate(m, n, frac + 1e-9, input_shapes=shapes)
    assert r.report.nodes and r.report.nodes[-1] == node(m, "Mul" if cap == "short" else "Add").name
    onnx.checker.check_model(r.model, full_check=True)

    x = np.random.default_rng(n).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    (want,) = run_whole(m, {"x": x}).values()
    assert np.max(np.abs(next(iter(run_whole(r.model, {"x": x}).values())) - want)) <= ATOL
    package_channel(r.model, analyse(r.model, shapes), cluster(n), tmp_path / "dist", r.partition, model_name="mobile")
    got = LocalCluster.from_dist(tmp_path / "dist").run({"x": x})
    assert np.max(np.abs(next(iter(got.values())) - want)) <= ATOL

    # what the replicated layers and their readers sent before is exactly what is saved now
    before = channel_bytes(analyse(m, shapes), None, m, n)
    gone = set(r.report.nodes) | set(r.report.readers)
    saved = sum(x.sent_bytes for x in before.layers if x.node in gone)
    assert saved > 0 and r.report.bytes_before == before.sent_bytes
    assert r.report.bytes_after == before.sent_bytes - saved
    after = channel_bytes(analyse(r.model, shapes), r.partition, r.model, n)
    assert after.sent_bytes == r.report.bytes_after
    assert all(x.sent_bytes == 0 for x in after.layers if x.node in gone)
    # the compute: each device does the prefix whole instead of 1/n of it
    assert r.report.extra_macs == round(macs_of(m, set(r.report.nodes)) * (n - 1) / n)
    assert r.report.extra_fraction == pytest.approx(frac, rel=1e-4)  # extra_macs is rounded to a whole MAC


def test_a_cap_below_every_prefix_changes_nothing():
    m = mobile()
    r = replicate(m, 2, 0.0, input_shapes={"x": SHAPE})
    assert r.report.nodes == () and r.report.bytes_after == r.report.bytes_before
    assert r.model is m and "no prefix of layers fits" in r.report.summary()


def test_a_model_that_starts_with_something_else_has_no_prefix():
    b = _B(1)
    h = b.n("Flatten", ["x"])
    y = b.n("Gemm", [b.n("Relu", [b.n("Gemm", [h, b.w((8, 48)), b.w((8,), 0.1)], transB=1)]), b.w((4, 8))], transB=1)
    m = b.model("mlp", [1, 3, 4, 4], y, [1, 4])
    r = replicate(m, 2, 1.0, input_shapes={"x": (1, 3, 4, 4)})
    assert r.report.options == () and "no prefix of the model can be replicated" in r.report.summary()


@pytest.mark.parametrize("kw,needle", [({"max_extra_macs": 1.5}, "in 0..1"), ({"max_extra_macs": -0.1}, "in 0..1"),
                                       ({"n_devices": 1}, "at least 2 devices")])
def test_bad_arguments_say_what_to_do(kw, needle):
    args = {"n_devices": 2, "max_extra_macs": 0.1, **kw}
    with pytest.raises(PlanningError, match=needle):
        replicate(mobile(), args["n_devices"], args["max_extra_macs"], input_shapes={"x": SHAPE})


def test_lowrank_after_replicating_keeps_the_original_budget(tmp_path):
    m = mobile(4)
    calib = {"x": np.random.default_rng(0).standard_normal((48, *SHAPE[1:])).astype(np.float32)}
    dense = channel_bytes(analyse(m, {"x": SHAPE}), None, m, 2)
    r = repurpose(m, calib, 2, 0.3, method="lowrank", replicate=1.0, max_positions=4096)
    assert r.report.replicated is not None and r.report.replicated.nodes
    assert r.report.dense_bytes == dense.dense_bytes  # the budget's measure: the original model's dense split
    assert r.report.used_bytes <= 0.3 * dense.dense_bytes + 1
    assert r.report.to_dict()["replicated"]["nodes"] == list(r.report.replicated.nodes)
    # the split of the restructured model equals the restructured model
    x = calib["x"][:2]
    package_channel(r.model, analyse(r.model, {"x": SHAPE}), cluster(2), tmp_path / "dist", r.partition, model_name="m")
    got = next(iter(LocalCluster.from_dist(tmp_path / "dist").run({"x": x}).values()))
    assert np.max(np.abs(got - next(iter(run_whole(r.model, {"x": x}).values())))) <= ATOL
    with pytest.raises(PlanningError, match="method 'lowrank'"):
        repurpose(m, calib, 2, 0.3, method="prune", replicate=0.1)


def _tiny(nodes, inits, out_shape, weights_as_inputs=False) -> onnx.ModelProto:
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32), n)
               for n, s in inits]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if weights_as_inputs:  # as older exporters wrote them (keep_initializers_as_inputs)
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inits]
    g = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], tensors)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _same(m: onnx.ModelProto, r) -> None:
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert [i.name for i in r.model.graph.input] == ["x"]
    a, b = run_whole(m, x)["y"], run_whole(r.model, x)["y"]
    assert np.max(np.abs(a - b)) <= ATOL


def test_what_cannot_pick_a_copy_ends_no_prefix():
    conv = helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1])
    # a MatMul of a conv output contracts a spatial axis, not the channels: it cannot pick a copy
    m = _tiny([conv, helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])],
              [("w1", (4, 3, 3, 3)), ("w2", (8, 5))], [1, 4, 8, 5])
    r = replicate(m, 2, 1.0, input_shapes={"x": (1, 3, 8, 8)})
    assert r.report.nodes == () and r.model is m
    # spatial attention: a 1-channel map broadcast over the channels cannot be laid out in copies
    m = _tiny([conv, helper.make_node("Conv", ["a", "wa"], ["s0"]), helper.make_node("Sigmoid", ["s0"], ["s"]),
               helper.make_node("Mul", ["a", "s"], ["m"]), helper.make_node("Conv", ["m", "w2"], ["y"])],
              [("w1", (4, 3, 3, 3)), ("wa", (1, 4, 1, 1)), ("w2", (5, 4, 1, 1))], [1, 5, 8, 8])
    r = replicate(m, 2, 1.0, input_shapes={"x": (1, 3, 8, 8)})
    assert r.report.nodes == () and r.model is m


def test_weights_listed_as_inputs_are_dropped_with_their_initializers():
    m = _tiny([helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
               helper.make_node("Relu", ["a"], ["r"], name="r"), helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")],
              [("w1", (4, 3, 3, 3)), ("w2", (5, 4, 1, 1))], [1, 5, 8, 8], weights_as_inputs=True)
    r = replicate(m, 2, 1.0, input_shapes={"x": (1, 3, 8, 8)})
    assert r.report.nodes == ("c1", "r") and r.report.readers == ("c2",)
    _same(m, r)


def test_the_rewrite_is_the_same_in_every_process(tmp_path):
    """Bundles and plan ids must not depend on Python's hash seed: the rewritten model's bytes are
    equal under two seeds."""
    import os
    import subprocess
    import sys

    onnx.save(mobile(5), str(tmp_path / "m.onnx"))
    code = ("import hashlib, onnx, sys; from edgepart.packager.strategies.channel.restructure import replicate; "
            "r = replicate(onnx.load(sys.argv[1]), 3, 1.0, input_shapes={'x': (1, 3, 16, 16)}); "
            "print(hashlib.sha256(r.model.SerializeToString()).hexdigest(), r.report.readers)")
    outs = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1 and next(iter(outs)).strip(), outs


def test_constants_may_come_first_in_element_wise_ops():
    """Mul(scale, x) and Add(bias, x), as PaddlePaddle exports them: tiled like constants that come second."""
    from onnx import numpy_helper

    m = _tiny([helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
               helper.make_node("Mul", ["s", "a"], ["m"], name="mul"), helper.make_node("Add", ["b", "m"], ["r"], name="add"),
               helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")],
              [("w1", (4, 3, 3, 3)), ("w2", (5, 4, 1, 1))], [1, 5, 8, 8])
    rng = np.random.default_rng(2)
    m.graph.initializer.extend([numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "s"),
                                numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "b")])
    r = replicate(m, 2, 1.0, input_shapes={"x": (1, 3, 8, 8)})
    assert r.report.nodes == ("c1", "mul", "add") and r.report.readers == ("c2",)
    _same(m, r)

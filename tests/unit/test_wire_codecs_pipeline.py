"""Route codecs in a pipeline plan: `package --wire-codec` marks the device-to-device float routes,
the in-process chain (verify) delivers what the wire would, bitmap is exact, fp16/int8 are close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgepart.bundle import load_dist
from edgepart.errors import PlanningError
from edgepart.inputs import random_inputs
from edgepart.local import LocalCluster
from edgepart.plan import CALLER
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.cost import CostModel
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.pipeline.compiler import package
from edgepart.packager.strategies.pipeline.planner import evaluate

from graphs import residual

CLUSTER = {"devices": [{"name": "a", "gflops": 1}, {"name": "b", "gflops": 1}],
           "links": {"default": {"bandwidth_mbps": 10}}}


def split(tmp_path: Path, codec: str):
    model = residual()
    graph = analyse(model)
    cluster = cluster_from_dict(CLUSTER)
    cut = graph.n // 2
    pp = evaluate(CostModel(graph, cluster), (cut,), ("a", "b"))
    package(model, graph, cluster, pp, tmp_path / codec, wire_codec=codec)
    bundles = load_dist(tmp_path / codec)
    feeds = random_inputs(graph.inputs, seed=3)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    got = LocalCluster.from_bundles(bundles).run(feeds)[graph.outputs[0].name]
    return next(iter(bundles.values())).plan, want, got


@pytest.mark.parametrize("codec,atol", [("dense", 1e-6), ("bitmap", 1e-6), ("fp16", 5e-2), ("int8", 2e-1)])
def test_codec_routes_and_fidelity(tmp_path, codec, atol):
    plan, want, got = split(tmp_path, codec)
    between = [r for r in plan.routes if CALLER not in (r.src, r.dst)]
    assert between and all(r.codec.kind == codec for r in between)  # every crossing tensor here is float
    assert all(r.codec.kind == "dense" for r in plan.routes if CALLER in (r.src, r.dst))
    diff = float(np.abs(want - got).max())
    assert diff <= atol, diff
    if codec in ("fp16", "int8"):
        assert diff > 0, "a lossy codec that changes nothing is not being applied"


def test_unknown_codec_is_a_clear_error(tmp_path):
    with pytest.raises(PlanningError, match="Unknown wire codec .zip.; choose one of: dense, auto, bitmap, fp16, int8"):
        split(tmp_path, "zip")


def test_auto_codec_is_bitmap_where_a_relu_output_crosses(tmp_path):
    """`auto` chooses per route: the residual model's cut tensors are Relu outputs (bitmap) and the
    model's output back to the caller stays dense; the answers are exact."""
    plan, want, got = split(tmp_path, "auto")
    model, graph = residual(), analyse(residual())
    from edgepart.packager.wire_codecs import post_relu

    between = [r for r in plan.routes if CALLER not in (r.src, r.dst)]
    assert between
    for r in between:
        assert r.codec.kind == ("bitmap" if post_relu(model, graph, r.tensor) else "dense"), r
    assert any(r.codec.kind == "bitmap" for r in between)
    assert float(np.abs(want - got).max()) <= 1e-6


def test_post_relu_knows_relu6_and_not_other_clips():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepart.packager.wire_codecs import post_relu

    nodes = [helper.make_node("Clip", ["x", "zero", "six"], ["r6"]), helper.make_node("Clip", ["r6", "one", "six"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0.0), ("one", 1.0), ("six", 6.0))]
    g = helper.make_graph(nodes, "clips", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    graph = analyse(m)
    assert [post_relu(m, graph, t) for t in ("x", "r6", "c1", "r", "y")] == [False, True, False, True, False]

"""Constants never travel as activations: what a model computes from initializers and Constant nodes
alone (a weight read through Identity, Transpose/Reshape/Cast/Unsqueeze of a weight, Shape arithmetic
on constants, Constant-node arithmetic) is folded before planning, so no route carries it, at any cut,
and the split stays exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.cost import CostModel
from edgepart.packager.model.fold import constant_only, fold_constants
from edgepart.packager.model.graph import analyse, model_sha256
from edgepart.packager.strategies.pipeline.compiler import package, prepare
from edgepart.packager.strategies.pipeline.planner import evaluate
from edgepart.packager.check.verify import verify

from graphs import constant_chains, two_in_two_out

pytestmark = pytest.mark.timeout(120)

ATOL = 1e-5


def cluster_yaml(path: Path, n_dev: int) -> Path:
    lines = ["devices:"] + [f"  - {{name: dev{i}, gflops: {1e-3 * (i + 1)}, memory_mb: 64}}" for i in range(n_dev)]
    lines += ["links:", "  default: {bandwidth_mbps: 1000, latency_ms: 0.2}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def constant_derived(model: onnx.ModelProto) -> set[str]:
    return {o for nd in constant_only(model) for o in nd.output}


def test_the_model_has_constant_only_tensors_that_unfolded_would_cross_cuts():
    """The test model is not trivially safe: without folding, cuts would carry these tensors."""
    m = constant_chains()
    derived = constant_derived(m)
    assert {"W_shared_again", "W3", "W4", "bias", "row", "target", "scale", "ones"} <= derived
    g = analyse(m, {"x": (2, 8)})
    crossing = {t for c in range(1, g.n) for t in g.crossing(c)}
    assert {"W_shared_again", "W3", "W4", "bias", "row", "target", "scale", "ones"} <= crossing


def test_folding_leaves_no_constant_only_node_and_computes_the_same():
    m = constant_chains()
    f = fold_constants(m)
    assert constant_only(f) == []
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(f, {"x": x})[0], run(m, {"x": x})[0])
    onnx.checker.check_model(f, full_check=True)
    # the shared weight read through Identity is the weight itself, stored once
    inits = {i.name for i in f.graph.initializer}
    assert "W_shared" in inits and "W_shared_again" not in inits
    assert [list(nd.input) for nd in f.graph.node if nd.name == "mm_shared_last"] == [["a4", "W_shared"]]
    # what only folded nodes read is gone (W3_t, W4_flat, bias64, vec...); the results are initializers
    assert not {"W3_t", "W4_flat", "bias64", "vec", "w4_shape"} & inits
    assert {"W3", "W4", "bias", "row", "target", "scale", "ones"} <= inits
    assert not [nd for nd in f.graph.node if nd.op_type == "Constant"]


def test_a_model_without_constant_only_nodes_is_left_as_it_is():
    m = two_in_two_out()
    assert fold_constants(m) is m


def test_random_generators_and_model_outputs_stay_nodes():
    """A random draw must be made once per request and shared; a model output must be computed by a node."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    nodes = [helper.make_node("RandomUniform", [], ["r"], name="draw", shape=[1, 4], seed=1.0),
             helper.make_node("Add", ["x", "r"], ["h"], name="add_noise"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="mm"),
             helper.make_node("Identity", ["W"], ["w_out"], name="weight_out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [4, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert constant_only(m) == []
    assert fold_constants(m) is m


@pytest.mark.parametrize("n_dev", [2, 3, 4])
def test_planned_split_routes_no_constant_and_is_exact(tmp_path, n_dev):
    m = constant_chains()
    path = tmp_path / "model.onnx"
    onnx.save(m, str(path))
    prep = prepare(path, cluster_yaml(tmp_path / "cluster.yaml", n_dev), "throughput", {"x": (2, 8)})
    assert len(prep.pipeline.stages) == n_dev
    assert prep.graph.sha256 == model_sha256(m)  # the plan names the model as given, not the folded one
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist")
    routed = {r.tensor for r in res.plan.routes}
    assert not routed & constant_derived(m)
    assert not routed & {i.name for i in m.graph.initializer}
    for batch in (2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        v = verify(tmp_path / "dist", path, {"x": x}, ATOL)
        assert v.ok and v.model_matches_plan, v.max_abs_diff


def test_every_cut_routes_no_constant_and_is_exact(tmp_path):
    """Each single cut of the folded model (2 devices): nothing constant crosses, the split is exact."""
    m = constant_chains()
    path = tmp_path / "model.onnx"
    onnx.save(m, str(path))
    prep = prepare(path, cluster_yaml(tmp_path / "cluster.yaml", 2), "latency", {"x": (2, 8)})
    cost = CostModel(prep.graph, cluster_from_dict({"devices": [{"name": "dev0", "gflops": 1e-3, "memory_mb": 64},
                                                                {"name": "dev1", "gflops": 2e-3, "memory_mb": 64}]}))
    derived = constant_derived(m)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    for cut in range(1, prep.graph.n):
        assert not set(prep.graph.crossing(cut)) & derived
        pp = evaluate(cost, (cut,), ("dev0", "dev1"))
        res = package(prep.model, prep.graph, prep.cluster, pp, tmp_path / f"dist{cut}")
        assert not {r.tensor for r in res.plan.routes} & derived
        v = verify(tmp_path / f"dist{cut}", path, {"x": x}, ATOL)
        assert v.ok, (cut, v.max_abs_diff)


@pytest.mark.parametrize("n_dev", [2, 3])
def test_the_channel_split_routes_no_constant_either(tmp_path, n_dev):
    """`package --strategy channel` folds too: no route of the channel program carries a tensor
    made from constants alone, and the split is exact."""
    from edgepart.bundle import load_bundle
    from edgepart.local import LocalCluster
    from typer.testing import CliRunner

    from edgepart.cli import app

    m = constant_chains()
    path = tmp_path / "model.onnx"
    onnx.save(m, str(path))
    res = CliRunner().invoke(app, ["package", str(path), "-c", str(cluster_yaml(tmp_path / "c.yaml", n_dev)),
                                   "--strategy", "channel", "--input-shape", "x=2x8", "-o", str(tmp_path / "dist")])
    assert res.exit_code == 0, res.output
    plan = load_bundle(tmp_path / "dist" / "dev0").plan
    assert plan.strategy == "channel"
    routed = {r.tensor.split("@")[0] for r in plan.routes}
    assert not routed & constant_derived(m)
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    got = LocalCluster.from_dist(tmp_path / "dist").run({"x": x})
    for name, want in zip([o.name for o in m.graph.output], run(m, {"x": x})):
        assert np.max(np.abs(got[name] - want)) <= ATOL
    v = verify(tmp_path / "dist", path, {"x": x}, ATOL)
    assert v.ok and v.model_matches_plan

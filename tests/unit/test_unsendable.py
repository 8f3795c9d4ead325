"""Only tensors of the wire's element types cross between devices. A sequence made early and read
late (torch exports lists this way) must stay inside one stage: the planner cuts elsewhere, the
split is exact, and when too few cuts are left the error names the node and the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepart.errors import PlanningError
from edgepart.packager.strategies.pipeline.compiler import package, prepare
from edgepart.packager.strategies.pipeline.planner import blocked_cuts
from edgepart.packager.check.verify import verify

pytestmark = pytest.mark.timeout(120)

F32 = TensorProto.FLOAT


def sequence_model() -> onnx.ModelProto:
    """relu/tanh -> SequenceConstruct early; three nodes later ConcatFromSequence reads it back."""
    n = helper.make_node
    nodes = [
        n("Relu", ["x"], ["a"], name="relu_a"),
        n("Tanh", ["x"], ["b"], name="tanh_b"),
        n("SequenceConstruct", ["a", "b"], ["seq"], name="make_list"),
        n("Sigmoid", ["x"], ["s1"], name="sig1"),
        n("Relu", ["s1"], ["s2"], name="relu2"),
        n("Neg", ["s2"], ["s3"], name="neg3"),
        n("ConcatFromSequence", ["seq"], ["cat"], name="read_list", axis=1),
        n("Concat", ["cat", "s3"], ["h"], name="join", axis=1),
        n("Relu", ["h"], ["h2"], name="relu_h"),
        n("Neg", ["h2"], ["y"], name="neg_y"),
    ]
    g = helper.make_graph(nodes, "sequence", [helper.make_tensor_value_info("x", F32, ["N", 4])],
                          [helper.make_tensor_value_info("y", F32, ["N", 12])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def cluster_yaml(path: Path, n_dev: int) -> Path:
    lines = ["devices:"] + [f"  - {{name: dev{i}, gflops: {1e-6 * (i + 1):.7f}, memory_mb: 64}}" for i in range(n_dev)]
    lines += ["links:", "  default: {bandwidth_mbps: 1000, latency_ms: 0.2}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cuts_that_a_sequence_would_cross_are_blocked(tmp_path):
    path = tmp_path / "seq.onnx"
    onnx.save(sequence_model(), str(path))
    prep = prepare(path, cluster_yaml(tmp_path / "c.yaml", 2), "throughput", {"x": (2, 4)})
    order = [nd.name for nd in prep.graph.nodes]
    made, read = order.index("make_list"), order.index("read_list")
    assert set(blocked_cuts(prep.graph)) == set(range(made + 1, read + 1))
    assert set(blocked_cuts(prep.graph).values()) == {"seq"}


@pytest.mark.parametrize("n_dev", [2, 3, 4, 5])
def test_the_split_keeps_the_sequence_in_one_stage_and_is_exact(tmp_path, n_dev):
    path = tmp_path / "seq.onnx"
    onnx.save(sequence_model(), str(path))
    prep = prepare(path, cluster_yaml(tmp_path / "c.yaml", n_dev), "throughput", {"x": (2, 4)})
    assert not set(prep.pipeline.cuts) & set(blocked_cuts(prep.graph))
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist")
    assert "seq" not in {r.tensor for r in res.plan.routes}
    for batch in (2, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        v = verify(tmp_path / "dist", path, {"x": x}, 1e-6)
        assert v.ok, v.max_abs_diff


def test_too_few_usable_cuts_name_the_node_and_the_reason(tmp_path):
    path = tmp_path / "seq.onnx"
    onnx.save(sequence_model(), str(path))
    # 10 nodes, 9 cut points, 4 of them blocked: at most 6 stages
    with pytest.raises(PlanningError) as err:
        prepare(path, cluster_yaml(tmp_path / "c.yaml", 7), "throughput", {"x": (2, 4)})
    msg = str(err.value)
    assert "'seq' (made by node 'make_list', SequenceConstruct)" in msg and "not a tensor" in msg, msg
    assert "Use at most 6 devices" in msg, msg

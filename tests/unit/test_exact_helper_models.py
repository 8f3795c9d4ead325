"""Splitting is exact: every helper model, cut for 2, 3 and 4 unequal devices (planned, and at
forced cut positions), packaged into bundles, run chained in onnxruntime and compared with the
original model run whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepart.bundle import load_dist
from edgepart.inputs import random_inputs
from edgepart.local import LocalCluster
from edgepart.plan import CALLER
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.cost import CostModel
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.pipeline.compiler import package, prepare
from edgepart.packager.strategies.pipeline.planner import OBJECTIVES, evaluate
from edgepart.packager.check.verify import verify

from graphs import HELPER_MODELS, SHARED_WEIGHT, shared_weight, symbolic_batch

pytestmark = pytest.mark.timeout(120)

ATOL = 1e-5
PLAN_SHAPES = {"symbolic_batch": {"x": (1, 4, 6, 6)}}
GFLOPS = [2e-3, 5e-4, 1e-3, 3e-3]  # unequal on purpose


def cluster_yaml(path: Path, n_dev: int, bandwidth_mbps: float) -> Path:
    lines = ["devices:"]
    lines += [f"  - {{name: dev{i}, gflops: {GFLOPS[i]}, memory_mb: 64}}" for i in range(n_dev)]
    lines += ["links:", f"  default: {{bandwidth_mbps: {bandwidth_mbps}, latency_ms: 0.2}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def check_program(plan, graph):
    """Every step input has a route from where it is made; every model output goes to the caller."""
    made_by = {i.name: CALLER for i in plan.inputs}
    for st in plan.steps:
        for o in st.outputs:
            made_by[o.name] = st.device
    routes = {(r.tensor, r.src, r.dst) for r in plan.routes}
    for st in plan.steps:
        for i in st.inputs:
            assert (i.name, made_by[i.name], st.device) in routes
    for o in graph.outputs:
        assert (o.name, made_by[o.name], CALLER) in routes
    assert len(routes) == len(plan.routes)


def check_sub_models(dist: Path, plan):
    """Each step file is valid ONNX whose inputs and outputs are exactly the step's specs."""
    for st in plan.steps:
        m = onnx.load(str(dist / st.device / st.model_file))
        onnx.checker.check_model(m, full_check=True)
        assert [i.name for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer}] == [
            i.name for i in st.inputs]
        assert [o.name for o in m.graph.output] == [o.name for o in st.outputs]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("n_dev", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(HELPER_MODELS))
def test_planned_split_is_exact(name, n_dev, objective, tmp_path):
    model_path = save(HELPER_MODELS[name](), tmp_path / f"{name}.onnx")
    # fast links with `throughput` spread the nodes; slow ones with `latency` push cuts to thin tensors
    bw = 1000.0 if objective == "throughput" else 1.0
    shapes = PLAN_SHAPES.get(name)
    prep = prepare(model_path, cluster_yaml(tmp_path / "cluster.yaml", n_dev, bw), objective, shapes)
    assert len(prep.pipeline.stages) == n_dev
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist", model_name=name)
    bundles = load_dist(tmp_path / "dist")
    assert set(bundles) == {f"dev{i}" for i in range(n_dev)}
    assert {b.plan_id for b in bundles.values()} == {res.plan.plan_id}
    check_program(res.plan, prep.graph)
    check_sub_models(tmp_path / "dist", res.plan)

    feeds = random_inputs(prep.graph.inputs, shapes, seed=n_dev)
    v = verify(tmp_path / "dist", model_path, feeds, atol=ATOL)
    assert set(v.max_abs_diff) == {o.name for o in prep.graph.outputs}
    for out, diff in v.max_abs_diff.items():
        assert diff <= ATOL, f"{name} on {n_dev} devices: {out} differs by {diff}"
    assert v.ok and v.model_matches_plan and v.plan_id == res.plan.plan_id


def _forced_cuts(n: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(n)
    singles = [(c,) for c in range(1, n)]
    triples = sorted({tuple(sorted(rng.choice(np.arange(1, n), 3, replace=False).tolist())) for _ in range(6)})
    return singles + triples


@pytest.mark.parametrize("name", sorted(HELPER_MODELS))
def test_every_cut_position_is_exact(name, tmp_path):
    """Not only where the planner cuts: every single cut, and random three-cut splits."""
    model = HELPER_MODELS[name]()
    model_path = save(model, tmp_path / "m.onnx")
    shapes = PLAN_SHAPES.get(name)
    graph = analyse(model, shapes)
    names = [f"dev{i}" for i in range(4)]
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": g} for d, g in zip(names, GFLOPS)]})
    cost = CostModel(graph, cluster)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds = random_inputs(graph.inputs, shapes, seed=1)
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for k, cuts in enumerate(_forced_cuts(graph.n)):
        sub = cluster_from_dict({"devices": [{"name": d, "gflops": g} for d, g in zip(names[: len(cuts) + 1], GFLOPS)]})
        pp = evaluate(cost, cuts, tuple(names[: len(cuts) + 1]))
        dist = tmp_path / f"dist{k}"
        res = package(model, graph, sub, pp, dist)
        check_program(res.plan, graph)
        got = LocalCluster.from_dist(dist).run(feeds)
        for out, w in want.items():
            assert got[out].shape == w.shape
            assert np.max(np.abs(got[out] - w)) <= ATOL, f"{name} cut at {cuts}: {out} differs"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}


def test_shared_initializer_lands_in_both_sub_models(tmp_path):
    model = shared_weight()
    graph = analyse(model)
    users = [nd.index for nd in graph.nodes if SHARED_WEIGHT in nd.constants]
    assert users == [0, 9]
    want = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == SHARED_WEIGHT))
    cluster = cluster_from_dict({"devices": [{"name": "a", "gflops": 1}, {"name": "b", "gflops": 2}]})
    pp = evaluate(CostModel(graph, cluster), (5,), ("a", "b"))
    res = package(model, graph, cluster, pp, tmp_path / "dist")
    holders = []
    for st in res.plan.steps:
        inits = _initializers(tmp_path / "dist" / st.device / st.model_file)
        if SHARED_WEIGHT in inits:
            np.testing.assert_array_equal(inits[SHARED_WEIGHT], want)
            holders.append(st.device)
    assert holders == ["a", "b"]
    model_path = save(model, tmp_path / "m.onnx")
    assert verify(tmp_path / "dist", model_path, random_inputs(graph.inputs)).ok


@pytest.mark.parametrize("n_dev", [3, 4])
def test_shared_initializer_in_planned_splits(n_dev, tmp_path):
    """With 3 or more stages nodes 0 and 9 cannot share one: the weight must be in two files, and
    only in the stages that read it."""
    model_path = save(shared_weight(), tmp_path / "m.onnx")
    prep = prepare(model_path, cluster_yaml(tmp_path / "c.yaml", n_dev, 1000.0), "throughput")
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist")
    stages = prep.pipeline.stages
    expect = [s.device for s in stages if any(SHARED_WEIGHT in nd.constants for nd in prep.graph.nodes[s.start:s.stop])]
    have = [st.device for st in res.plan.steps
            if SHARED_WEIGHT in _initializers(tmp_path / "dist" / st.device / st.model_file)]
    assert have == expect and len(have) == 2


@pytest.mark.parametrize("cuts", [(3, 6, 10), (1, 4, 9), (2, 8, 11)])
def test_symbolic_batch_sub_models_run_at_other_batches(cuts, tmp_path):
    """Planned at batch 1; the shape arithmetic (int64 tensors crossing cuts) keeps the sub-models
    batch-agnostic, so the chain runs at batch 1 and batch 3 and matches the whole model."""
    model = symbolic_batch()
    graph = analyse(model, PLAN_SHAPES["symbolic_batch"])
    devs = ("a", "b", "c", "d")
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": 1 + i} for i, d in enumerate(devs)]})
    pp = evaluate(CostModel(graph, cluster), cuts, devs)
    res = package(model, graph, cluster, pp, tmp_path / "dist")

    for st in res.plan.steps:
        m = onnx.load(str(tmp_path / "dist" / st.device / st.model_file))
        for vi in list(m.graph.input) + list(m.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                assert dims[0].dim_param == "N", f"{st.name}: {vi.name} lost its symbolic batch axis"
    crossing_ints = {i.name for st in res.plan.steps for i in st.inputs if i.dtype == "int64"}
    assert crossing_ints, "these cuts should carry shape tensors across"

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    chain = LocalCluster.from_dist(tmp_path / "dist")
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4, 6, 6)).astype(np.float32)
        (want,) = sess.run(None, {"x": x})
        got = chain.run({"x": x})["y"]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_symbolic_batch_planned_with_inputs_shape_runs_at_batch_3(tmp_path):
    model_path = save(symbolic_batch(), tmp_path / "m.onnx")
    prep = prepare(model_path, cluster_yaml(tmp_path / "c.yaml", 4, 1000.0), "throughput", {"x": (1, 4, 6, 6)})
    package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist")
    x = np.random.default_rng(0).standard_normal((3, 4, 6, 6)).astype(np.float32)
    v = verify(tmp_path / "dist", model_path, {"x": x}, atol=ATOL)
    assert v.ok, v.max_abs_diff


def test_all_models_have_enough_nodes_for_four_stages():
    for name, build in HELPER_MODELS.items():
        graph = analyse(build(), PLAN_SHAPES.get(name))
        assert graph.n >= 8, name

"""The pipeline planner and its cost model, on graphs built in code.

The DP must find exactly the optimum that brute force finds (every cut combination, every device
order), for both objectives, with and without memory budgets that bind; the cost model's figures
are checked by hand on a three-node graph; the analysis's "what crosses each cut" on the residual
model, where one tensor crosses several cuts.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from edgepart.errors import PlanningError
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.cost import CostModel
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.pipeline.planner import OBJECTIVES, evaluate, exhaustive, plan_pipeline

from graphs import F32, IR_VERSION, OPSET, SHARED_WEIGHT, random_model, residual, shared_weight

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024


def make_cluster(gflops, memory_bytes=None, bandwidth_mbps=1.0, latency_ms=0.5, pairs=()):
    """A cluster of devices d0..dk (memory in bytes, None = unbounded), with optional pair links."""
    devices = []
    for i, g in enumerate(gflops):
        d = {"name": f"d{i}", "gflops": float(g)}
        if memory_bytes is not None and memory_bytes[i] is not None:
            d["memory_mb"] = float(memory_bytes[i]) / MIB
        devices.append(d)
    links = {"default": {"bandwidth_mbps": bandwidth_mbps, "latency_ms": latency_ms}}
    if pairs:
        links["pairs"] = [{"between": [a, b], "bandwidth_mbps": bw, "latency_ms": lat} for a, b, bw, lat in pairs]
    return cluster_from_dict({"devices": devices, "links": links}, source="test")


def check_plan_shape(pp, graph, cluster):
    """Stages contiguous, covering every node, each device exactly once, each within its memory."""
    assert pp.stages[0].start == 0
    assert pp.stages[-1].stop == graph.n
    for s, t in zip(pp.stages, pp.stages[1:]):
        assert s.stop == t.start
    assert all(s.stop > s.start for s in pp.stages)
    assert sorted(s.device for s in pp.stages) == sorted(d.name for d in cluster.devices)
    for s in pp.stages:
        assert s.memory_bytes <= cluster.device(s.device).memory_bytes
    assert pp.latency_ms == pytest.approx(sum(s.compute_ms + s.send_ms for s in pp.stages))
    assert pp.period_ms == pytest.approx(max(max(s.compute_ms for s in pp.stages), max(s.link_busy_ms for s in pp.stages)))
    for s in pp.stages[:-1]:  # a link is busy for bytes / bandwidth; its latency overlaps in a stream
        assert s.send_ms >= s.link_busy_ms
    assert pp.stages[-1].send_ms == 0 and pp.stages[-1].send_bytes == 0


def assert_dp_is_optimal(graph, cluster, objective):
    best = exhaustive(graph, cluster, objective)
    if not np.isfinite(best):
        with pytest.raises(PlanningError, match="cannot hold the model"):
            plan_pipeline(graph, cluster, objective)
        return None
    pp = plan_pipeline(graph, cluster, objective)
    assert pp.objective == objective
    assert pp.score() == pytest.approx(best, rel=1e-9, abs=1e-12)
    check_plan_shape(pp, graph, cluster)
    return pp


# -- DP == brute force -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(60))
def test_dp_equals_exhaustive_on_random_graphs(seed):
    rng = np.random.default_rng(1000 + seed)
    n_nodes = int(rng.integers(4, 11))
    dag = seed % 2 == 1
    graph = analyse(random_model(seed, n_nodes, dag=dag))
    n_dev = int(rng.integers(2, min(4, graph.n) + 1))
    gflops = rng.uniform(1e-5, 1e-4, n_dev)  # compute and transfer times of the same order
    names = [f"d{i}" for i in range(n_dev)]
    pairs = [(a, b, float(rng.uniform(0.002, 0.05)), float(rng.uniform(0, 5)))
             for i, a in enumerate(names) for b in names[i + 1:] if rng.random() < 0.6]
    bandwidth = float(rng.uniform(0.005, 0.05))
    free = make_cluster(gflops, bandwidth_mbps=bandwidth, pairs=pairs)

    for objective in OBJECTIVES:
        pp = assert_dp_is_optimal(graph, free, objective)
        assert pp is not None

        # Budgets that bind: the unconstrained optimum no longer fits, so the DP must find another.
        cost = CostModel(graph, free)
        total = cost.stage_memory_bytes(0, graph.n)
        mem = [float(rng.uniform(0.4, 1.1)) * total for _ in names]
        for s in pp.stages:
            mem[names.index(s.device)] = max(mem[names.index(s.device)], s.memory_bytes)
        biggest = max(pp.stages, key=lambda s: s.memory_bytes)
        mem[names.index(biggest.device)] = biggest.memory_bytes - 1
        bound = make_cluster(gflops, memory_bytes=mem, bandwidth_mbps=bandwidth, pairs=pairs)
        unconstrained_fits = all(s.memory_bytes <= bound.device(s.device).memory_bytes for s in pp.stages)
        assert not unconstrained_fits
        constrained = assert_dp_is_optimal(graph, bound, objective)
        if constrained is not None:
            assert constrained.score() >= pp.score() * (1 - 1e-12)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("n_dev", [2, 3, 4])
def test_dp_equals_exhaustive_on_helper_models(objective, n_dev):
    graph = analyse(residual())
    gflops = [2e-5, 5e-5, 1e-5, 8e-5][:n_dev]
    for bw in (0.001, 0.05, 10.0):  # transfers dominating, comparable, negligible
        assert_dp_is_optimal(graph, make_cluster(gflops, bandwidth_mbps=bw), objective)


def test_device_order_follows_pair_links():
    """A fast pair link makes the planner put those two devices next to each other."""
    graph = analyse(random_model(7, 9, dag=False))
    slow, fast = 0.0005, 50.0
    cl = make_cluster([1e-5, 1e-5, 1e-5], bandwidth_mbps=slow, latency_ms=0,
                      pairs=[("d0", "d2", fast, 0.0)])
    for objective in OBJECTIVES:
        pp = assert_dp_is_optimal(graph, cl, objective)
        order = [s.device for s in pp.stages]
        assert abs(order.index("d0") - order.index("d2")) == 1


def test_infeasible_memory_names_device_and_missing_mb():
    graph = analyse(shared_weight())
    cost = CostModel(graph, make_cluster([1, 1]))
    one_node = max(cost.stage_memory_bytes(i, i + 1) for i in range(graph.n))
    cl = make_cluster([1, 1], memory_bytes=[one_node * 0.5, one_node * 0.9])
    assert not np.isfinite(exhaustive(graph, cl))
    with pytest.raises(PlanningError) as e:
        plan_pipeline(graph, cl)
    msg = str(e.value)
    assert "d1" in msg and "MB missing" in msg and "memory_mb" in msg


def test_more_devices_than_nodes_is_a_planning_error():
    graph = analyse(random_model(3, 3, dag=False))
    with pytest.raises(PlanningError, match=r"only 3 compute node.*at most 3 devices"):
        plan_pipeline(graph, make_cluster([1, 1, 1, 1]))


def test_unknown_objective_is_a_planning_error():
    graph = analyse(random_model(3, 5, dag=False))
    with pytest.raises(PlanningError, match="latency, throughput"):
        plan_pipeline(graph, make_cluster([1, 1]), "fastest")


# -- the cost model, by hand ---------------------------------------------------------------------------------

def tiny_model():
    """x[1,4] -> MatMul W1[4,8] -> Relu -> MatMul W2[8,2] -> y[1,2]."""
    w1 = numpy_helper.from_array(np.ones((4, 8), np.float32), "W1")
    w2 = numpy_helper.from_array(np.ones((8, 2), np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", F32, [1, 4])],
                          [helper.make_tensor_value_info("y", F32, [1, 2])], [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def test_cost_model_figures_by_hand():
    graph = analyse(tiny_model())
    assert [nd.macs for nd in graph.nodes] == [4 * 8, 8, 8 * 2]
    assert graph.tensor_bytes == {"x": 16, "h": 32, "r": 32, "y": 8}
    assert graph.constant_bytes == {"W1": 128, "W2": 64}
    assert list(graph.live_bytes) == [0, 32, 32, 0]

    cl = make_cluster([0.5, 2.0], bandwidth_mbps=8.0, latency_ms=2.0)
    cost = CostModel(graph, cl)
    # stage time = 2 * MACs / (GFLOP/s * 1e9), in ms
    assert cost.compute_ms("d0", 0, 3) == pytest.approx(2 * 56 / 0.5e9 * 1e3)
    assert cost.compute_ms("d1", 1, 3) == pytest.approx(2 * 24 / 2.0e9 * 1e3)
    assert cost.compute_ms("d0", 2, 2) == 0
    # transfer = bytes * 8 / (Mbit/s * 1e6) in ms, + latency
    assert cost.transfer_ms(1, "d0", "d1") == pytest.approx(32 * 8 / 8e6 * 1e3 + 2.0)
    assert cost.transfer_ms(3, "d0", "d1") == pytest.approx(2.0)
    # memory = parameters held + largest working set (inputs + outputs) of one node
    assert cost.stage_memory_bytes(0, 1) == 128 + 16 + 32
    assert cost.stage_memory_bytes(1, 3) == 64 + max(32 + 32, 32 + 8)
    assert cost.stage_memory_bytes(0, 3) == 192 + 64
    assert cost.stage_memory_bytes(2, 3) == 64 + 40

    # max_stop: the longest run from each start that fits the budget
    assert list(CostModel(graph, make_cluster([1], memory_bytes=[180])).max_stop("d0")) == [1, 3, 3]
    assert list(CostModel(graph, make_cluster([1], memory_bytes=[100])).max_stop("d0")) == [0, 2, 2]
    assert list(CostModel(graph, make_cluster([1], memory_bytes=[256])).max_stop("d0")) == [3, 3, 3]
    assert list(CostModel(graph, make_cluster([1])).max_stop("d0")) == [3, 3, 3]

    pp = evaluate(cost, (1,), ("d0", "d1"))
    assert [(s.start, s.stop) for s in pp.stages] == [(0, 1), (1, 3)]
    assert pp.stages[0].send_bytes == 32
    assert pp.stages[0].flops == 64 and pp.stages[1].flops == 48
    assert pp.stages[0].param_bytes == 128 and pp.stages[1].param_bytes == 64
    want_latency = 64 / 0.5e9 * 1e3 + (32 * 8 / 8e6 * 1e3 + 2.0) + 48 / 2e9 * 1e3
    assert pp.latency_ms == pytest.approx(want_latency)
    assert pp.period_ms == pytest.approx(32 * 8 / 8e6 * 1e3)  # the link's latency does not bound a stream
    assert pp.stages[0].send_ms == pytest.approx(32 * 8 / 8e6 * 1e3 + 2.0)
    assert pp.cuts == (1,)


def test_link_lookup_is_symmetric_and_falls_back_to_default():
    cl = make_cluster([1, 1, 1], bandwidth_mbps=10, latency_ms=1, pairs=[("d0", "d2", 80, 3)])
    assert cl.link("d2", "d0").bandwidth_mbps == 80 and cl.link("d0", "d2").latency_ms == 3
    assert cl.link("d0", "d1").bandwidth_mbps == 10


def test_shared_parameters_are_counted_once_per_stage():
    graph = analyse(shared_weight())
    cost = CostModel(graph, make_cluster([1]))
    shared = graph.constant_bytes[SHARED_WEIGHT]
    assert shared == 16 * 16 * 4
    assert cost.stage_memory_bytes(0, graph.n) == pytest.approx(
        graph.total_param_bytes + max(cost.work_bytes))
    # in two stages, the shared weight is held by both
    first, last = graph.nodes[0], graph.nodes[9]
    assert SHARED_WEIGHT in first.constants and SHARED_WEIGHT in last.constants
    pp = evaluate(cost, (5,), ("d0", "d0"))
    assert pp.stages[0].param_bytes + pp.stages[1].param_bytes == graph.total_param_bytes + shared


@pytest.mark.parametrize("seed", range(12))
def test_max_stop_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    graph = analyse(random_model(100 + seed, int(rng.integers(3, 14)), dag=True))
    total = CostModel(graph, make_cluster([1])).stage_memory_bytes(0, graph.n)
    for frac in (0.05, 0.2, 0.4, 0.7, 1.0):
        cost = CostModel(graph, make_cluster([1], memory_bytes=[frac * total]))
        budget = cost.cluster.device("d0").memory_bytes
        want = []
        for a in range(graph.n):
            b = a
            while b < graph.n and cost.stage_memory_bytes(a, b + 1) <= budget:
                b += 1
            want.append(b)
        assert list(cost.max_stop("d0")) == want


# -- what crosses each cut -------------------------------------------------------------------------------------

def test_crossing_and_live_bytes_on_residual():
    graph = analyse(residual())
    names = [nd.name for nd in graph.nodes]
    add = names.index("skip_add")
    made = graph.producer["r0"]
    assert names[made] == "relu0" and graph.last_use["r0"] == add
    r0_bytes = graph.tensor_bytes["r0"]
    assert r0_bytes == 8 * 8 * 8 * 4
    for cut in range(1, graph.n + 1):
        crossing = graph.crossing(cut)
        # the skip tensor is counted at every cut between its producer and its reader
        assert ("r0" in crossing) == (made < cut <= add)
        assert graph.live_bytes[cut] == sum(graph.tensor_bytes[t] for t in crossing)
    # next to the chain's own tensor, the skip doubles what crosses the cuts it spans
    for cut in range(made + 2, add + 1):
        chain = [t for t in graph.crossing(cut) if t != "r0"]
        assert len(chain) == 1
        assert graph.live_bytes[cut] == r0_bytes + graph.tensor_bytes[chain[0]]
    assert graph.crossing(graph.n) == ()
    assert graph.live_bytes[0] == 0


def test_stage_io_of_a_cut_through_the_skip():
    graph = analyse(residual())
    ins, outs = graph.stage_io(3, 7)  # relu1 .. conv3: the Add that reads r0 is in the next stage
    assert ins == ("c1",)
    assert outs == ("c3",)
    ins, outs = graph.stage_io(3, 9)
    assert set(ins) == {"c1", "r0"}


def test_model_input_read_late_counts_at_every_cut():
    """`b` of two_in_two_out is read by nodes 2 and 9: it is charged at every cut up to 9."""
    from graphs import two_in_two_out

    graph = analyse(two_in_two_out())
    last = graph.last_use["b"]
    assert graph.producer["b"] == -1
    for cut in range(1, graph.n + 1):
        assert ("b" in graph.crossing(cut)) == (cut <= last)


def test_device_too_small_for_any_node_is_named():
    """Memory in all is plenty, but one device cannot hold even one node: it is the one to drop."""
    graph = analyse(shared_weight())
    cl = make_cluster([1, 1, 1], memory_bytes=[None, None, 10])
    assert not np.isfinite(exhaustive(graph, cl))
    with pytest.raises(PlanningError, match=r"smallest, d2.*drop the smallest device"):
        plan_pipeline(graph, cl)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_device_runs_everything(objective):
    graph = analyse(residual())
    cl = make_cluster([3e-5])
    pp = assert_dp_is_optimal(graph, cl, objective)
    assert [(s.start, s.stop) for s in pp.stages] == [(0, graph.n)] and pp.cuts == ()
    assert pp.latency_ms == pytest.approx(pp.period_ms)


def test_infeasible_message_prints_device_memory_as_given():
    from graphs import transformer

    graph = analyse(transformer(dim=256, hidden=1024))
    with pytest.raises(PlanningError) as e:
        plan_pipeline(graph, make_cluster([1, 1], memory_bytes=[0.9 * MIB, 0.5 * MIB]))
    assert "d0, has 0.9 MB" in str(e.value)


def test_qlinearconv_macs():
    from onnx import TensorProto

    consts = [numpy_helper.from_array(np.ones((8, 4, 3, 3), np.int8), "w")] + [
        numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in
        [("xs", 0.1, np.float32), ("xz", 0, np.uint8), ("ws", 0.1, np.float32), ("wz", 0, np.int8),
         ("ys", 0.1, np.float32), ("yz", 0, np.uint8)]]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 8, 8])], consts)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    assert analyse(model).nodes[0].macs == (8 * 8 * 8) * (4 * 3 * 3)

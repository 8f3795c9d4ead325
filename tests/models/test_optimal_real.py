"""The pipeline planner is optimal on real models: on EfficientNet-Lite0 and MiniLM with three unequal
devices, its plan scores exactly what brute force over every cut pair and device order finds, for
both objectives, with loose and binding memory budgets, and it plans in under 2 s."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

pytestmark = pytest.mark.models
pytest.importorskip("onnx")  # the packager extra

from edgepart.packager.cluster import cluster_from_dict  # noqa: E402
from edgepart.packager.cost import CostModel, message_ms, step_ms  # noqa: E402
from edgepart.packager.model.graph import Graph, analyse, load_model  # noqa: E402
from edgepart.packager.strategies.pipeline.planner import evaluate, exhaustive, plan_pipeline  # noqa: E402

PLAN_S = 2.0  # the requirement for planning a real model
SHAPES = {
    "efficientnet_lite0": {"input": (1, 3, 224, 224)},
    "minilm": {"input_ids": (1, 128), "attention_mask": (1, 128)},
}
# Memory budgets (MB) for fast, mid, slow. "tight" is below what the unconstrained optimum puts on
# the fast devices (test_budgets_bind proves it), "loose" never binds.
BUDGETS = {
    "efficientnet_lite0": {"loose": (1e6, 1e6, 1e6), "tight": (8, 12, 64)},
    "minilm": {"loose": (1e6, 1e6, 1e6), "tight": (40, 40, 200)},
}


def cluster(memory_mb: tuple[float, float, float]):
    g = (50, 20, 5)  # GFLOP/s: a laptop, a Jetson, a Pi
    return cluster_from_dict({
        "devices": [{"name": n, "gflops": f, "memory_mb": m} for n, f, m in zip(("fast", "mid", "slow"), g, memory_mb)],
        "links": {"default": {"bandwidth_mbps": 100, "latency_ms": 1},
                  "pairs": [{"between": ["fast", "mid"], "bandwidth_mbps": 1000, "latency_ms": 0.2}]},
    })


@pytest.fixture(scope="module")
def graphs(efficientnet_lite0_path, minilm_path) -> dict[str, Graph]:
    paths = {"efficientnet_lite0": efficientnet_lite0_path, "minilm": minilm_path}
    return {k: analyse(load_model(p), SHAPES[k]) for k, p in paths.items()}


def brute_force(graph: Graph, cl, objective: str) -> float:
    """Best objective over all cut pairs (a, b) and all 6 device orders, from first principles: FLOPs
    from node MACs, bytes from the tensors crossing each cut, memory from each stage's own
    parameters and largest node working set. Shares nothing with CostModel but the formulas."""
    n = graph.n
    flops = np.concatenate([[0.0], np.cumsum([2.0 * nd.macs for nd in graph.nodes])])
    cross = np.array([0.0] + [sum(graph.tensor_bytes.get(t, 0) for t in graph.crossing(c)) for c in range(1, n + 1)])
    work = [sum(graph.tensor_bytes.get(t, 0) for t in nd.inputs + nd.outputs) for nd in graph.nodes]
    mem = np.full((n + 1, n + 1), np.inf)  # mem[a, b]: bytes nodes[a:b] need
    for a in range(n):
        held: set[str] = set()
        params = peak = 0.0
        for b in range(a + 1, n + 1):
            nd = graph.nodes[b - 1]
            params += sum(graph.constant_bytes[c] for c in set(nd.constants) - held)
            held.update(nd.constants)
            peak = max(peak, work[b - 1])
            mem[a, b] = params + peak
    a, b = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    valid = (0 < a) & (a < b) & (b < n)  # three non-empty stages [0, a), [a, b), [b, n)
    best = np.inf
    for order in itertools.permutations(cl.devices):
        d0, d1, d2 = order
        ok = valid & (mem[0, a] <= d0.memory_bytes) & (mem[a, b] <= d1.memory_bytes) & (mem[b, n] <= d2.memory_bytes)
        c0 = flops[a] / (d0.gflops * 1e6)
        c1 = (flops[b] - flops[a]) / (d1.gflops * 1e6)
        c2 = (flops[n] - flops[b]) / (d2.gflops * 1e6)
        l01, l12 = cl.link(d0.name, d1.name), cl.link(d1.name, d2.name)
        t01 = cross[a] * 8 / (l01.bandwidth_mbps * 1e3)
        t12 = cross[b] * 8 / (l12.bandwidth_mbps * 1e3)
        # the fixed costs (docs/planning.md): a step per stage, a message per cut and the caller's two
        s0, s1, s2 = (step_ms(d) for d in order)
        m01, m12, io = message_ms(l01), message_ms(l12), 2 * message_ms(cl.default_link)
        if objective == "latency":  # one request waits for every transfer, latency included
            v = c0 + c1 + c2 + t01 + t12 + l01.latency_ms + l12.latency_ms + s0 + s1 + s2 + m01 + m12 + io
        else:  # a stream is bounded by how long each device or link is busy; latency overlaps, and
            # a message costs the device at both its ends (the caller's the first and last stage)
            m = io / 2
            v = np.maximum.reduce([c0 + s0 + m + m01, c1 + s1 + m01 + m12, c2 + s2 + m12 + m, t01, t12])
        best = min(best, float(np.where(ok, v, np.inf).min()))
    return best


CASES = [(m, b, o) for m in SHAPES for b in ("loose", "tight") for o in ("latency", "throughput")]


@pytest.mark.parametrize("model,budget,objective", CASES, ids=["-".join(c) for c in CASES])
def test_plan_is_optimal_and_fast(graphs, model, budget, objective):
    graph, cl = graphs[model], cluster(BUDGETS[model][budget])
    t0 = time.perf_counter()
    pp = plan_pipeline(graph, cl, objective)
    planning_s = time.perf_counter() - t0
    assert planning_s < PLAN_S, f"planning took {planning_s:.2f} s"

    assert math.isclose(pp.score(), exhaustive(graph, cl, objective), rel_tol=1e-9)
    assert math.isclose(pp.score(), brute_force(graph, cl, objective), rel_tol=1e-9)

    # the plan is what it says: its score recomputed from its cuts, and every stage fits its device
    cost = CostModel(graph, cl)
    again = evaluate(cost, pp.cuts, tuple(s.device for s in pp.stages), objective)
    assert math.isclose(again.score(), pp.score(), rel_tol=1e-9)
    assert sorted(s.device for s in pp.stages) == ["fast", "mid", "slow"]
    for s in pp.stages:
        assert s.stop > s.start
        assert cost.stage_memory_bytes(s.start, s.stop) <= cl.device(s.device).memory_bytes


@pytest.mark.parametrize("model", list(SHAPES))
def test_budgets_bind(graphs, model):
    """The tight budgets change the optimum (so the cases above test memory handling)."""
    graph = graphs[model]
    loose = plan_pipeline(graph, cluster(BUDGETS[model]["loose"]), "latency")
    tight = plan_pipeline(graph, cluster(BUDGETS[model]["tight"]), "latency")
    assert tight.score() > loose.score() * (1 + 1e-6)
    mem = dict(zip(("fast", "mid", "slow"), BUDGETS[model]["tight"]))
    assert any(s.memory_bytes > mem[s.device] * 2**20 for s in loose.stages)

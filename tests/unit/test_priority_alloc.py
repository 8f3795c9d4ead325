"""The priority-aware allocator (packager/priority.py, docs/priority.md) on EfficientNet-Lite0's real
costs: where each source's layers run, against the priority-blind baseline and local-only."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgepart.sources import sources_from_dict

from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.cost import STEP_MS
from edgepart.packager.priority import allocate, allocate_all

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def graph():
    from edgepart.packager.model.fold import fold_constants
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.testing import zoo

    return analyse(fold_constants(load_model(zoo.efficientnet_lite0())), {"input": (1, 3, 224, 224)})


def contended(rate: float):
    """Three cameras on slow devices and one fast helper beside two slow ones: the fast one is wanted by all."""
    devs = [{"name": n, "gflops": g} for n, g in
            (("cam0", 10), ("cam1", 10), ("cam2", 10), ("fast", 120), ("h1", 15), ("h2", 15))]
    cl = cluster_from_dict({"devices": devs, "links": {"default": {"bandwidth_mbps": 200, "latency_ms": 1}}})
    srcs = sources_from_dict({"sources": [
        {"name": "door", "device": "cam0", "priority": 10, "rate_hz": rate},
        {"name": "yard", "device": "cam1", "priority": 3, "rate_hz": rate},
        {"name": "lot", "device": "cam2", "priority": 1, "rate_hz": rate}]})
    return cl, srcs


def test_local_only_runs_everything_at_home_with_the_cost_models_figures(graph):
    cl, srcs = contended(1.0)
    a = allocate(graph, cl, srcs, "local")
    whole = 2 * graph.total_macs / 10e9 * 1e3 + STEP_MS  # ms on a 10 GFLOP/s device, and one step's fixed cost
    for p in a.placements:
        assert p.cut == graph.n and p.helpers == () and p.transfer_ms == 0 and p.remote_ms == 0
        assert p.local_ms == pytest.approx(whole, rel=1e-6)
        assert whole < p.expected_ms < whole * 1.1  # 1 frame/s: a little waiting
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.placements[0].cut = 3  # type: ignore[misc]


def test_under_load_priority_favours_the_urgent_source_and_local_only_cannot_keep_up(graph):
    cl, srcs = contended(14.0)  # 14 frames/s on a device that takes ~79 ms a frame: rho 1.1 at home
    res = allocate_all(graph, cl, srcs)
    assert all(p.expected_ms == float("inf") for p in res["local"].placements)
    pri, blind = res["priority"], res["blind"]
    for a in (pri, blind):
        assert all(p.cut < graph.n and p.helpers and p.expected_ms < 1000 for p in a.placements)
        assert all(p.helpers[0] != p.device and len(set(p.helpers)) == len(p.helpers) for p in a.placements)
    assert pri.get("door").helpers[0] == "fast"
    assert pri.get("door").expected_ms <= blind.get("door").expected_ms
    # expected latencies are ordered by priority when priorities count
    assert pri.get("door").expected_ms <= pri.get("yard").expected_ms <= pri.get("lot").expected_ms
    d = json.loads(json.dumps(pri.to_dict()))
    assert d["mode"] == "priority" and [s["source"] for s in d["sources"]] == ["door", "yard", "lot"]
    assert max(d["utilisation"].values()) < 1


def test_an_unknown_mode_is_refused(graph):
    cl, srcs = contended(1.0)
    with pytest.raises(ValueError, match="priority, blind, local"):
        allocate(graph, cl, srcs, "fastest")


def test_the_baseline_counts_every_request_the_same_and_priority_every_sources_weight(graph):
    """blind minimises the mean latency of a request (a source's rate weighs it; priorities play no part);
    priority the mean over sources of weight x latency, whatever their rates (docs/priority.md)."""
    cl, srcs = contended(6.0)
    rates = {"door": 2.0, "yard": 9.0, "lot": 4.0}
    srcs = sources_from_dict({"sources": [{**s.to_dict(), "rate_hz": rates[s.name]} for s in srcs]})
    res = allocate_all(graph, cl, srcs)
    pri, blind = res["priority"], res["blind"]
    for a, weight in ((blind, lambda p: p.rate_hz), (pri, lambda p: p.priority)):
        assert all(p.expected_ms < 1000 for p in a.placements)
        mean = sum(weight(p) * p.expected_ms for p in a.placements) / sum(weight(p) for p in a.placements)
        assert a.objective == pytest.approx(mean, rel=1e-9)
    # the baseline knows nothing of priorities: reversed, they change none of its cuts or helpers
    flipped = sources_from_dict({"sources": [{**s.to_dict(), "priority": 11 - s.priority} for s in srcs]})
    again = allocate(graph, cl, flipped, "blind")
    assert [(p.cut, p.helpers) for p in again.placements] == [(p.cut, p.helpers) for p in blind.placements]


def test_past_capacity_the_urgent_source_stays_fast_and_the_low_one_takes_the_overload(graph):
    """Two cameras whose work together exceeds the cluster's: someone is over capacity whatever the
    allocation. The low-priority source takes it; the urgent one keeps a finite, short latency, no worse
    than the priority-blind baseline's (the penalty past capacity grows with a source's own load on a
    full server, not with the work served before it, so it never pushes the urgent work back home)."""
    devs = [{"name": n, "gflops": g} for n, g in (("door-cam", 10), ("yard-cam", 10), ("jetson", 40), ("pi", 10))]
    cl = cluster_from_dict({"devices": devs, "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.5}}})
    rate = 0.9 * 40e9 / (2 * graph.total_macs)  # 90 % of the jetson's frames/s, from each camera
    srcs = sources_from_dict({"sources": [
        {"name": "door", "device": "door-cam", "priority": 10, "rate_hz": rate},
        {"name": "yard", "device": "yard-cam", "priority": 1, "rate_hz": rate}]})
    res = allocate_all(graph, cl, srcs)
    pri, blind = res["priority"], res["blind"]
    assert pri.get("yard").expected_ms == float("inf")
    door = pri.get("door")
    assert door.cut < graph.n and door.expected_ms < 150
    assert door.expected_ms <= blind.get("door").expected_ms


def test_an_agents_handling_of_bytes_counts_where_it_runs(graph):
    """A camera whose agent handles message bytes slowly (`handling_mbps`) pays for the frame it takes in
    and for what it sends on: its work for a request is compute + one step + bytes at that rate. At a
    rate its CPU cannot keep up with that way, the allocator says so (where, not counting the bytes, it
    promised a short latency), and the simulator, on the same costs, answers at the camera's capacity."""
    from edgepart.packager.cost import handling_ms
    from edgepart.packager.priority import StageCosts
    from edgepart.packager.sim import simulate

    def cluster(mbps):
        cam = {"name": "cam", "gflops": 10, **({} if mbps is None else {"handling_mbps": mbps})}
        return cluster_from_dict({"devices": [cam, {"name": "fast", "gflops": 200}],
                                  "links": {"default": {"bandwidth_mbps": 10000, "latency_ms": 0.1}}})

    slow, free = cluster(400.0), cluster(None)
    costs, bare = StageCosts(graph, slow), StageCosts(graph, free)
    n = graph.n
    for k in (1, 15, n):
        sends = costs.cut_bytes[k] if k < n else costs.out_bytes
        extra = float(handling_ms(slow.device("cam"), costs.in_bytes + sends))
        assert extra == pytest.approx((costs.in_bytes + sends) * 8 / 400e6 * 1e3)
        assert float(costs.head_ms("cam", k)) == pytest.approx(float(bare.head_ms("cam", k)) + extra, rel=1e-9)
    assert float(costs.head_ms("cam", 0)) == 0.0  # the caller sends to the helper: nothing at home
    least = min(float(costs.head_ms("cam", k)) for k in costs.cuts if k >= 1)  # the frame in, the cut out: ~24 ms
    for rate, keeps_up in ((0.8 * 1000 / least, True), (1.25 * 1000 / least, False)):
        srcs = sources_from_dict({"sources": [{"name": "cam", "device": "cam", "priority": 1, "rate_hz": rate}]})
        seen = allocate(graph, slow, srcs, "blind", costs=costs, min_cut=1).get("cam")
        blind = allocate(graph, free, srcs, "blind", costs=bare, min_cut=1).get("cam")
        assert blind.expected_ms < 50 and blind.helpers[0] == "fast"  # not counting the bytes: all is well
        assert (seen.expected_ms < 100) is keeps_up
        alloc = allocate(graph, slow, srcs, "blind", costs=costs, min_cut=1)
        m = simulate(costs, srcs, alloc, duration_s=60, seed=3).get("cam")
        capacity = 1000 / float(costs.head_ms("cam", alloc.get("cam").cut))
        assert m.throughput_per_s == pytest.approx(min(rate, capacity), rel=0.1)


def test_handling_mbps_in_cluster_yaml():
    from edgepart.errors import ClusterError

    cl = cluster_from_dict({"devices": [{"name": "a", "gflops": 1, "handling_mbps": 500}, {"name": "b", "gflops": 1}]})
    assert cl.device("a").handling_mbps == 500 and cl.device("b").handling_mbps is None
    with pytest.raises(ClusterError, match="handling_mbps"):
        cluster_from_dict({"devices": [{"name": "a", "gflops": 1, "handling_mbps": 0}]})

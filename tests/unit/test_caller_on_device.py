"""The app on a device (cluster.yaml's `caller`; docs/planning.md, "Where the app runs"): a camera's
board runs the app, so its inputs reach its own agent on the local socket and cross a link only to
other devices. What the cost model, the planners and `--strategy auto` make of it; behaviour, not
bit-exact floats.
"""

from __future__ import annotations

import dataclasses

import pytest

import edgepart.packager as p
from edgepart.errors import ClusterError
from edgepart.packager import cost
from edgepart.packager.cluster import Cluster, Device, Link, cluster_from_dict
from edgepart.plan import CALLER

SHAPES = {"input": (1, 3, 224, 224)}


def two(caller=None, gflops=(10.0, 10.0), mbps=20.0) -> Cluster:
    return Cluster(tuple(Device(f"dev{i}", g, 4096) for i, g in enumerate(gflops)), Link(mbps, 1.0), caller=caller)


def test_cluster_yaml_names_the_device_the_app_runs_on():
    devs = [{"name": "cam", "gflops": 1}, {"name": "helper", "gflops": 5}, {"name": "spare", "gflops": 5, "standby": True}]
    assert cluster_from_dict({"devices": devs}).caller is None  # a host of its own, as before
    assert cluster_from_dict({"devices": devs, "caller": "cam"}).caller == "cam"
    with pytest.raises(ClusterError, match="caller must name the device.*cam, helper, spare.*'door'"):
        cluster_from_dict({"devices": devs, "caller": "door"})
    with pytest.raises(ClusterError, match="standby"):
        cluster_from_dict({"devices": devs, "caller": "spare"})
    assert cluster_from_dict({"devices": devs, "caller": "cam", "caller_ms": 7.5}).caller_ms == 7.5
    assert cluster_from_dict({"devices": devs, "caller": "cam"}).caller_ms == 0.0
    with pytest.raises(ClusterError, match="caller_ms is the app's CPU on its device: name that device"):
        cluster_from_dict({"devices": devs, "caller_ms": 7.5})
    with pytest.raises(ClusterError, match="caller_ms must be a positive number"):
        cluster_from_dict({"devices": devs, "caller": "cam", "caller_ms": -1})


def test_streamed_the_apps_own_cpu_gives_its_device_less_of_the_model():
    """EfficientNet-Lite0 on two equal devices, the app on dev0 spending half of what the model costs
    on its device per frame: the throughput plan gives dev0 the smaller stage, and the period it says
    counts the app's CPU on dev0; the latency plan does not change (the app's work is the same for
    every plan of one request)."""
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    free = two(caller="dev0", mbps=1000.0)
    whole = p.plan(model, dataclasses.replace(free, devices=free.devices[:1], caller="dev0"), strategy="pipeline",
                   objective="throughput", input_shapes=SHAPES).pipeline.stages[0].compute_ms
    busy = dataclasses.replace(free, caller_ms=0.5 * whole)
    even = p.plan(model, free, strategy="pipeline", objective="throughput", input_shapes=SHAPES).pipeline
    aware = p.plan(model, busy, strategy="pipeline", objective="throughput", input_shapes=SHAPES).pipeline
    share = {s.device: s.compute_ms for s in aware.stages}
    assert share["dev0"] < 0.5 * share["dev1"]
    assert {s.device: s.compute_ms for s in even.stages}["dev0"] > 0.6 * {s.device: s.compute_ms for s in even.stages}["dev1"]
    stage0 = next(s for s in aware.stages if s.device == "dev0")
    assert aware.period_with_fixed_ms >= stage0.compute_ms + busy.caller_ms
    # better than the plan that ignores it, whose dev0 would take its stage and the app's CPU
    assert aware.period_with_fixed_ms < {s.device: s.compute_ms for s in even.stages}["dev0"] + busy.caller_ms
    lat = [p.plan(model, c, strategy="pipeline", objective="latency", input_shapes=SHAPES).pipeline for c in (free, busy)]
    assert [s.compute_ms for s in lat[0].stages] == [s.compute_ms for s in lat[1].stages]


def test_the_apps_own_device_is_reached_without_a_wire_and_the_others_through_its_interface():
    cl = two(caller="dev0")
    assert cost.caller_link(cl, "dev0").bandwidth_mbps == float("inf")
    assert cost.caller_link(cl, "dev1") == cl.link("dev0", "dev1")
    assert cost.caller_link(two(), "dev0") == two().default_link  # no caller: the default link
    mb = 1_000_000
    one = float(cost.busy_ms(mb, cl.default_link))
    # inputs to the app's own device: no interface; to the other: dev0's, which also sends a cut there
    flows = [(CALLER, "dev0", mb, 1), ("dev0", "dev1", mb, 1), (CALLER, "dev1", mb, 1)]
    assert cost.nic_period_ms(cl, flows[:1]) == 0.0
    assert cost.nic_period_ms(cl, flows) == pytest.approx(2 * one)
    # an app of its own host sends the inputs on its own interface instead
    assert cost.nic_period_ms(two(), flows) == pytest.approx(2 * one)
    assert cost.nic_period_ms(two(), flows[1:2]) == pytest.approx(one)
    assert cost.caller_io_ms(graph_of(), cl, "dev0", "dev0") == 0.0
    assert cost.caller_period_ms(graph_of(), cl) == 0.0  # each strategy counts its own


def graph_of():
    import graphs
    from edgepart.packager.model.graph import analyse

    return analyse(graphs.random_model(3, 6))


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_the_pipeline_planner_is_exact_with_the_app_on_a_device(objective):
    """With `caller`, which device takes the inputs (and gives the outputs back) changes what a plan
    costs: the planner's best is still the exhaustive search's, and it counts the app's transfers
    (latency: its figure + caller_io_ms; throughput: its period, the app's links' busy time in it)."""
    import graphs
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.pipeline.planner import exhaustive, plan_pipeline

    for seed in range(6):
        graph = analyse(graphs.random_model(seed, 8, dag=seed % 2 == 1))
        devs = tuple(Device(f"d{i}", g, 1 << 40) for i, g in enumerate((2e-5, 5e-5, 1e-5)[:2 + seed % 2]))
        for caller in [d.name for d in devs]:
            cl = Cluster(devs, Link(0.02, 0.5, 0.3), caller=caller)
            pp = plan_pipeline(graph, cl, objective)
            io = cost.caller_io_ms(graph, cl, pp.devices[0], pp.devices[-1]) if objective == "latency" else 0.0
            assert pp.score() + io == pytest.approx(exhaustive(graph, cl, objective), rel=1e-9), (seed, caller)
            # the app's own CPU on its device (caller_ms), half the period found without it
            busy = dataclasses.replace(cl, caller_ms=0.5 * pp.score())
            pb = plan_pipeline(graph, busy, objective)
            io = cost.caller_io_ms(graph, busy, pb.devices[0], pb.devices[-1]) if objective == "latency" else 0.0
            assert pb.score() + io == pytest.approx(exhaustive(graph, busy, objective), rel=1e-9), (seed, caller)


def test_on_a_slow_link_the_app_s_device_computes_and_auto_says_so():
    """EfficientNet-Lite0 on two equal devices over 20 Mbit/s, the app on dev1: the best single device
    is dev1 (its 600 kB input needs no link), the pipeline starts there, and every strategy's latency
    is lower than for an app of its own host, which must send the input over the link first."""
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    away, home = two(), two(caller="dev1")
    for objective in ("latency", "throughput"):
        a = p.plan(model, away, strategy="auto", objective=objective, input_shapes=SHAPES)
        h = p.plan(model, home, strategy="auto", objective=objective, input_shapes=SHAPES)
        one = {c.name.split(" (")[0]: c for c in h.ranking if c.ok}["one device"]
        assert one.devices == ("dev1",), objective
        assert h.winner.devices[0] == "dev1", (objective, h.winner)
        by_a = {c.name: c for c in a.ranking if c.ok}
        for c in h.ranking:
            if c.ok and c.name in by_a and objective == "latency":
                assert c.latency_ms < by_a[c.name].latency_ms, c.name
    # the pipeline alone, on its own: the stage that takes the inputs is on the app's device
    pp = p.plan(model, home, strategy="pipeline", objective="latency", input_shapes=SHAPES)
    assert pp.pipeline.devices[0] == "dev1"


@pytest.mark.parametrize("caller", ["dev0", "dev1"])
def test_a_stream_bound_by_compute_starts_on_the_apps_device(caller):
    """Streamed over a link fast enough that compute bounds the period either way round, the two
    orders of the same cut tie; the tie goes to the order whose inputs cross no link."""
    from edgepart.testing import zoo

    cl = two(caller=caller, mbps=1000.0)
    pp = p.plan(zoo.efficientnet_lite0(), cl, strategy="pipeline", objective="throughput", input_shapes=SHAPES)
    assert pp.pipeline.devices[0] == caller
    other = p.plan(zoo.efficientnet_lite0(), two(mbps=1000.0), strategy="pipeline", objective="throughput",
                   input_shapes=SHAPES)
    assert pp.period_with_fixed_ms == pytest.approx(other.period_with_fixed_ms, rel=1e-9)


def test_the_spatial_split_gathers_on_the_apps_device_of_equally_fast_ones():
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    assert p.plan(model, two(), strategy="spatial", input_shapes=SHAPES).spatial.gather == "dev0"
    assert p.plan(model, two(caller="dev1"), strategy="spatial", input_shapes=SHAPES).spatial.gather == "dev1"
    # a faster device still gathers
    assert p.plan(model, two(caller="dev1", gflops=(30.0, 10.0)), strategy="spatial",
                  input_shapes=SHAPES).spatial.gather == "dev0"


def test_replicas_send_the_other_devices_requests_through_the_apps_interface():
    """Replicas with the app on dev0: dev0's own requests are local; the others' inputs leave through
    dev0's one interface, which bounds them, so a slow link caps what the second device adds."""
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    fast = p.plan(model, two(caller="dev0", mbps=100_000.0), strategy="replicas", input_shapes=SHAPES)
    slow = p.plan(model, two(caller="dev0", mbps=20.0), strategy="replicas", input_shapes=SHAPES)
    alone = 1e3 / (fast.device_ms[0][1] + cost.fixed_ms(fast.cluster, {"dev0": 1}))
    assert fast.throughput_with_fixed_per_s > 1.62 * alone  # both devices busy
    big = 3 * 224 * 224 * 4
    bound = 1e3 / float(cost.busy_ms(big, slow.cluster.default_link))
    assert slow.throughput_with_fixed_per_s < alone + bound * 1.001
    # its latency: the app's own device, no transfer
    assert slow.latency_with_fixed_ms < p.plan(model, two(mbps=20.0), strategy="replicas",
                                               input_shapes=SHAPES).latency_with_fixed_ms


def test_a_fallback_without_the_apps_device_plans_for_an_app_of_its_own_host():
    from edgepart.packager.standby import fallback_clusters

    cl = dataclasses.replace(two(caller="dev0"), devices=(*two().devices, Device("spare", 10.0, 4096, standby=True)))
    fb = {f.without: f.cluster for f in fallback_clusters(cl)}
    assert fb["dev1"].caller == "dev0" and fb["dev0"].caller is None

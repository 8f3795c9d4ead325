"""The cost model's fixed costs per step and per message (docs/planning.md, "Fixed costs"): pure
functions of packager/cost.py, the cluster's figures for them, and what they do to every strategy's
estimates and to `--strategy auto`'s pick. Behaviour, not bit-exact floats.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace as NS

import pytest

import edgepart.packager as p
from edgepart.errors import ClusterError
from edgepart.packager import calibrate, cost
from edgepart.packager.cluster import Cluster, Device, Link, cluster_from_dict
from edgepart.plan import CALLER

SHAPES = {"input": (1, 3, 224, 224)}


def two(step_ms=None, message_ms=None, gflops=10.0, mbps=1000.0, latency_ms=0.1) -> Cluster:
    return Cluster((Device("a", gflops, 1024, step_ms=step_ms), Device("b", gflops, 1024, step_ms=step_ms)),
                   Link(mbps, latency_ms, message_ms))


def test_nominal_figures_unless_the_cluster_gives_measured_ones():
    cl = two()
    assert cost.step_ms(cl.device("a")) == cost.STEP_MS > 0
    assert cost.message_ms(cl.default_link) == cost.MESSAGE_MS > 0
    measured = two(step_ms=0.02, message_ms=0.5)
    assert cost.step_ms(measured.device("a")) == pytest.approx(0.02)
    assert cost.message_ms(measured.default_link) == pytest.approx(0.5)
    zero = two(step_ms=0.0, message_ms=0.0)  # 0 is a figure (the cost model without them), not "unset"
    assert cost.fixed_ms(zero, {"a": 5}, {("a", "b"): 5}) == 0.0


def test_more_steps_and_more_messages_cost_more():
    cl = two()
    assert cost.fixed_ms(cl) == 0.0
    one, many = cost.fixed_ms(cl, {"a": 1}), cost.fixed_ms(cl, {"a": 10, "b": 10})
    assert 0 < one < many
    assert cost.fixed_ms(cl, messages={("a", "b"): 1}) < cost.fixed_ms(cl, messages={("a", "b"): 4, ("b", "a"): 4})
    # the caller's messages travel on the default link
    assert cost.fixed_ms(cl, messages={(CALLER, "a"): 1}) == pytest.approx(cost.message_ms(cl.default_link))
    # a longer chain of devices costs more than a shorter one; one device still pays its step and the caller's messages
    assert cost.chain_fixed_ms(cl, ["a"]) > 0
    assert cost.chain_fixed_ms(cl, ["a"]) < cost.chain_fixed_ms(cl, ["a", "b"]) < cost.chain_fixed_ms(cl, ["a", "b", "a"])


def test_a_slower_devices_steps_and_a_slower_links_messages_cost_more():
    fast, slow = two(step_ms=0.05, message_ms=0.1), two(step_ms=0.5, message_ms=1.0)
    for s in ({"a": 3}, None):
        m = None if s else {("a", "b"): 3}
        assert cost.fixed_ms(fast, s, m) < cost.fixed_ms(slow, s, m)


def _chain(devices: list[str], ms: float = 1.0):
    """Steps and routes of caller -> devices[0] -> devices[1] -> ... -> caller, one tensor each."""
    names = [f"t{k}" for k in range(len(devices) + 1)]
    steps = [NS(name=f"s{k}", device=d, inputs=(NS(name=names[k]),), outputs=(NS(name=names[k + 1]),), estimated_ms=ms)
             for k, d in enumerate(devices)]
    routes = [NS(tensor=names[0], src=CALLER, dst=devices[0])]
    routes += [NS(tensor=names[k + 1], src=a, dst=b) for k, (a, b) in enumerate(zip(devices, devices[1:]))]
    routes += [NS(tensor=names[-1], src=devices[-1], dst=CALLER)]
    return steps, routes, dict.fromkeys(names, 1024)


def test_the_critical_path_with_fixed_costs_grows_with_its_steps_and_messages():
    cl = two()
    for devs in (["a"], ["a", "b"], ["a", "b", "a", "b"]):
        steps, routes, sizes = _chain(devs)
        plain = cost.critical_path_ms(steps, routes, sizes, cl)
        fixed = cost.critical_path_ms(steps, routes, sizes, cl, fixed=True)
        assert fixed > plain
        # a serial chain pays every step and message: the chain's own fixed costs
        assert fixed - plain == pytest.approx(cost.chain_fixed_ms(cl, devs), rel=1e-3, abs=1e-5)
    short, long_ = _chain(["a", "b"]), _chain(["a", "b", "a", "b", "a", "b"])
    extra = [cost.critical_path_ms(*c, cl, fixed=True) - cost.critical_path_ms(*c, cl) for c in (short, long_)]
    assert extra[0] < extra[1]


def test_steps_that_run_at_once_pay_their_fixed_costs_at_once():
    """Two branches on two devices: the critical path pays one branch's fixed costs, not both."""
    cl = two()
    steps = [NS(name="l", device="a", inputs=(NS(name="x"),), outputs=(NS(name="y0"),), estimated_ms=1.0),
             NS(name="r", device="b", inputs=(NS(name="x"),), outputs=(NS(name="y1"),), estimated_ms=1.0)]
    routes = [NS(tensor="x", src=CALLER, dst="a"), NS(tensor="x", src=CALLER, dst="b"),
              NS(tensor="y0", src="a", dst=CALLER), NS(tensor="y1", src="b", dst=CALLER)]
    sizes = {"x": 64, "y0": 64, "y1": 64}
    extra = cost.critical_path_ms(steps, routes, sizes, cl, fixed=True) - cost.critical_path_ms(steps, routes, sizes, cl)
    assert extra == pytest.approx(cost.STEP_MS + 2 * cost.MESSAGE_MS, rel=1e-3)


def test_pipeline_figures_pay_every_stage_and_cut():
    cl = two()
    st = lambda d, c, s=0.0, b=0.0: NS(device=d, compute_ms=c, send_ms=s, link_busy_ms=b, send_bytes=0)  # noqa: E731
    lat1, per1 = cost.pipeline_ms(cl, [st("a", 10.0)])
    lat2, per2 = cost.pipeline_ms(cl, [st("a", 5.0, 0.5, 0.4), st("b", 5.0)])
    assert lat1 > 10.0 and per1 > 10.0  # one device: its step, the caller's messages
    assert lat2 - 10.5 > lat1 - 10.0  # two stages: a step and a message more than one
    assert 5.0 < per2 < per1  # streamed, the slowest stage with its step
    # streamed, a message costs the device at each of its ends: a's the caller's input and its cut,
    # b's the cut and the caller's output, each beside its compute and step
    cl_slow_msg = two(step_ms=0.0, message_ms=20.0)
    assert cost.pipeline_ms(cl_slow_msg, [st("a", 5.0, 0.5, 0.4), st("b", 5.0)])[1] == pytest.approx(45.0)
    assert cost.pipeline_ms(cl_slow_msg, [st("a", 10.0)])[1] == pytest.approx(50.0)


def test_a_message_costs_the_cpu_at_both_its_ends():
    cl = Cluster((Device("a", 1.0, 1024), Device("b", 1.0, 1024)), Link(100.0, 0.0, 0.5),
                 pair_links=(("a", "b", Link(100.0, 0.0, 2.0)),))
    cpu = cost.message_cpu_ms(cl, {(CALLER, "a"): 1, ("a", "b"): 3, ("b", CALLER): 1, ("b", "b"): 5})
    assert cpu == {"a": pytest.approx(0.5 + 3 * 2.0), "b": pytest.approx(3 * 2.0 + 0.5)}  # none for the caller
    assert cost.message_cpu_ms(cl, {}) == {}


def test_cluster_yaml_takes_the_figures_and_checks_them():
    cl = cluster_from_dict({"devices": [{"name": "a", "gflops": 1, "memory_mb": 64, "step_ms": 0.07},
                                        {"name": "b", "gflops": 1, "memory_mb": 64}],
                            "links": {"default": {"bandwidth_mbps": 100, "latency_ms": 1, "message_ms": 0.4},
                                      "pairs": [{"between": ["a", "b"], "bandwidth_mbps": 50}]}})
    assert cl.device("a").step_ms == pytest.approx(0.07) and cl.device("b").step_ms is None
    assert cl.default_link.message_ms == pytest.approx(0.4) and cl.link("a", "b").message_ms is None
    with pytest.raises(ClusterError, match="step_ms"):
        cluster_from_dict({"devices": [{"name": "a", "gflops": 1, "step_ms": -1}]})
    with pytest.raises(ClusterError, match="message_ms"):
        cluster_from_dict({"devices": [{"name": "a", "gflops": 1}],
                           "links": {"default": {"bandwidth_mbps": 100, "message_ms": "fast"}}})


def test_calibrated_puts_measured_fixed_costs_on_every_device_and_link():
    t = calibrate.Timing(1.0, 1.0, 1.0, 1)
    fixed = calibrate.Fixed(0.01, 0.3, 0.31, 2000.0, t, t, 8)
    cl = cluster_from_dict({"devices": [{"name": "a", "gflops": 1}, {"name": "b", "gflops": 1}],
                            "links": {"default": {"bandwidth_mbps": 100},
                                      "pairs": [{"between": ["a", "b"], "bandwidth_mbps": 50}]}})
    out = calibrate.calibrated(cl, 20.0, None, fixed)
    assert all(d.step_ms == pytest.approx(0.01) and d.gflops == 20.0 for d in out.devices)
    assert out.default_link.message_ms == pytest.approx(0.3) and out.link("a", "b").message_ms == pytest.approx(0.3)
    loop = calibrate.calibrated(cl, 20.0, Link(5000.0, 0.02), fixed)
    assert loop.link("a", "b") == Link(5000.0, 0.02, 0.3)
    assert fixed.link(0.02) == Link(2000.0, 0.02, 0.3)  # the link as agents see it: their bandwidth


def test_plan_ids_do_not_depend_on_the_fixed_costs(tmp_path):
    """The plan records compute and transfer only: the fixed costs change the estimates strategies
    rank by, never a plan chosen without them (its id stays)."""
    import onnx

    import graphs

    model = tmp_path / "residual.onnx"
    onnx.save(graphs.residual(), str(model))
    ids = []
    for fx in ((None, None), (0.0, 0.0), (2.0, 3.0)):
        cl = two(*fx, gflops=1.0)
        ids.append(p.package(model, cl, out=tmp_path / f"d{len(ids)}", strategy="channel").plan.plan_id)
    assert len(set(ids)) == 1


# what packager/calibrate.py measured on a 2-core desktop machine (bench/bench_auto.py, docs/planning.md,
# "Measured: auto's pick against every candidate"): one core on EfficientNet-Lite0, the loopback link,
# one step and one message through two agents
CORE_GFLOPS, LOOP = 86.0, Link(2600.0, 0.02, 0.29)
STEP = 0.006


@pytest.mark.models
def test_auto_prefers_one_device_on_loopback_at_full_speed_with_the_measured_fixed_costs():
    """The issue's case: without fixed costs the dense channel split's dozens of small steps and
    messages look free and it wins; with them, one device (or its equal, replicas) does."""
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    devs = tuple(Device(n, CORE_GFLOPS, 4096, step_ms=STEP) for n in ("dev0", "dev1"))
    auto = p.plan(model, Cluster(devs, LOOP), strategy="auto", objective="latency", input_shapes=SHAPES)
    assert auto.winner.devices == ("dev0",), auto.reason
    dense = next(c for c in auto.ranking if c.name == "channel, dense")
    assert dense.latency_ms > auto.winner.latency_ms
    assert dense.latency_ms > dense.planned.latency_ms  # its own fixed costs, on top of the plan's figure
    # the same cluster without fixed costs: the old model, where a split of many small steps and
    # messages (channel, or spatial since each host's one interface is counted) wins
    bare = Cluster(tuple(dataclasses.replace(d, step_ms=0.0) for d in devs), dataclasses.replace(LOOP, message_ms=0.0))
    old = p.plan(model, bare, strategy="auto", objective="latency", input_shapes=SHAPES)
    assert old.winner.strategy in ("channel", "spatial") and len(old.winner.devices) == 2, old.reason


def test_a_profiles_step_cost_is_the_devices_unless_cluster_yaml_gives_one(tmp_path):
    from edgepart.packager.cluster import load_cluster
    from edgepart.profile import Profile

    prof = Profile("pi", "onnxruntime", ("CPU",), 1, 5.0, (("conv", 4.0),), 512.0, step_ms=0.04)
    (tmp_path / "pi.yaml").write_text(prof.to_yaml())
    assert Profile.from_dict(prof.to_dict()).step_ms == pytest.approx(0.04, rel=1e-3)
    old = {k: v for k, v in prof.to_dict().items() if k != "step_ms"}  # a profile written before step_ms
    assert Profile.from_dict(old).step_ms is None
    (tmp_path / "cluster.yaml").write_text("devices:\n  - {name: pi, profile: pi.yaml}\n"
                                           "  - {name: pj, profile: pi.yaml, step_ms: 0.5}\n"
                                           "  - {name: x, gflops: 1}\n")
    cl = load_cluster(tmp_path / "cluster.yaml")
    assert cost.step_ms(cl.device("pi")) == pytest.approx(0.04, rel=1e-3)  # the profile's, over the nominal
    assert cost.step_ms(cl.device("pj")) == pytest.approx(0.5)  # cluster.yaml's, over the profile's
    assert cost.step_ms(cl.device("x")) == cost.STEP_MS


def test_one_interface_per_host_sends_one_transfer_at_a_time():
    """docs/planning.md, "One interface per host": the caller sending the same 1 MB to two devices
    sends it twice on its one interface; each device's answer comes back through the caller's one
    interface in turn too, and the trip back is counted."""
    cl = two(step_ms=0.0, message_ms=0.0, mbps=100.0, latency_ms=0.0)
    mb = 1_000_000
    steps = [NS(name="l", device="a", inputs=(NS(name="x"),), outputs=(NS(name="y0"),), estimated_ms=1.0),
             NS(name="r", device="b", inputs=(NS(name="x"),), outputs=(NS(name="y1"),), estimated_ms=1.0)]
    routes = [NS(tensor="x", src=CALLER, dst="a"), NS(tensor="x", src=CALLER, dst="b"),
              NS(tensor="y0", src="a", dst=CALLER), NS(tensor="y1", src="b", dst=CALLER)]
    sizes = {"x": mb, "y0": mb, "y1": mb}
    apart = cost.critical_path_ms(steps, routes, sizes, cl)  # links of their own; the trip back not counted
    one = cost.busy_ms(mb, cl.default_link)  # 80 ms
    assert apart == pytest.approx(one + 1.0)
    shared = cost.critical_path_ms(steps, routes, sizes, cl, shared=True)
    # x to a, then x to b; b computes, and its answer waits for a's on the caller's interface
    # then a's answer goes back while b computes, and b's waits for the caller's interface
    assert shared == pytest.approx(3 * one + 1.0, rel=1e-6)
    fixed = cost.critical_path_ms(steps, routes, sizes, two(mbps=100.0, latency_ms=0.0), fixed=True, shared=True)
    assert fixed > shared  # each step and each of the four messages


def test_a_serial_chain_is_the_same_with_one_interface_per_host():
    cl = two(step_ms=0.0, message_ms=0.0)
    steps, routes, sizes = _chain(["a", "b", "a", "b"])
    back = cost.busy_ms(1024, cl.default_link) + cl.default_link.latency_ms  # the trip back to the caller
    assert cost.critical_path_ms(steps, routes, sizes, cl, shared=True) == pytest.approx(
        cost.critical_path_ms(steps, routes, sizes, cl) + back, rel=1e-6)


def test_the_busiest_interface_bounds_a_stream():
    cl = two(message_ms=0.5, mbps=100.0)
    mb = 1_000_000
    one = cost.busy_ms(mb, cl.default_link)
    # a sends to b and to the caller: two transfers out of a's interface per request
    flows = [(CALLER, "a", mb, 1), ("a", "b", mb, 1), ("a", CALLER, mb, 1), ("b", "a", mb // 2, 1)]
    assert cost.nic_period_ms(cl, flows) == pytest.approx(2 * one)  # messages cost CPU, not the interface
    assert cost.nic_period_ms(cl, [("a", "a", mb, 1)]) == 0.0  # nothing leaves the device


def test_strips_leave_the_gathering_device_one_after_another():
    cl = Cluster(tuple(Device(n, 10.0, 1024) for n in ("g", "s1", "s2")), Link(100.0, 0.0))
    mb = 1_000_000
    one = cost.busy_ms(mb, cl.default_link)
    branches = [("g", mb, 5.0, mb), ("s1", mb, 5.0, 0), ("s2", mb, 5.0, 0)]
    # s1's rows, then s2's: s2 starts computing after both transfers
    assert cost.fork_join_ms(cl, "g", "g", branches) == pytest.approx(2 * one + 5.0)
    # with a link of its own per strip (the plans' own figure), both arrive after one transfer
    assert cost.fork_join_ms(cl, "g", "g", branches, shared=False) == pytest.approx(one + 5.0)
    # their results come back into g one after another
    back = [("g", 0, 1.0, 0), ("s1", mb, 1.0, mb), ("s2", 0, 1.0 + one, mb)]
    assert cost.fork_join_ms(cl, "g", "g", back) == pytest.approx(one + 1.0 + one + one, rel=1e-6)


@pytest.mark.parametrize("message", [0.0, 0.3, 5.0, 50.0])
def test_the_pipeline_planner_is_exact_with_messages_on_the_devices(message):
    """Streamed, a stage pays the messages it takes in and sends on: the planner's best period is
    the exhaustive search's, whether messages are free, small, or what bounds the stream."""
    import graphs
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.pipeline.planner import exhaustive, plan_pipeline

    for seed in range(6):
        graph = analyse(graphs.random_model(seed, 8, dag=seed % 2 == 1))
        devs = tuple(Device(f"d{i}", g, 1 << 40) for i, g in enumerate((2e-5, 5e-5, 1e-5)[:2 + seed % 2]))
        cl = Cluster(devs, Link(0.02, 0.5, message))
        pp = plan_pipeline(graph, cl, "throughput")
        assert pp.score() == pytest.approx(exhaustive(graph, cl, "throughput"), rel=1e-9)
        stage_cpu = cost.message_cpu_ms(cl, {(CALLER, pp.stages[0].device): 1})[pp.stages[0].device]
        assert pp.period_with_fixed_ms >= pp.stages[0].compute_ms + stage_cpu


def test_a_messages_bytes_cost_the_cpu_at_both_its_ends_where_devices_say_how_fast():
    """handling_mbps: a message's bytes cost its sender and its receiver, never the caller; a device
    that gives no figure is not charged."""
    cl = Cluster((Device("a", 1.0, 1024, handling_mbps=8.0), Device("b", 1.0, 1024)), Link(100.0, 0.0))
    got = cost.handling_cpu_ms(cl, [(CALLER, "a", 1000, 1), ("a", "b", 3000, 1), ("b", CALLER, 5000, 1), ("a", "a", 9, 1)])
    assert got == {"a": pytest.approx(4.0), "b": 0.0}  # 4000 bytes at 8 Mbit/s = 4 ms; b gives no figure
    assert cost.handling_cpu_ms(cl, []) == {}


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_the_pipeline_planner_is_exact_with_the_bytes_on_the_devices(objective):
    """With handling_mbps, a stage pays for the bytes it takes in and sends on (the caller's inputs
    and outputs at the ends): the planner's best is still the exhaustive search's, and its own
    figure (evaluate, through cost.pipeline_ms) is the one it minimised."""
    import graphs
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.pipeline.planner import exhaustive, plan_pipeline

    for seed in range(6):
        graph = analyse(graphs.random_model(seed, 8, dag=seed % 2 == 1))
        devs = tuple(Device(f"d{i}", g, 1 << 40, handling_mbps=h)
                     for i, (g, h) in enumerate(((2e-5, 0.05), (5e-5, 0.2), (1e-5, None))[:2 + seed % 2]))
        cl = Cluster(devs, Link(0.02, 0.5, 0.3))
        pp = plan_pipeline(graph, cl, objective)
        assert pp.score() == pytest.approx(exhaustive(graph, cl, objective), rel=1e-9)
        plain = plan_pipeline(graph, dataclasses.replace(cl, devices=tuple(
            dataclasses.replace(d, handling_mbps=None) for d in devs)), objective)
        assert pp.score() > plain.score()  # the bytes cost something


def test_handling_moves_the_cut_to_fewer_bytes_and_every_strategy_counts_it():
    """EfficientNet-Lite0 on two equal devices, streamed: with agents that handle bytes slowly, the
    pipeline cuts where fewer bytes cross than where the FLOPs balance, and every strategy's
    figures grow by the bytes it moves (docs/planning.md, "Fixed costs")."""
    from edgepart.testing import zoo

    model = zoo.efficientnet_lite0()
    fast = Cluster((Device("a", 10.0, 1024), Device("b", 10.0, 1024)), Link(10_000.0, 0.05, 0.1))
    slow = dataclasses.replace(fast, devices=tuple(dataclasses.replace(d, handling_mbps=500.0) for d in fast.devices))
    plans = {}
    for name, cl in (("fast", fast), ("slow", slow)):
        plans[name] = {s: p.plan(model, cl, strategy=s, objective="throughput", input_shapes=SHAPES)
                       for s in ("pipeline", "replicas", "channel", "spatial")}
    cut = {k: v["pipeline"].pipeline.stages[0].send_bytes for k, v in plans.items()}
    assert cut["slow"] < cut["fast"]
    for s in ("pipeline", "replicas", "channel", "spatial"):
        assert plans["slow"][s].latency_with_fixed_ms > plans["fast"][s].latency_with_fixed_ms, s
        assert plans["slow"][s].throughput_with_fixed_per_s < plans["fast"][s].throughput_with_fixed_per_s, s

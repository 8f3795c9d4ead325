"""Fewer devices when that is better (docs/planning.md, "Fewer devices").

With `leave_out`, the pipeline planner may give a device no stage when every plan that uses it is
worse for the objective; the plan names it with both figures, and the package writes no bundle for
it. Real models (EfficientNet-Lite0 from edgepart.testing.zoo, helper graphs), real onnxruntime.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from rich.console import Console

import edgepart.packager as p
from edgepart.bundle import load_dist
from edgepart.packager.check.verify import verify
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.pipeline.planner import exhaustive, plan_pipeline

from graphs import random_model, residual

pytestmark = pytest.mark.timeout(180)

SHAPES = {"input": (1, 3, 224, 224)}


def cluster(gflops: dict[str, float], mbps: float = 50.0, latency_ms: float = 0.2):
    return cluster_from_dict({"devices": [{"name": n, "gflops": g, "memory_mb": 1024} for n, g in gflops.items()],
                              "links": {"default": {"bandwidth_mbps": mbps, "latency_ms": latency_ms}}})


@pytest.fixture(scope="module")
def efficientnet():
    from edgepart.testing import zoo

    return zoo.efficientnet_lite0()


@pytest.mark.models
def test_fast_and_slow_device_latency_gives_the_fast_one_alone(efficientnet):
    cl = cluster({"fast": 60.0, "slow": 6.0})
    planned = p.plan(efficientnet, cl, objective="latency", input_shapes=SHAPES, leave_out=True)
    every = p.plan(efficientnet, cl, objective="latency", input_shapes=SHAPES)  # the default: every device a stage
    assert planned.pipeline.devices == ("fast",)
    assert sorted(every.pipeline.devices) == ["fast", "slow"]
    (x,) = planned.pipeline.left_out
    assert x.device == "slow"
    # the figures the planner compared: with the fixed costs (docs/planning.md, "Fixed costs")
    assert x.without_ms == pytest.approx(planned.latency_with_fixed_ms) and x.with_ms == pytest.approx(every.latency_with_fixed_ms)
    assert x.with_ms > x.without_ms
    d = planned.to_dict()
    assert d["left_out"][0]["device"] == "slow"
    assert d["left_out"][0]["with_latency_ms"] > d["left_out"][0]["without_latency_ms"]
    assert d["left_out"][0]["why"].startswith("left out slow: with it, latency")
    con = Console(record=True, width=200)
    planned.show(con, "plan")
    assert "left out slow: with it, latency" in con.export_text()


@pytest.mark.models
def test_equal_devices_and_throughput_keep_both(efficientnet):
    planned = p.plan(efficientnet, cluster({"a": 30.0, "b": 30.0}), objective="throughput", input_shapes=SHAPES,
                     leave_out=True)
    assert sorted(planned.pipeline.devices) == ["a", "b"] and planned.pipeline.left_out == ()
    assert planned.to_dict()["left_out"] == []


def test_a_device_that_only_adds_a_link_is_left_out_under_throughput_too():
    """A very slow device: any stage on it is the slowest stage, so the period is better without it."""
    g = analyse(residual())
    cl = cluster({"a": 1.0, "b": 1.0, "crawl": 1e-4}, mbps=1000.0)
    pp = plan_pipeline(g, cl, "throughput", leave_out=True)
    assert "crawl" not in pp.devices and len(pp.devices) == 2
    assert [x.device for x in pp.left_out] == ["crawl"]
    assert pp.left_out[0].with_ms > pp.period_ms


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_leave_out_is_the_best_over_every_subset_of_devices(seed, objective):
    """The DP with leave_out equals brute force over every non-empty subset of the devices."""
    rng = np.random.default_rng(500 + seed)
    graph = analyse(random_model(seed, int(rng.integers(4, 9)), dag=seed % 2 == 1))
    gflops = {f"d{i}": float(g) for i, g in enumerate(rng.choice([0.05, 1.0, 3.0], size=3))}
    cl = cluster(gflops, mbps=float(rng.choice([0.5, 50.0])), latency_ms=0.1)
    best = math.inf
    for k in range(1, 4):
        for sub in itertools.combinations(gflops, k):
            if k <= graph.n:
                best = min(best, exhaustive(graph, cluster({n: gflops[n] for n in sub}, cl.default_link.bandwidth_mbps,
                                                           0.1), objective))
    pp = plan_pipeline(graph, cl, objective, leave_out=True)
    assert pp.score() == pytest.approx(best, rel=1e-9, abs=1e-12)
    full = plan_pipeline(graph, cl, objective)
    assert pp.score() <= full.score() * (1 + 1e-12)
    if len(pp.devices) < 3:  # fewer only when strictly better
        assert pp.score() < full.score()
        assert {x.device for x in pp.left_out} == set(gflops) - set(pp.devices)
    else:
        assert pp == full


def test_a_left_out_device_gets_no_bundle_and_the_split_is_exact(tmp_path):
    """The package holds bundles of the used devices only (a stale one of the left-out device is
    removed), the plan lists only them, and the split is exact against onnxruntime."""
    import onnx

    path = tmp_path / "residual.onnx"
    onnx.save(residual(), str(path))
    cl = cluster({"a": 1.0, "b": 1.0, "crawl": 1e-4}, mbps=1000.0)
    p.package(path, cl, out=tmp_path / "dist", objective="throughput")  # every device: crawl gets a bundle
    assert (tmp_path / "dist" / "crawl" / "manifest.json").is_file()
    res = p.package(path, cl, out=tmp_path / "dist", objective="throughput", leave_out=True)
    assert set(res.bundle_dirs) == {"a", "b"} and set(res.plan.device_names()) == {"a", "b"}
    assert not (tmp_path / "dist" / "crawl").exists()
    assert set(load_dist(tmp_path / "dist")) == {"a", "b"}
    from edgepart.inputs import random_inputs

    v = verify(tmp_path / "dist", path, random_inputs(res.plan.inputs, seed=0), 1e-5)
    assert v.ok, v.max_abs_diff


@pytest.mark.models
def test_leave_out_from_the_command_line(efficientnet, tmp_path):
    """`plan --leave-out` gives the fast device alone and says why the slow one is out; without the
    flag every device keeps a stage; another strategy refuses the flag by name."""
    import yaml
    from typer.testing import CliRunner

    from edgepart.cli import app

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"devices": [{"name": "fast", "gflops": 60}, {"name": "slow", "gflops": 6}],
                                                     "links": {"default": {"bandwidth_mbps": 50}}}))
    base = ["plan", str(efficientnet), "-c", str(tmp_path / "c.yaml"), "--input-shape", "input=1x3x224x224"]
    r = CliRunner().invoke(app, [*base, "--leave-out"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "left out slow: with it, latency" in r.output, r.output
    r = CliRunner().invoke(app, base, env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "left out" not in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--leave-out", "--strategy", "channel"], env={"COLUMNS": "200"})
    assert r.exit_code != 0 and "--leave-out applies to --strategy pipeline" in r.output, r.output


def test_more_devices_than_nodes_leaves_the_extra_ones_out():
    """A 3-node model on 5 devices: refused without leave_out (every device needs a node), planned
    with it on at most 3, the others named as left out because no plan that uses them fits."""
    from edgepart.errors import PlanningError

    g = analyse(random_model(4, 3, dag=False))
    assert g.n == 3
    cl = cluster({f"d{i}": 10.0 + i for i in range(5)}, mbps=1000.0)
    with pytest.raises(PlanningError, match="at most 3"):
        plan_pipeline(g, cl, "latency")
    pp = plan_pipeline(g, cl, "latency", leave_out=True)
    assert 1 <= len(pp.devices) <= 3 and len(pp.left_out) == 5 - len(pp.devices)
    # no worse than the fastest device alone, a plan it could have picked
    assert pp.score() <= plan_pipeline(g, cluster({"d4": 14.0}, mbps=1000.0), "latency").score() * (1 + 1e-9)
    assert all(x.device not in pp.devices for x in pp.left_out)

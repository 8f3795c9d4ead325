"""packager/calibrate.py: measuring a device's speed and the loopback link for the cost model, on a
model built in code (real onnxruntime runs, real sockets; figures only checked for sense)."""

from __future__ import annotations

import os
import threading

import numpy as np
import onnx
import pytest

import graphs
from edgepart.packager import calibrate
from edgepart.packager.cluster import Link, cluster_from_dict
from edgepart.packager.cost import CostModel
from edgepart.packager.model.submodel import extract
from edgepart.packager.model.graph import analyse

X = {"x": np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)}


def test_measure_device_is_flops_over_the_median_time():
    m = graphs.residual()
    s = calibrate.measure_device(m, X, threads=1, runs=7, warmup=1)
    assert s.flops == 2.0 * analyse(m, {"x": (1, 4, 8, 8)}).total_macs
    assert s.gflops == pytest.approx(s.flops / (s.timing.median_ms * 1e-3) / 1e9)
    assert s.timing.runs == 7 and 0 < s.timing.p10_ms <= s.timing.median_ms <= s.timing.p90_ms


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs thread affinity (Linux)")
def test_pinned_moves_only_the_calling_thread_and_puts_it_back():
    before = os.sched_getaffinity(0)
    core = min(before)
    seen = {}
    with calibrate.pinned({core}):
        seen["inside"] = os.sched_getaffinity(0)
        t = threading.Thread(target=lambda: seen.setdefault("child", os.sched_getaffinity(0)))
        t.start()
        t.join()
    assert seen == {"inside": {core}, "child": {core}}  # threads started inside inherit it
    assert os.sched_getaffinity(0) == before
    with calibrate.pinned(None):
        assert os.sched_getaffinity(0) == before


def test_time_stages_feeds_each_stage_what_came_before(tmp_path):
    m = graphs.residual()  # r0 skips from node 1 to node 7: stage 1 reads it from stage 0
    g = analyse(m, {"x": (1, 4, 8, 8)})
    paths = []
    for i, (a, b) in enumerate([(0, 4), (4, g.n)]):
        sub, _, _ = extract(m, g, a, b, f"stage{i}")
        onnx.save(sub, str(tmp_path / f"stage{i}.onnx"))
        paths.append(tmp_path / f"stage{i}.onnx")
    times = calibrate.time_stages(paths, X, runs=3, warmup=1)
    assert len(times) == 2 and all(t.median_ms > 0 and t.runs == 3 for t in times)


def test_measure_loopback_gives_a_link_the_cost_model_reads():
    link = calibrate.measure_loopback(size_bytes=1 << 16, messages=8, pings=5, timeout_s=10)
    assert link.bandwidth_mbps > 1 and 0 < link.latency_ms < 1000


def test_calibrated_replaces_speeds_and_links():
    cl = cluster_from_dict({"devices": [{"name": "a", "gflops": 1}, {"name": "b", "gflops": 2}],
                            "links": {"default": {"bandwidth_mbps": 10},
                                      "pairs": [{"between": ["a", "b"], "bandwidth_mbps": 5}]}})
    one = calibrate.calibrated(cl, 40.0)
    assert [d.gflops for d in one.devices] == [40.0, 40.0] and one.link("a", "b").bandwidth_mbps == 5
    each = calibrate.calibrated(cl, {"b": 30.0}, Link(8000.0, 0.05))
    assert [d.gflops for d in each.devices] == [1.0, 30.0]
    assert each.link("a", "b") == Link(8000.0, 0.05)
    # the cost model prices the measured model at the measured time
    m = graphs.residual()
    g = analyse(m, {"x": (1, 4, 8, 8)})
    s = calibrate.measure_device(m, X, runs=5, warmup=1)
    cost = CostModel(g, calibrate.calibrated(cl, s.gflops))
    assert cost.compute_ms("a", 0, g.n) == pytest.approx(s.timing.median_ms)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs thread affinity (Linux)")
def test_measure_cores_pools_every_core_and_puts_the_affinity_back():
    before = os.sched_getaffinity(0)
    cores = sorted(before)[:2]
    s = calibrate.measure_cores(graphs.residual(), X, cores, runs=6, warmup=1)
    assert s.timing.runs == 6 and s.gflops > 0
    assert os.sched_getaffinity(0) == before

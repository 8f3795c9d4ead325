"""Emulated devices as slow as real ones: an agent process capped with a CPU cgroup
(sdk/testing/cpucap.py, AgentProcesses(cpu_cap=...)) computes about 1/fraction as slowly, and its
group is gone after stop, also when the agent fails to start.

Real `edgepart run` processes, real cgroups (needs root and a writable cgroup tree; v1 here, v2
elsewhere), timings compared side by side in one run with a wide margin: a 0.25 cap must make the
same requests at least 2x slower (4x in theory), on any CPU.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgepart
import edgepart.packager as p
from edgepart.errors import PeerError
from edgepart.testing import cpucap
from edgepart.testing.emulate import AgentProcesses

pytestmark = pytest.mark.timeout(180)


def _cgroups_or_skip() -> None:
    try:
        cpucap.CpuCap.create("probe", 0.5).remove()
    except cpucap.CgroupError as e:
        pytest.skip(f"CPU cgroups are not writable here: {e}")


def matmul_chain(layers: int = 8, dim: int = 384, batch: int = 96) -> onnx.ModelProto:
    """~2 * batch * dim^2 * layers FLOPs (226 MFLOPs): some ms of one core per request."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}"))
        x = f"t{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, dim])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, dim])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def one_device_dist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cap")
    path = tmp / "chain.onnx"
    onnx.save(matmul_chain(), str(path))
    cluster = tmp / "cluster.yaml"
    cluster.write_text("devices:\n  - {name: dev0, gflops: 10, memory_mb: 1024}\nlinks:\n  default: {bandwidth_mbps: 1000}\n")
    p.package(path, cluster, out=tmp / "dist", model_name="cap-chain")
    return tmp / "dist"


def _seconds_for(dist, n: int, **caps) -> float:
    """Wall time of n requests one after another through one agent process (after two warm-ups)."""
    x = {"x": np.random.default_rng(1).standard_normal((96, 384)).astype(np.float32)}
    with AgentProcesses(dist, interface="127.0.0.1", threads=1, **caps) as procs:
        groups = procs.cgroups
        if caps:
            (path,) = groups.values()
            assert path.is_dir() and procs.agents["dev0"].proc.pid in procs.agents["dev0"].cap.pids()
        with edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=60) as sess:
            for _ in range(2):
                sess.run(None, x)
            t0 = time.perf_counter()
            for _ in range(n):
                sess.run(None, x)
            took = time.perf_counter() - t0
    for path in groups.values():
        assert not path.exists(), f"{path} is still there after stop"
    return took


def test_a_quarter_core_cap_makes_the_agent_at_least_twice_as_slow(one_device_dist):
    _cgroups_or_skip()
    n = 24
    free = _seconds_for(one_device_dist, n)
    capped = _seconds_for(one_device_dist, n, cpu_cap=0.25)
    free_again = _seconds_for(one_device_dist, n)
    base = min(free, free_again)
    print(f"\n{n} requests: uncapped {free:.3f} s and {free_again:.3f} s, capped at 0.25 of a core {capped:.3f} s "
          f"({capped / base:.1f}x)")
    assert capped >= 2.0 * base, (free, capped, free_again)


def test_a_speed_target_becomes_a_fraction_of_the_core():
    assert cpucap.fraction_for(2.0, 8.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        cpucap.fraction_for(0.0, 8.0)
    with pytest.raises(ValueError, match="core_gflops"):
        AgentProcesses.__init__(object.__new__(AgentProcesses), ".", gflops={"dev0": 2.0})


def test_the_group_is_removed_when_the_agent_fails_to_start(one_device_dist):
    """An agent that exits at once (an unknown flag): start() fails, and its group is gone."""
    _cgroups_or_skip()
    procs = AgentProcesses(one_device_dist, interface="127.0.0.1", cpu_cap=0.5, extra=["--no-such-flag"])
    with pytest.raises(PeerError):
        procs.start(timeout_s=30)
    assert procs.cgroups == {}
    _, parent = cpucap.cpu_hierarchy()
    import os

    assert not list(parent.glob(f"edgepart-{os.getpid():x}-*")), "a group of this process is left behind"


def test_a_group_is_made_with_its_quota_and_removed():
    _cgroups_or_skip()
    cap = cpucap.CpuCap.create("dev/odd name", 0.3)
    try:
        assert cap.path.is_dir() and "/" not in cap.path.name
        if cap.version == 1:
            assert int((cap.path / "cpu.cfs_quota_us").read_text()) == 3_000
            assert int((cap.path / "cpu.cfs_period_us").read_text()) == cpucap.PERIOD_US
        else:
            assert (cap.path / "cpu.max").read_text().split() == ["3000", str(cpucap.PERIOD_US)]
    finally:
        cap.remove()
    assert not cap.path.exists()
    cap.remove()  # twice is fine
    small = cpucap.CpuCap.create("slow", 0.02)  # 1 ms (the smallest quota) every 50 ms
    try:
        if small.version == 1:
            assert int((small.path / "cpu.cfs_quota_us").read_text()) == 1_000
            assert int((small.path / "cpu.cfs_period_us").read_text()) == 50_000
    finally:
        small.remove()

"""Emulated devices as slow as real ones: an agent process capped with a CPU cgroup
(sdk/testing/cpucap.py, AgentProcesses(cpu_cap=...)) computes about 1/fraction as slowly, and its
group is gone after stop, also when the agent fails to start.

Real `edgepart run` processes, real cgroups (needs root and a writable cgroup tree; v1 here, v2
elsewhere), timings compared side by side in one run with a wide margin: a 0.25 cap must make the
same requests at least 2x slower (4x in theory), on any CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

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


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _seconds_for(dist, n: int, **caps) -> tuple[float, float]:
    """Wall time of n requests one after another through one agent process (after two warm-ups), and
    the share of one core the agent used meanwhile (its CPU seconds over the wall time)."""
    x = {"x": np.random.default_rng(1).standard_normal((96, 384)).astype(np.float32)}
    with AgentProcesses(dist, interface="127.0.0.1", threads=1, **caps) as procs:
        groups = procs.cgroups
        if caps:
            (path,) = groups.values()
            assert path.is_dir() and procs.agents["dev0"].proc.pid in procs.agents["dev0"].cap.pids()
        with edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=60) as sess:
            for _ in range(2):
                sess.run(None, x)
            pid = procs.agents["dev0"].proc.pid
            c0, t0 = _cpu_s(pid), time.perf_counter()
            for _ in range(n):
                sess.run(None, x)
            took = time.perf_counter() - t0
            share = (_cpu_s(pid) - c0) / took
    for path in groups.values():
        assert not path.exists(), f"{path} is still there after stop"
    return took, share


def test_a_quarter_core_cap_holds_the_agent_to_its_quota(one_device_dist):
    _cgroups_or_skip()
    n = 24
    free, free_share = _seconds_for(one_device_dist, n)
    capped, capped_share = _seconds_for(one_device_dist, n, cpu_cap=0.25)
    free_again, _ = _seconds_for(one_device_dist, n)
    base = min(free, free_again)
    print(f"\n{n} requests: uncapped {free:.3f} s and {free_again:.3f} s, capped at 0.25 of a core {capped:.3f} s "
          f"({capped / base:.1f}x); the agent used {free_share:.2f} of a core uncapped, {capped_share:.2f} capped")
    # the cap itself, whatever else runs: never more than its quota of a core (clock ticks: a margin)
    assert capped_share <= 0.25 * 1.3, capped_share
    # and it slows the agent: 4x on an idle machine; others' load slows the uncapped runs too, so loosely
    assert capped >= 1.5 * base, (free, capped, free_again)


def test_a_cap_for_a_device_that_is_not_there_is_an_error(one_device_dist):
    with pytest.raises(ValueError, match="dev9"):
        AgentProcesses(one_device_dist, cpu_cap={"dev9": 0.5})
    with pytest.raises(ValueError, match="dev9"):
        AgentProcesses(one_device_dist, gflops={"dev0": 1.0, "dev9": 1.0}, core_gflops=10.0)


def test_a_speed_target_becomes_a_fraction_of_the_core():
    assert cpucap.fraction_for(2.0, 8.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        cpucap.fraction_for(0.0, 8.0)
    with pytest.raises(ValueError, match="core_gflops"):
        AgentProcesses.__init__(object.__new__(AgentProcesses), ".", gflops={"dev0": 2.0})


def test_a_cap_is_a_quota_of_its_share_of_the_period():
    assert cpucap.quota_of(0.3) == (3_000, cpucap.PERIOD_US)
    assert cpucap.quota_of(0.02) == (1_000, 50_000)  # the smallest quota, over a longer period
    assert cpucap.quota_of(2.0) == (20_000, cpucap.PERIOD_US)  # two cores
    with pytest.raises(ValueError, match="positive fraction"):
        cpucap.quota_of(0.0)


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

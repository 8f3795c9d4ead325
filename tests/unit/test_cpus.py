"""The thread budget comes from what the process may use (affinity mask, cgroup v1 or v2 quota),
never from the machine's core count (docs/agents.md, "Threads")."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import sys
import time
from pathlib import Path

import pytest

from edgepart.cpus import cgroup_quota, cpu_budget, parse_cfs, parse_cpu_max
from edgepart.runtime import session_threads

PROBE = "import json; from edgepart.cpus import cpu_budget; b = cpu_budget(); print(json.dumps([b.cores, b.source]))"


def test_cpu_max_and_cfs_lines():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("50000 100000\n") == 0.5
    assert parse_cpu_max("250000 100000") == 2.5
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("150000\n", "100000\n") == 1.5


def test_the_tightest_quota_of_the_process_cgroup_and_its_parents(tmp_path):
    # a cgroup tree as the kernel lays it out: v1 under cpu,cpuacct/, v2 at the root
    v1 = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1.parent / "cpu.cfs_quota_us").write_text("150000\n")  # the parent limits it
    (v1.parent / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota("4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n", tmp_path) == (1.5, "cgroup v1 quota")
    v2 = tmp_path / "v2" / "user.slice" / "app"
    v2.mkdir(parents=True)
    (v2 / "cpu.max").write_text("50000 100000\n")
    (v2.parent / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota("0::/user.slice/app\n", tmp_path / "v2") == (0.5, "cgroup v2 quota")
    # inside a container the path names the host's tree; the container's mount root still counts
    (tmp_path / "v2" / "cpu.max").write_text("100000 100000\n")
    assert cgroup_quota("0::/host/path/that/is/not/here\n", tmp_path / "v2") == (1.0, "cgroup v2 quota")
    assert cgroup_quota("0::/\n", tmp_path / "nothing") == (None, "")


def test_affinity_of_one_core_gives_one_thread():
    core = min(os.sched_getaffinity(0))
    out = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [1, "affinity"]
    assert cpu_budget().cores == len(os.sched_getaffinity(0))  # no quota on the test's own process


def _cgroup_with_quota(name: str, cores: float) -> tuple[Path, str]:
    """A real cgroup of this machine's version with a CPU quota; returns (folder, version)."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        d = v1 / name
        d.mkdir(exist_ok=True)
        (d / "cpu.cfs_period_us").write_text("100000")
        (d / "cpu.cfs_quota_us").write_text(str(int(cores * 100000)))
        return d, "cgroup v1 quota"
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists():
        d = v2 / name
        d.mkdir(exist_ok=True)
        (d / "cpu.max").write_text(f"{int(cores * 100000)} 100000")
        return d, "cgroup v2 quota"
    pytest.fail("no cgroup CPU controller is mounted (neither v1 /sys/fs/cgroup/cpu nor v2)")


def _widest_affinity() -> int:
    """How many cores a process here may be given (a cpuset bounds it; taskset does not), asked of a
    thread of its own: on Linux affinity is per thread."""
    got = []

    def ask() -> None:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        got.append(len(os.sched_getaffinity(0)))

    t = threading.Thread(target=ask)
    t.start()
    t.join(10)
    return got[0] if got else 1


def test_a_cgroup_quota_of_half_a_core_gives_one_thread():
    d, version = _cgroup_with_quota(f"edgepart-test-{os.getpid()}", 0.5)
    try:
        script = f"echo $$ > {d}/cgroup.procs && exec {sys.executable} -c '{PROBE}'"
        every = range(os.cpu_count() or 1)  # the child may use every core (this run may be under taskset -c 0)
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                             preexec_fn=lambda: os.sched_setaffinity(0, every))
        assert out.returncode == 0, out.stderr
        # where the child can have one core only (one in the machine, or a cpuset), its affinity says one
        # thread as well as the quota does
        assert json.loads(out.stdout) in ([1, version], *([[1, "affinity"]] if _widest_affinity() == 1 else []))
    finally:
        for _ in range(50):  # the child has exited; the kernel frees the group a moment later
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_flags_and_the_cluster_win_over_the_budget():
    assert session_threads(3, 2) == (3, "--threads")
    assert session_threads(0, 2) == (2, "cluster.yaml")
    n, why = session_threads(0, 0)
    assert n == cpu_budget().cores and ("affinity" in why or "quota" in why)

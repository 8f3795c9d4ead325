"""How many cores this process may use: the CPU affinity mask and the cgroup CPU quota.

onnxruntime sizes its intra-op pool by the machine's core count, not by what the process may use:
an `edgepart run` pinned to one core (taskset, `docker --cpuset-cpus`, a cgroup quota, a Pi busy
with other work) then starts a thread per core in every step, and they fight over the one core it
has (measured 2.6x slower; docs/agents.md, "Threads"). The agent sizes its threads from here instead.

Both cgroup versions are read: v2's `cpu.max` ("max 100000" or "QUOTA PERIOD") and v1's
`cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: no quota), at the process's own cgroup and every
parent up to the mount's root; the tightest quota wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuBudget:
    """What this process may use: `cores` (at least 1), and why (for logs and `edgepart discover`)."""

    cores: int
    affinity: int  # cores in the affinity mask
    quota_cores: float | None  # the cgroup quota in cores; None without one
    source: str  # "affinity", "cgroup v1 quota", "cgroup v2 quota"


def parse_cpu_max(text: str) -> float | None:
    """A cgroup v2 `cpu.max` line in cores ("max 100000" -> None, "50000 100000" -> 0.5)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` in cores (a quota of -1 -> None)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except OSError:
        return None


def _levels(mount: Path, rel: str) -> list[Path]:
    """The cgroup folder of `rel` under `mount` and each parent up to the mount (those that exist).
    Inside a container the path in /proc/self/cgroup may name the host's tree while the mount is the
    container's own root, so the mount's root is always among them."""
    out, p = [], Path(rel.strip() or "/")
    while True:
        d = mount / str(p).lstrip("/")
        if d.is_dir():
            out.append(d)
        if p == p.parent:
            break
        p = p.parent
    if mount not in out and mount.is_dir():
        out.append(mount)
    return out


def cgroup_quota(proc_cgroup: str, root: Path = Path("/sys/fs/cgroup")) -> tuple[float | None, str]:
    """The tightest CPU quota over this process's cgroups (v2 and v1), in cores, and its version."""
    best: tuple[float | None, str] = (None, "")
    for line in proc_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hier == "0" and controllers == "":  # v2 (unified): cpu.max
            for mount in (root, root / "unified"):
                for d in _levels(mount, rel):
                    text = _read(d / "cpu.max")
                    q = parse_cpu_max(text) if text else None
                    if q is not None and (best[0] is None or q < best[0]):
                        best = (q, "cgroup v2 quota")
        elif "cpu" in controllers.split(","):  # v1: cfs quota and period
            names = {controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"}
            for mount in (root / n for n in sorted(names)):
                for d in _levels(mount, rel):
                    qt, pt = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                    q = parse_cfs(qt, pt) if qt and pt else None
                    if q is not None and (best[0] is None or q < best[0]):
                        best = (q, "cgroup v1 quota")
    return best


def cpu_budget() -> CpuBudget:
    """The cores this process may use now: min(affinity mask, ceil(cgroup quota)), at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    text = _read(Path("/proc/self/cgroup")) or ""
    try:
        quota, version = cgroup_quota(text)
    except (ValueError, OSError):  # an unreadable or odd cgroup file: the affinity alone
        quota, version = None, ""
    if quota is not None and math.ceil(quota) < affinity:
        return CpuBudget(max(1, math.ceil(quota)), affinity, quota, version)
    return CpuBudget(max(1, affinity), affinity, quota, "affinity")


__all__ = ["CpuBudget", "cgroup_quota", "cpu_budget", "parse_cfs", "parse_cpu_max"]

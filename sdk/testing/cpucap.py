"""Cap an emulated device's CPU with a CPU cgroup, so that it is as slow as the device it stands for.

This machine's cores are 10 to 100 times a Raspberry Pi's; an emulated device capped to a fraction
of a core (or to a target GFLOP/s, through a core's measured speed on the model) computes at about
the device's speed, so compute weighs against the links as it will on the real cluster.

    cap = CpuCap.create("dev1", 0.25)        # a child group, 2.5 ms of CPU every 10 ms
    Popen(argv, preexec_fn=cap.enter)        # the child joins the group before it runs the command
    cap.remove()                             # its processes back to the parent group, the group gone

cgroup v1 (`/sys/fs/cgroup/cpu/`: `cpu.cfs_period_us`, `cpu.cfs_quota_us`, `cgroup.procs`) and
v2 (`cpu.max`, with `+cpu` in the parent's `cgroup.subtree_control`) are both supported. Every
group is made below this process's own CPU cgroup and named `edgepart-<pid hex>-<counter>-<device>`,
so parallel runs never collide and `cleanup_stale` can tell the leftovers of a process that died.
Needs write access to the cgroup tree (root); `CpuCap.create` says so clearly when it is missing.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgepart.errors import EdgepartError

# The period the quota is a share of: 10 ms, not the kernel's default 100 ms, so a request of some
# tens of ms is slowed evenly (with 100 ms it may run at full speed for its quota, then wait out the
# period); longer where the quota would fall under the kernel's smallest, 1 ms.
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000
ROOT = Path("/sys/fs/cgroup")
PREFIX = "edgepart"
_counter = itertools.count()


def quota_of(fraction: float) -> tuple[int, int]:
    """The (quota µs, period µs) that a cap of `fraction` of a core is set to: PERIOD_US, longer where
    the quota would fall under MIN_QUOTA_US."""
    if not fraction > 0:
        raise ValueError(f"a CPU cap is a positive fraction of a core, not {fraction!r}")
    period = max(PERIOD_US, int(-(-MIN_QUOTA_US // fraction)))
    return max(MIN_QUOTA_US, int(round(fraction * period))), period


class CgroupError(EdgepartError):
    """A CPU cgroup cannot be made or used here (no cgroup tree, no write access)."""


def _own_path(controller_line: str) -> str:
    """This process's path in one hierarchy of /proc/self/cgroup ("" for the root)."""
    return controller_line.split(":", 2)[2].strip().lstrip("/")


def cpu_hierarchy() -> tuple[int, Path]:
    """(cgroup version, the folder of this process's own CPU cgroup), or a CgroupError saying why none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as e:
        raise CgroupError(f"cannot read /proc/self/cgroup ({e}): CPU caps need Linux cgroups") from None
    for line in lines:  # v1: a hierarchy with the cpu controller ("1:cpu:/" or "3:cpu,cpuacct:/x")
        parts = line.split(":", 2)
        if len(parts) == 3 and "cpu" in parts[1].split(","):
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = ROOT / name
                if (base / "cpu.cfs_quota_us").exists():
                    return 1, base / _own_path(line)
    for line in lines:  # v2: "0::/path"
        if line.startswith("0::") and (ROOT / "cgroup.controllers").exists():
            if "cpu" not in (ROOT / "cgroup.controllers").read_text().split():
                raise CgroupError(f"the cgroup v2 tree at {ROOT} has no cpu controller: CPU caps cannot be set")
            return 2, ROOT / _own_path(line)
    raise CgroupError(f"no CPU cgroup here: neither a v1 cpu hierarchy ({ROOT}/cpu/cpu.cfs_quota_us) nor a v2 tree "
                      f"({ROOT}/cgroup.controllers) is mounted")


def fraction_for(gflops: float, core_gflops: float) -> float:
    """The share of one core that computes at `gflops`, given the core's measured speed on the model."""
    if gflops <= 0 or core_gflops <= 0:
        raise ValueError(f"speeds must be positive: target {gflops} GFLOP/s, core {core_gflops} GFLOP/s")
    return gflops / core_gflops


@dataclass
class CpuCap:
    """One device's CPU cgroup: `fraction` of one core's time (may exceed 1: several cores)."""

    device: str
    fraction: float
    path: Path
    version: int

    @classmethod
    def create(cls, device: str, fraction: float) -> "CpuCap":
        quota, period = quota_of(fraction)
        version, parent = cpu_hierarchy()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device)[:40]
        path = parent / f"{PREFIX}-{os.getpid():x}-{next(_counter)}-{safe}"
        try:
            if version == 2:
                _enable_cpu_controller(parent)
            path.mkdir()
        except OSError as e:
            why = ("cgroup v2 lets a group with processes in it give no controller to its children: run in a "
                   "delegated leaf group or a container of its own" if e.errno == errno.EBUSY else
                   "capping an emulated device's CPU needs write access to the cgroup tree (run as root; in a "
                   "container, with its own cgroup namespace)")
            raise CgroupError(f"cannot make a CPU cgroup under {parent} ({e.strerror or e}): {why}") from None
        cap = cls(device, fraction, path, version)
        try:
            if version == 1:
                (path / "cpu.cfs_period_us").write_text(str(period))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (path / "cpu.max").write_text(f"{quota} {period}")
        except OSError as e:
            cap.remove()
            raise CgroupError(f"cannot set the CPU quota of {path} ({e.strerror or e})") from None
        return cap

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def enter(self) -> None:
        """Move the calling process into the group (a Popen `preexec_fn`: the child joins before exec)."""
        with open(self.procs_file, "w") as f:
            f.write(str(os.getpid()))

    def add(self, pid: int) -> None:
        """Move a running process (all its threads) into the group."""
        try:
            self.procs_file.write_text(str(pid))
        except OSError as e:
            raise CgroupError(f"cannot move process {pid} into {self.path} ({e.strerror or e})") from None

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.procs_file.read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Move whatever still runs in the group back to the parent group, then remove the group."""
        if not self.path.exists():
            return
        parent_procs = self.path.parent / "cgroup.procs"
        for _ in range(3):  # bounded: a process may be starting while we move the others
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    parent_procs.write_text(str(pid))
                except OSError:
                    pass  # it exited meanwhile
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CgroupError(f"cannot remove the CPU cgroup {self.path} ({e.strerror or e}); processes still in it: "
                              f"{self.pids()}") from None


def _enable_cpu_controller(parent: Path) -> None:
    control = parent / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def cleanup_stale() -> list[str]:
    """Remove the groups of processes that no longer live (a run killed before it cleaned up)."""
    try:
        _, parent = cpu_hierarchy()
    except CgroupError:
        return []
    gone = []
    for p in parent.glob(f"{PREFIX}-*-*-*"):
        m = re.match(rf"{PREFIX}-([0-9a-f]+)-", p.name)
        if not m:
            continue
        pid = int(m.group(1), 16)
        try:
            os.kill(pid, 0)
            continue  # its creator lives
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        CpuCap("", 0.0, p, 0).remove()
        gone.append(p.name)
    return gone


__all__ = ["CgroupError", "CpuCap", "cleanup_stale", "cpu_hierarchy", "fraction_for", "quota_of"]

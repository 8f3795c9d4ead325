"""Several emulated hosts on one machine: network namespaces joined by a bridge.

Tests, benchmarks and demos use this to run agents as if they were separate devices on one LAN,
with real sockets, real mDNS and a link rate set by `tc`::

     root namespace (no address on the bridge: it cannot reach the hosts)
    ┌────────────────────────────────────────────────────────────┐
    │                  bridge <tag>b  (mcast_snooping 0)         │
    │          ┌──────────────┼──────────────┐                   │
    │      veth <tag>v0   veth <tag>v1   veth <tag>v2   <- tbf (toward the host)
    └──────────┼──────────────┼──────────────┼───────────────────┘
         ┌─────┴─────┐  ┌─────┴─────┐  ┌─────┴─────┐
         │ eth0 .1   │  │ eth0 .2   │  │ eth0 .3   │   <- tbf (from the host)
         │ lo        │  │ lo        │  │ lo        │   route 224.0.0.0/4 dev eth0
         └───────────┘  └───────────┘  └───────────┘
          ns <tag>h0     ns <tag>h1     ns <tag>h2

Every name starts with ``<prefix>-<creator pid in hex>-<counter>`` so parallel runs never collide
and `cleanup_stale` can tell which leftovers belong to a process that no longer lives.
Shaping both ends of every veth gives each host a full-duplex link of ``rate_mbit``.
`block_multicast` turns off multicast flooding on the bridge ports (``bridge link set ...
mcast_flood off``): this kernel has no netem, no iptables/nft and no tc drop action, and the
bridge is where a real access point would drop it too. Broadcast (ARP) keeps working; IPv6
neighbour discovery, being multicast, does not while blocked.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import weakref
from dataclasses import dataclass, field

log = logging.getLogger("edgepart")

_CMD_TIMEOUT_S = 15.0
_TERM_GRACE_S = 2.0
_IFNAMSIZ = 15
_counter = itertools.count()
_open_tags: set[str] = set()  # tags of this process's LANs that are not closed yet


def _sh(argv: list[str], *, check: bool = True, timeout_s: float = _CMD_TIMEOUT_S) -> str:
    """Run one harness command; raise RuntimeError naming the command and its stderr."""
    cmd = " ".join(argv)
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{cmd}` did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise RuntimeError(f"`{cmd}` could not start: {exc}") from None
    if check and res.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed (exit {res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _disable_ipv6(dev: str) -> None:
    # Keeps the root namespace from getting link-local addresses on our bridge and veths.
    path = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write("1")


def _kill_groups(procs: list[subprocess.Popen], grace_s: float = _TERM_GRACE_S) -> None:
    """SIGTERM every process group, wait up to grace_s, then SIGKILL what is left."""
    # SIGKILL goes to every group even when its leader exited: members may outlive it.
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _kill_ns_pids(ns: str) -> None:
    """SIGKILL every process still living in a namespace (ours or not): it pins the namespace."""
    for pid in _sh(["ip", "netns", "pids", ns], check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class _Made:
    """What one EmulatedLan created, kept apart from it so a finalizer can tear it down."""

    tag: str
    bridge: str | None = None
    namespaces: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def teardown(self) -> None:
        _kill_groups(self.procs)
        # Deleting a veth removes both ends at once; a namespace's own cleanup is asynchronous.
        for veth in self.veths:
            _sh(["ip", "link", "del", veth], check=False)
        for ns in self.namespaces:
            try:
                _kill_ns_pids(ns)
                _sh(["ip", "netns", "del", ns])
            except RuntimeError as exc:  # go on: remove as much as possible
                log.warning("emulated LAN teardown: %s", exc)
        if self.bridge:
            try:
                _sh(["ip", "link", "del", self.bridge])
            except RuntimeError as exc:
                log.warning("emulated LAN teardown: %s", exc)
        _open_tags.discard(self.tag)


@dataclass
class Host:
    """One emulated host: a network namespace with one address on the LAN's bridge."""

    name: str
    ns: str
    ip: str
    veth: str = field(repr=False)  # its veth end in the root namespace, on the bridge
    _procs: list[subprocess.Popen] = field(repr=False, default_factory=list)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start argv inside this host's namespace, in a new process group the LAN will kill."""
        # Always its own process group (a caller may pass start_new_session too): close() kills
        # the whole group.
        kw["start_new_session"] = True
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kw)
        self._procs.append(p)
        return p

    def run(self, argv: list[str], timeout_s: float = 30, *, check: bool = False,
            input=None, **kw) -> subprocess.CompletedProcess:
        """Run argv inside the namespace to completion, like subprocess.run with a timeout."""
        if kw.pop("capture_output", False):
            kw["stdout"] = kw["stderr"] = subprocess.PIPE
        if input is not None:
            kw["stdin"] = subprocess.PIPE
        p = self.popen(argv, **kw)
        try:
            out, err = p.communicate(input, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_groups([p], grace_s=0.5)
            raise
        res = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check:
            res.check_returncode()
        return res


class EmulatedLan:
    """n_hosts namespaces on one bridge, built on construction, removed by close()."""

    def __init__(self, n_hosts: int, *, rate_mbit: float | None = None,
                 burst_kb: float | None = None, prefix: str = "ep",
                 subnet: str = "10.213.0.0/24", multicast: bool = True) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]*", prefix):
            raise ValueError(f"prefix {prefix!r} must be lowercase letters and digits")
        net = ipaddress.ip_network(subnet)
        if not 1 <= n_hosts <= min(net.num_addresses - 2, 999):
            raise ValueError(f"n_hosts={n_hosts} does not fit in {subnet}")
        tag = f"{prefix}-{os.getpid():x}-{next(_counter)}"
        if len(f"{tag}v{n_hosts - 1}") > _IFNAMSIZ:
            raise ValueError(f"interface names from prefix {prefix!r} exceed {_IFNAMSIZ} "
                             "characters; use a shorter prefix")
        self.tag = tag
        self.hosts: list[Host] = []
        self._made = _Made(tag)
        _open_tags.add(tag)
        self._finalizer = weakref.finalize(self, self._made.teardown)
        try:
            self._build(n_hosts, net)
            if rate_mbit is not None:
                self.set_rate(rate_mbit, burst_kb=burst_kb)
            if not multicast:
                self.block_multicast()
        except BaseException:
            self.close()
            raise
        log.debug("emulated LAN %s up: %s", tag, [(h.ns, h.ip) for h in self.hosts])

    def _build(self, n_hosts: int, net: ipaddress.IPv4Network) -> None:
        br = self._made.bridge = f"{self.tag}b"
        _sh(["ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0"])
        _disable_ipv6(br)
        _sh(["ip", "link", "set", br, "multicast", "on", "up"])
        for i in range(n_hosts):
            ns, veth, ip = f"{self.tag}h{i}", f"{self.tag}v{i}", str(net.network_address + i + 1)
            _sh(["ip", "netns", "add", ns])
            self._made.namespaces.append(ns)
            _sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            self._made.veths.append(veth)
            _disable_ipv6(veth)
            _sh(["ip", "link", "set", veth, "master", br, "multicast", "on", "up"])
            _sh(["ip", "-n", ns, "addr", "add", f"{ip}/{net.prefixlen}", "dev", "eth0"])
            _sh(["ip", "-n", ns, "link", "set", "eth0", "multicast", "on", "up"])
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            _sh(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
            self.hosts.append(Host(f"h{i}", ns, ip, veth, self._made.procs))

    def _each_link(self):
        """(tc prefix, device) for both ends of every host's veth."""
        for h in self.hosts:
            yield ["tc"], h.veth
            yield ["tc", "-n", h.ns], "eth0"

    def set_rate(self, rate_mbit: float | None, *, burst_kb: float | None = None) -> None:
        """Shape every host's link to rate_mbit in each direction (tc tbf); None removes it."""
        for name, value in (("rate_mbit", rate_mbit), ("burst_kb", burst_kb)):
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value} must be positive (rate_mbit=None removes shaping)")
        for tc, dev in self._each_link():
            if rate_mbit is None:
                _sh([*tc, "qdisc", "del", "dev", dev, "root"], check=False)
                continue
            rate_bit = int(rate_mbit * 1e6)
            # Default burst: 5 ms of traffic, at least 32 KiB so a 64 KiB GSO packet is split
            # rather than stalling; the queue holds 50 ms so TCP sees delay before loss.
            burst = int(burst_kb * 1024) if burst_kb else max(32 * 1024, rate_bit // 8 // 200)
            _sh([*tc, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_bit}bit",
                 "burst", str(burst), "latency", "50ms"])

    def block_multicast(self) -> None:
        """Stop the bridge from forwarding any multicast between hosts (mDNS included)."""
        self._mcast_flood("off")

    def allow_multicast(self) -> None:
        """Undo block_multicast."""
        self._mcast_flood("on")

    def _mcast_flood(self, state: str) -> None:
        for h in self.hosts:
            _sh(["bridge", "link", "set", "dev", h.veth, "mcast_flood", state])

    def close(self) -> None:
        """Kill every process started in the hosts and remove what was made; idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> EmulatedLan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def available() -> str | None:
    """None if emulated LANs can be built here, else a one-line reason why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or with CAP_NET_ADMIN)"
    for tool in ("ip", "tc", "bridge"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"ep-{os.getpid():x}-{next(_counter)}h0"  # cleanup_stale() knows the name
    try:
        _sh(["ip", "netns", "add", probe])
        try:
            _sh(["ip", "-n", probe, "link", "add", "b0", "type", "bridge"])
            _sh(["ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
            _sh(["tc", "-n", probe, "qdisc", "add", "dev", "v0", "root", "tbf", "rate",
                 "1mbit", "burst", "32k", "latency", "50ms"])
        finally:
            _sh(["ip", "netns", "del", probe], check=False)
    except RuntimeError as exc:
        return str(exc)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True  # PermissionError too: it exists


def cleanup_stale(prefix: str = "ep") -> list[str]:
    """Remove namespaces, bridges and veths left by crashed runs; return the names removed.

    A leftover is stale when the process that made it is dead, or is this process and the LAN
    that made it is no longer open here; other live processes' LANs are left alone.
    """
    pattern = re.compile(rf"{re.escape(prefix)}-([0-9a-f]+)-(\d+)(b|v\d+|h\d+)")

    def stale(name: str) -> bool:
        m = pattern.fullmatch(name)
        if not m:
            return False
        pid, tag = int(m[1], 16), name[: m.start(3)]
        return tag not in _open_tags if pid == os.getpid() else not _pid_alive(pid)

    removed = []
    # Links first: deleting a veth is synchronous, a namespace's own cleanup is not.
    for line in _sh(["ip", "-o", "link", "show"]).splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if stale(dev):
            _sh(["ip", "link", "del", dev], check=False)  # a veth may vanish with its peer
            removed.append(dev)
    for line in _sh(["ip", "netns", "list"]).splitlines():
        ns = line.split()[0] if line.strip() else ""
        if stale(ns):
            _kill_ns_pids(ns)
            _sh(["ip", "netns", "del", ns])
            removed.append(ns)
    if removed:
        log.info("removed stale emulated-LAN leftovers: %s", removed)
    return removed

"""The emulated LAN with real namespaces, real sockets and real mDNS.

Fails (never skips) where namespaces cannot be made: CI runs as root on this machine kind. After
every test, no namespace, link or child process of this run may be left behind.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from edgepart.testing import netns
from edgepart.testing.netns import EmulatedLan, Host

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
PREFIX = "ept"  # not the library default, so a cleanup_stale() of "ep" elsewhere never matches


def children() -> list[int]:
    """Pids whose parent is this process (zombies included: an unwaited child is a leak too)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid():
            found.append(int(entry))
    return found


def leftovers(tag: str) -> list[str]:
    """Namespaces and links made under tag (a LAN's tag, or a whole run's prefix)."""
    run = lambda *argv: subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]
    names += [line.split(":")[1].strip().split("@")[0]
              for line in run("ip", "-o", "link", "show").splitlines() if ":" in line]
    counter = r"\d+" if tag.endswith("-") else ""  # a run's prefix: any LAN counter follows
    own = re.compile(rf"{re.escape(tag)}{counter}(b|v\d+|h\d+)")
    return [n for n in names if own.fullmatch(n)]


@pytest.fixture(scope="module", autouse=True)
def namespaces_possible() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.fail(f"emulated LANs are impossible here: {reason}")


@pytest.fixture(autouse=True)
def nothing_leaked():
    yield
    ours = f"{PREFIX}-{os.getpid():x}-"
    assert not leftovers(ours), f"emulated-LAN leftovers: {leftovers(ours)}"
    assert not children(), f"child processes still alive: {children()}"


def first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first line a process prints, waiting at most timeout_s."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"{proc.args} printed nothing within {timeout_s} s"
    return proc.stdout.readline().strip()


def start(host: Host, script: str, *args: object) -> subprocess.Popen:
    return host.popen([PY, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout_s: float = 10) -> str:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}: {err}"
    return out


ECHO_SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], 7000))
srv.settimeout(10)
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(10)
        conn.sendall(conn.recv(1024))
"""

ECHO_CLIENT = """
import socket, sys
for ip in sys.argv[2:]:
    with socket.create_connection((ip, 7000), timeout=5) as c:
        msg = f"{sys.argv[1]}->{ip}".encode()
        c.sendall(msg)
        assert c.recv(1024) == msg
    print(ip, "ok")
"""


def test_three_hosts_reach_each_other_and_nothing_else():
    with EmulatedLan(3, prefix=PREFIX) as lan:
        servers = [start(h, ECHO_SERVER, h.ip, 2) for h in lan.hosts]
        for s in servers:
            assert first_line(s, 10) == "ready"
        for h in lan.hosts:
            others = [o.ip for o in lan.hosts if o is not h]
            assert finish(start(h, ECHO_CLIENT, h.ip, *others)).split() == [
                w for ip in others for w in (ip, "ok")]
        for s in servers:
            finish(s)
        # The root namespace holds no address on the LAN, and the hosts have no way out.
        bridge = f"{lan.tag}b"
        assert subprocess.run(["ip", "-o", "addr", "show", "dev", bridge], capture_output=True,
                              text=True, timeout=10).stdout == ""
        routes = lan.hosts[0].run(["ip", "route"], capture_output=True, text=True).stdout
        assert "default" not in routes and "224.0.0.0/4 dev eth0" in routes


BULK_RECEIVER = """
import json, socket, sys, time
srv = socket.create_server((sys.argv[1], 7001))
srv.settimeout(10)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(10)
total, first, last = 0, None, None
while chunk := conn.recv(1 << 16):
    last = time.monotonic()
    first = first or last
    total += len(chunk)
print(json.dumps({"bytes": total, "seconds": last - first}))
"""

BULK_SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], 7001), timeout=10) as c:
    c.sendall(bytes(int(sys.argv[2])))
"""


def measure_mbit(src: Host, dst: Host, size_bytes: int = 6_000_000) -> float:
    receiver = start(dst, BULK_RECEIVER, dst.ip)
    assert first_line(receiver, 10) == "ready"
    finish(start(src, BULK_SENDER, dst.ip, size_bytes), timeout_s=20)
    result = json.loads(finish(receiver))
    assert result["bytes"] == size_bytes
    return result["bytes"] * 8 / result["seconds"] / 1e6


def test_rate_shaping_holds_a_bulk_transfer_to_the_set_rate():
    with EmulatedLan(2, prefix=PREFIX, rate_mbit=50) as lan:
        a, b = lan.hosts
        shaped = measure_mbit(a, b)
        print(f"shaped to 50 Mbit/s: measured {shaped:.1f} Mbit/s")
        assert 0.8 * 50 <= shaped <= 1.1 * 50
        lan.set_rate(None)
        free = measure_mbit(b, a)
        print(f"unshaped: measured {free:.0f} Mbit/s")
        assert free > 4 * 50


MCAST_RECEIVER = """
import socket, struct, sys, time
ip, token, wait_s = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("224.0.0.251") + socket.inet_aton(ip))
print("ready", flush=True)
deadline, result = time.monotonic() + wait_s, "none"
while result == "none" and (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        break
    if token in data:
        result = "got"
print(result)
"""

MCAST_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(int(sys.argv[3])):
    s.sendto(sys.argv[2].encode(), ("224.0.0.251", 5353))
    time.sleep(0.05)
"""


def multicast_arrives(src: Host, dst: Host, wait_s: float) -> bool:
    token = f"eptest-{time.monotonic_ns()}"
    receiver = start(dst, MCAST_RECEIVER, dst.ip, token, wait_s)
    assert first_line(receiver, 10) == "ready"
    # Keep sending for the whole window: one lost datagram must not decide the test.
    sender = start(src, MCAST_SENDER, src.ip, token, int(wait_s / 0.05))
    result = finish(receiver, timeout_s=wait_s + 10).strip()
    sender.kill()  # it has nothing left to prove
    sender.communicate(timeout=5)
    assert result in ("got", "none"), result
    return result == "got"


def test_multicast_crosses_namespaces_until_blocked():
    with EmulatedLan(3, prefix=PREFIX) as lan:
        a, b, c = lan.hosts
        assert multicast_arrives(a, b, wait_s=2.0)
        lan.block_multicast()
        assert not multicast_arrives(a, b, wait_s=1.0)
        assert not multicast_arrives(c, a, wait_s=1.0)
        lan.allow_multicast()
        assert multicast_arrives(c, a, wait_s=2.0)


ZC_REGISTER = """
import socket, sys
from zeroconf import ServiceInfo, Zeroconf
ip = sys.argv[1]
zc = Zeroconf(interfaces=[ip])
info = ServiceInfo("_eptest._tcp.local.", "hostA._eptest._tcp.local.", port=5555,
                   addresses=[socket.inet_aton(ip)], server="hosta.local.")
zc.register_service(info)
print("registered", flush=True)
sys.stdin.readline()  # until the test closes our stdin
zc.unregister_service(info)
zc.close()
"""

ZC_FIND = """
import sys, threading, time
from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf
t0 = time.monotonic()
zc = Zeroconf(interfaces=[sys.argv[1]])
found = threading.Event()
def on_change(zeroconf, service_type, name, state_change):
    if name == "hostA._eptest._tcp.local." and state_change is ServiceStateChange.Added:
        found.set()
browser = ServiceBrowser(zc, "_eptest._tcp.local.", handlers=[on_change])
ok = found.wait(float(sys.argv[2]))
elapsed = time.monotonic() - t0
info = zc.get_service_info("_eptest._tcp.local.", "hostA._eptest._tcp.local.", timeout=1000) if ok else None
print(f"found={ok} elapsed_s={elapsed:.3f} addresses={info.parsed_addresses() if info else []}")
browser.cancel()
zc.close()
"""


def test_zeroconf_finds_a_service_in_another_namespace_until_multicast_is_blocked():
    with EmulatedLan(2, prefix=PREFIX) as lan:
        a, b = lan.hosts
        registrar = a.popen([PY, "-c", ZC_REGISTER, a.ip], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert first_line(registrar, 15) == "registered"
        line = finish(start(b, ZC_FIND, b.ip, 2.0), timeout_s=15).strip()
        print(f"zeroconf across namespaces: {line}")
        assert line.startswith("found=True ")
        assert f"addresses=['{a.ip}']" in line
        lan.block_multicast()
        line = finish(start(b, ZC_FIND, b.ip, 1.5), timeout_s=15).strip()
        assert line.startswith("found=False "), line
        finish(registrar)  # communicate() closes its stdin: it unregisters and exits


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group; a killed orphan is a zombie until reaped."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == pgid:
            found.append(int(entry))
    return found


def test_close_is_idempotent_and_kills_everything_it_started():
    lan = EmulatedLan(2, prefix=PREFIX)
    a, b = lan.hosts
    plain = a.popen(["sleep", "1000"], start_new_session=True)  # as callers may pass it too
    # A group that ignores SIGTERM, with a grandchild: only the SIGKILL escalation ends it.
    stubborn = b.popen(["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000"])
    # Started in the namespace without the harness: close() still finds it there.
    stranger = subprocess.Popen(["ip", "netns", "exec", a.ns, "sleep", "1000"])
    time.sleep(0.2)
    t0 = time.monotonic()
    lan.close()
    took = time.monotonic() - t0
    assert plain.poll() is not None and stubborn.poll() is not None
    assert stranger.wait(timeout=5) == -signal.SIGKILL
    assert not group_members(stubborn.pid), "the grandchild outlived close()"
    assert took < 5, f"close() took {took:.1f} s"
    assert lan.closed
    lan.close()  # again: nothing to do, no error
    with lan:
        pass
    assert not leftovers(lan.tag)


def test_failed_setup_and_failed_commands_are_clear_and_leave_nothing():
    with pytest.raises(ValueError, match="rate_mbit"):
        EmulatedLan(2, prefix=PREFIX, rate_mbit=-5)  # fails after the hosts were built
    with EmulatedLan(2, prefix=PREFIX) as lan:
        veth = lan.hosts[1].veth
        subprocess.run(["ip", "link", "del", veth], check=True, timeout=10)
        with pytest.raises(RuntimeError, match=rf"`tc qdisc replace dev {veth} .*` failed"):
            lan.set_rate(10)


CRASHER = """
import os, signal, subprocess, sys
from edgepart.testing.netns import EmulatedLan
lan = EmulatedLan(2, prefix=sys.argv[1])
p = lan.hosts[0].popen(["sleep", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(lan.tag, p.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close(), no finalizer, no atexit
"""


def test_cleanup_stale_removes_a_crashed_runs_leftovers_only():
    with EmulatedLan(1, prefix=PREFIX) as alive:
        crashed = subprocess.run([PY, "-c", CRASHER, PREFIX], capture_output=True, text=True,
                                 timeout=30)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        tag, orphan = crashed.stdout.split()
        assert len(leftovers(tag)) == 5  # bridge, two veths, two namespaces
        removed = netns.cleanup_stale(PREFIX)
        # Leftovers of earlier crashed runs may go too; this run's must all be named.
        assert set(removed) >= {f"{tag}{s}" for s in ("b", "h0", "h1", "v0", "v1")}
        assert not leftovers(tag)
        assert leftovers(alive.tag), "cleanup_stale removed a LAN that is still open"
        deadline = time.monotonic() + 3
        while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
            with open(f"/proc/{orphan}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # killed; waiting for init to reap it
            time.sleep(0.05)
        else:
            assert not os.path.exists(f"/proc/{orphan}"), "the crashed run's sleep survived"

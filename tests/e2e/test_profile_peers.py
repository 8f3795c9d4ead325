"""`edgepart profile --peer` against running agents (docs/profile.md): the round trip to each peer
and the bandwidth are measured over one connection and land in the profile, and from there in the
cluster's links; a peer that does not answer is named and
left out, never a hang."""

from __future__ import annotations

import socket

import pytest
import yaml

from e2e_helpers import edgepart_cli, encoder_model

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_profile_measures_round_trips_to_running_agents(packaged, agents, tmp_path):
    res = packaged(encoder_model(), 2, tag="-profile-peers")
    dist = res.bundle_dirs["dev0"].parent
    procs = agents(dist)
    peers = [ep.removeprefix("tcp://") for ep in procs.endpoints.values()]
    silent = f"127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "p.yaml"
    r = edgepart_cli("profile", "-o", out, "--bundle", res.bundle_dirs["dev0"], "--seconds", "0.3", "--threads", "1",
                     *[a for p in [*peers, silent] for a in ("--peer", p)], timeout_s=240)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    d = yaml.safe_load(out.read_text())
    got = d["peers"]
    assert set(got) == set(procs.endpoints), got  # by the device names the agents give themselves
    for dev, q in got.items():
        assert q["endpoint"] == procs.endpoints[dev]
        # loopback, one connection opened before timing: far below a TCP connect through a busy machine
        assert 0 < q["rtt_ms"] < 100, q
        # loopback moves gigabytes a second; a Gbit/s is a floor no machine running these tests misses
        assert q["bandwidth_mbps"] > 1000, q
    assert f"peer {silent} did not answer" in r.stderr.replace("\n", " "), r.stderr[-2000:]

    # the measured links reach the planner where cluster.yaml gives no pair
    from edgepart.packager.cluster import load_cluster

    (tmp_path / "c.yaml").write_text("devices:\n  - {name: dev0, profile: p.yaml}\n  - {name: dev1, gflops: 5}\n"
                                     "links:\n  default: {bandwidth_mbps: 10, latency_ms: 50}\n")
    link = load_cluster(tmp_path / "c.yaml").link("dev0", "dev1")
    assert link.bandwidth_mbps == pytest.approx(got["dev1"]["bandwidth_mbps"])
    assert link.latency_ms == pytest.approx(got["dev1"]["rtt_ms"] / 2)


LINK_MBIT = 50


def test_profile_measures_a_shaped_links_bandwidth(packaged, agents, lan, tmp_path):
    """Agents on two hosts of an emulated LAN whose links `tc` holds to 50 Mbit/s, the profile
    taken on a third: the bandwidth it measures is the link's (TCP's overhead and the shaper's
    burst within the bounds below)."""
    res = packaged(encoder_model(), 2, tag="-profile-shaped")
    dist = res.bundle_dirs["dev0"].parent
    net = lan(3, rate_mbit=LINK_MBIT)
    procs = agents(dist, hosts=dict(zip(res.plan.device_names(), net.hosts[:2])))
    out = tmp_path / "p.yaml"
    peers = [a for ep in procs.endpoints.values() for a in ("--peer", ep.removeprefix("tcp://"))]
    # --bundle: the agents answer only their plan's keys, and the bundle holds one (dev0's)
    r = edgepart_cli("profile", "-o", out, "--bundle", res.bundle_dirs["dev0"], "--seconds", "0.2", "--threads", "1",
                     "--name", "dev9", *peers, timeout_s=240, host=net.hosts[2])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    got = yaml.safe_load(out.read_text())["peers"]
    print(f"\nmeasured over {LINK_MBIT} Mbit/s links:", got)
    assert set(got) == {"dev0", "dev1"}, got
    for q in got.values():
        assert 0.7 * LINK_MBIT < q["bandwidth_mbps"] < 1.15 * LINK_MBIT, q

"""`edgepart profile --peer` against running agents (docs/profile.md): the round trip to each peer
is measured over one connection and lands in the profile; a peer that does not answer is named and
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
    rtt = d["peers_rtt_ms"]
    assert set(rtt) == set(peers), rtt
    # loopback, one connection opened before timing: far below a TCP connect through a busy machine
    assert all(0 < v < 100 for v in rtt.values()), rtt
    assert f"peer {silent} did not answer" in r.stderr.replace("\n", " "), r.stderr[-2000:]

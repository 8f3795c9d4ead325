"""Apps on the agents' host reach them on a Unix socket, plaintext (docs/agents.md, "On one host";
agent/net/local.py): CURVE protects what crosses a network, and on one host it would only spend the
cipher on the app's input. The socket's folder is this user's alone, and the agent's ZAP handler
checks the peer's uid besides: a process of another user that reaches the socket gets nothing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepart.agent.net.local import ipc_dir
from edgepart.wire import PROTOCOL_VERSION

import graphs
from e2e_helpers import agent_output, assert_same, header, model_file, reference, seeded_feeds

pytestmark = pytest.mark.timeout(180)


def link_endpoints(sess) -> dict[str, str]:
    client = sess._client
    return {r: client.links.endpoint_up(r) for r in sorted(client.roles)}


def test_a_session_on_the_agents_host_links_over_their_unix_sockets(packaged, agents, sessions, monkeypatch):
    res = packaged(graphs.residual(), 2)
    agents(res.out_dir)
    feeds = seeded_feeds(res.plan, 0)
    want = reference(model_file(res.out_dir), feeds)
    sess = sessions(res.out_dir, timeout_s=10)
    eps = link_endpoints(sess)
    assert all(ep.startswith("ipc://") for ep in eps.values()), eps
    for ep in eps.values():
        path = Path(ep[len("ipc://"):])
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.parent.stat().st_uid == os.getuid()
    assert_same(sess.submit(feeds).result(10), want, "over the local sockets")
    # the agents' own links stay encrypted TCP: they stand for devices on other hosts
    monkeypatch.setenv("EDGEPART_LOCAL_IPC", "0")
    tcp = sessions(res.out_dir, timeout_s=10)
    assert all(ep.startswith("tcp://") for ep in link_endpoints(tcp).values())
    assert_same(tcp.submit(feeds).result(10), want, "over CURVE on TCP")


_OTHER_USER = """
import sys, time, zmq
import os
os.setgid(4321); os.setuid(4321)
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.IDENTITY, b"intruder")
s.connect(sys.argv[1])
s.send_multipart([bytes.fromhex(h) for h in sys.argv[2:]])
print("answered" if s.poll(3000) else "nothing", flush=True)
ctx.destroy(0)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another user")
def test_another_user_reaching_the_socket_gets_nothing(packaged, agents):
    res = packaged(graphs.residual(), 2)
    procs = agents(res.out_dir)
    entry = res.plan.steps[0].device
    pid = procs.agents[entry].proc.pid  # this agent's socket, not one another test's agent of the same plan left
    path = next(ipc_dir().glob(f"{res.plan.plan_id[:16]}-{entry}-{pid}.sock"))
    # a folder left open by mistake: the uid check still holds
    folder_mode = stat.S_IMODE(path.parent.stat().st_mode)
    os.chmod(path.parent, 0o711)
    os.chmod(path, 0o777)
    try:
        frames = [header(v=PROTOCOL_VERSION, k="ping", p=res.plan.plan_id, s="@probe")]  # any agent answers a ping at once
        r = subprocess.run([sys.executable, "-c", _OTHER_USER, f"ipc://{path}", *[f.hex() for f in frames]],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "nothing", r.stdout + r.stderr
        deadline = time.monotonic() + 15
        while "refused a local connection from uid 4321" not in agent_output(procs, entry) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "refused a local connection from uid 4321" in agent_output(procs, entry)
    finally:
        os.chmod(path.parent, folder_mode)

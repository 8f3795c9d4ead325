"""Admission (docs/agents.md, "Admission"): an authenticated sender is bounded per sender, in
requests held and in bytes held, so one misbehaving app (or device) filling an agent with partial
requests that never complete leaves room for the others; and a key speaks only for its owner.

The model (graphs.two_in_two_out) on 2 agents: dev0 reads both model inputs `a` and `b` from the
caller, so a message with `a` alone is a partial request that waits for its `b` until its deadline.
The misbehaving app is a second client, `cam2` (`edgepart keys add-client`), with its own key."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from edgepart.keys import Credentials, read_keypair
from edgepart.packager.seal import add_client
from edgepart.plan import CALLER
from edgepart.session import session_credentials

import graphs
from e2e_helpers import assert_same, model_file, reference, seeded_feeds, tensor_message

pytestmark = pytest.mark.timeout(180)

SLOTS, SHARE = 256, 0.75  # agent/device/admission.py
PARTIAL_TTL_MS = 120_000.0  # the partial requests outlive the test


@pytest.fixture
def two_clients(packaged):
    res = packaged(graphs.two_in_two_out(), 2)
    dist = res.out_dir
    key, new = add_client(dist, "cam2")
    assert new and key.stat().st_mode & 0o077 == 0
    return res, dist


def cam2_dealer(ctx: zmq.Context, dist, device: str, endpoint: str, identity: bytes) -> zmq.Socket:
    """A raw DEALER holding cam2's key, `device`'s key pinned; replies to `identity` reach it."""
    from edgepart.agent.net.link import secure_client

    keys = session_credentials(dist)[1].keys
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, identity)
    assert secure_client(s, Credentials(read_keypair(dist / "cam2.key"), keys), device)
    s.connect(endpoint)
    return s


def errors_within(sock: zmq.Socket, n_max: int, within_s: float) -> list[str]:
    """The error messages that reach `sock` within `within_s` (at most n_max)."""
    import msgpack

    got, end = [], time.monotonic() + within_s
    while len(got) < n_max and time.monotonic() < end:
        if sock.poll(50):
            h = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
            assert h["k"] == "error", h
            got.append(h["m"])
    return got


def send_partials(sock: zmq.Socket, plan_id: str, n: int, a: np.ndarray, client: bytes) -> None:
    for rid in range(1, n + 1):
        frames = tensor_message(plan_id, CALLER, [("a", a)], rid=rid, client=client, ttl=PARTIAL_TTL_MS)
        assert sock.poll(2000, zmq.POLLOUT), f"the agent stopped taking messages after {rid - 1}"
        sock.send_multipart(frames, zmq.NOBLOCK)


def real_requests_answered(res, sessions, n: int) -> None:
    sess = sessions(res.out_dir, timeout_s=10)
    feeds = [seeded_feeds(res.plan, i) for i in range(n)]
    futs = [sess.submit(f) for f in feeds]  # all at once: n requests in flight at dev0
    model = model_file(res.out_dir)
    for i, (f, fut) in enumerate(zip(feeds, futs)):
        assert_same(fut.result(15), reference(model, f), f"the app's request {i}")


def test_one_app_cannot_take_every_slot(two_clients, agents, sessions):
    res, dist = two_clients
    procs = agents(dist)
    ctx = zmq.Context()
    try:
        s = cam2_dealer(ctx, dist, "dev0", procs.endpoints["dev0"], b"cam2-a")
        n = 300
        send_partials(s, res.plan.plan_id, n, np.zeros((1, 16), np.float32), b"cam2-a")
        held = int(SLOTS * SHARE)
        refused = errors_within(s, n - held, 10.0)
        assert len(refused) == n - held, f"{len(refused)} of {n} partial requests refused, want {n - held}"
        assert all("is busy" in m and "the most one sender may" in m for m in refused), refused[:3]
        # what is left is the other senders': the app still gets every request answered
        real_requests_answered(res, sessions, SLOTS - held)
    finally:
        ctx.destroy(0)


def test_one_app_cannot_hold_every_byte(two_clients, agents, sessions):
    res, dist = two_clients
    procs = agents(dist, extra=["--inflight-mb", "4"])
    ctx = zmq.Context()
    try:
        s = cam2_dealer(ctx, dist, "dev0", procs.endpoints["dev0"], b"cam2-b")
        # `a` of the plan's rank and type, but 256 KiB: what a partial request makes an agent hold
        big = np.ones((1, 65536), np.float32)
        n, fits = 20, int(4 * SHARE * (1 << 20)) // big.nbytes  # 12 fit in cam2's 3 MiB
        send_partials(s, res.plan.plan_id, n, big, b"cam2-b")
        refused = errors_within(s, n - fits, 10.0)
        assert len(refused) == n - fits, f"{len(refused)} of {n} big partial requests refused, want {n - fits}"
        assert all("MiB more would pass the most one sender may" in m for m in refused), refused[:3]
        real_requests_answered(res, sessions, 16)
    finally:
        ctx.destroy(0)


def test_a_key_speaks_only_for_its_owner(two_clients, agents, sessions):
    """cam2's key (an app's) sends dev1 what only dev0 may send, saying it is dev0: refused, and
    the agent says why; the cluster keeps serving."""
    res, dist = two_clients
    procs = agents(dist)
    ctx = zmq.Context()
    try:
        s = cam2_dealer(ctx, dist, "dev1", procs.endpoints["dev1"], b"cam2-c")
        y1 = np.zeros((1, 16), np.float32)
        s.send_multipart(tensor_message(res.plan.plan_id, "dev0", [("y1", y1)], rid=7, client=b"cam2-c", ttl=5000.0))
        (why,) = errors_within(s, 1, 10.0)
        assert "app cam2's key says it comes from 'dev0'" in why, why
        real_requests_answered(res, sessions, 4)
    finally:
        ctx.destroy(0)


def test_an_app_on_a_device_with_only_its_bundle_is_served_over_tcp(packaged, agents, sessions, monkeypatch):
    """An app given one bundle and no app.key talks with that device's own key (docs/agents.md,
    "Encryption"): its requests say they come from the caller, which that key may (bounded as
    "app dev0"), also over TCP to the other devices."""
    res = packaged(graphs.two_in_two_out(), 2)
    agents(res.out_dir)
    monkeypatch.setenv("EDGEPART_LOCAL_IPC", "0")  # (no local socket: every link is CURVE on TCP)
    sess = sessions(res.out_dir / "dev0", key=res.out_dir / "dev0" / "device.key", timeout_s=10)
    feeds = seeded_feeds(res.plan, 3)
    assert_same(sess.submit(feeds).result(15), reference(model_file(res.out_dir), feeds), "with dev0's key")

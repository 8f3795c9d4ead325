"""Encrypted, authenticated links (docs/agents.md, "Encryption"): an agent serves only its plan's
keys, so an unauthenticated client, a client or peer with a wrong key and a spoofed mDNS
announcement get nothing; on an emulated LAN the bytes on the wire hold neither the input nor an
activation, and with --insecure they do (the capture can see them)."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import onnxruntime as ort
import pytest
import zmq

import edgepart
from edgepart import BundleError, PeerError
from edgepart.inputs import load_npz, save_npz
from edgepart.keys import new_keypair, write_keypair
from edgepart.packager.seal import Sealing, apply
from edgepart.wire import PROTOCOL_VERSION

import graphs
from e2e_helpers import (HERE, PY, agent_output, assert_same, finish, header, model_file, ns_client, package_model,
                         read_line, reference, seeded_feeds, wait_until)

pytestmark = pytest.mark.timeout(180)


def _answers(sock: zmq.Socket, plan_id: str, within_s: float = 1.0) -> int:
    """Ping an agent on `sock` and count the replies within `within_s`."""
    try:
        sock.send(header(v=PROTOCOL_VERSION, k="ping", p=plan_id, s="@probe"), zmq.NOBLOCK)
    except zmq.Again:
        pass  # not even queued: no answer either
    n, end = 0, time.monotonic() + within_s
    while time.monotonic() < end:
        if sock.poll(50):
            sock.recv_multipart()
            n += 1
    return n


def test_unauthenticated_and_wrong_key_clients_get_nothing(packaged, agents, sessions, tmp_path):
    res = packaged(graphs.residual(), 2)
    procs = agents(res.out_dir)
    sess = sessions(res.out_dir)
    target = procs.endpoints["dev0"]
    pid = res.plan.plan_id
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.DEALER)  # no CURVE at all
        stranger = ctx.socket(zmq.DEALER)  # CURVE, dev0's key pinned, but a key of its own
        kp = new_keypair("stranger")
        stranger.curve_secretkey, stranger.curve_publickey = kp.secret.encode(), kp.public.encode()
        stranger.curve_serverkey = edgepart.load_bundle(res.out_dir / "dev0").keys.devices["dev0"].encode()
        for s in (plain, stranger):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IMMEDIATE, 0)  # queue the ping anyway: it must never be delivered
            s.connect(target)
        time.sleep(0.5)
        assert _answers(plain, pid) == 0 and _answers(stranger, pid) == 0
        wait_until(lambda: "refused a connection from 127.0.0.1" in agent_output(procs, "dev0"), 5,
                   what="dev0 logging the stranger's key refused")
    finally:
        ctx.destroy(linger=0)
    feeds = seeded_feeds(res.plan, 3)
    assert_same(sess.submit(feeds).result(10), reference(model_file(res.out_dir), feeds), "after the strangers")
    # a session with a key the plan does not hold is refused before it talks to anyone
    write_keypair(tmp_path / "other.key", new_keypair("other"))
    with pytest.raises(BundleError, match="not a key of plan"):
        edgepart.InferenceSession(res.out_dir, key=tmp_path / "other.key")


def test_a_peer_from_another_packaging_is_refused(packaged, tmp_path, agents, sessions):
    """The same model and cluster packaged twice: one plan id, other keys. dev0 of one and dev1 of
    the other never link, and a session says why."""
    model = graphs.residual()
    a = package_model(model, tmp_path / "a", 2, tag="-twice")
    b = package_model(model, tmp_path / "b", 2, tag="-twice")
    assert a.plan.plan_id == b.plan.plan_id
    procs = [agents(a.out_dir, devices=["dev0"], ready=False), agents(b.out_dir, devices=["dev1"], ready=False)]
    with pytest.raises(PeerError, match="no encrypted link could be made") as e:
        edgepart.InferenceSession(a.out_dir, interface="127.0.0.1", discover_timeout_s=3)
    print(e.value)
    assert "dev1" in str(e.value)
    assert not [p for p in procs for d in p.agents if "link up" in agent_output(p, d)]


def test_a_spoofed_announcement_receives_nothing(packaged, agents):
    """Someone announces dev1 of the plan over mDNS, at a ROUTER of its own (plaintext, and CURVE
    with a key of its own): dev0 tries it, as discovery says, but never completes a handshake, so
    not one message reaches the spoof; a session fails to start instead of sending to it."""
    from edgepart import aio
    from edgepart.agent.net.discovery import Discovery

    res = packaged(graphs.residual(), 2)
    ctx = zmq.Context()
    spoofs = []
    for curve in (False, True):
        r = ctx.socket(zmq.ROUTER)
        if curve:
            kp = new_keypair("spoof")
            r.curve_server, r.curve_secretkey, r.curve_publickey = True, kp.secret.encode(), kp.public.encode()
        port = r.bind_to_random_port("tcp://127.0.0.1")
        spoofs.append((r, port))
    aio.acquire()
    announcers = []
    try:
        for _, port in spoofs:
            d = Discovery("127.0.0.1", res.plan.plan_id)
            aio.call(d.start(), 10)
            aio.call(d.announce("dev1", res.plan.plan_id, "127.0.0.1", port), 10)
            announcers.append(d)
        procs = agents(res.out_dir, devices=["dev0"], ready=False)
        with pytest.raises(PeerError, match="dev1"):
            edgepart.InferenceSession(res.out_dir, interface="127.0.0.1", discover_timeout_s=3)
        assert "link up: dev1" not in agent_output(procs, "dev0")
        got = 0
        for r, _ in spoofs:
            while r.poll(0):
                r.recv_multipart()
                got += 1
        assert got == 0, f"the spoofed dev1 received {got} messages"
    finally:
        for d in announcers:
            aio.call(d.close(), 10)
        aio.release()
        ctx.destroy(linger=0)


def _pattern(a: np.ndarray, n: int = 16) -> bytes:
    """The n-byte window of `a` with the most distinct bytes: what a capture must (not) contain."""
    raw = np.ascontiguousarray(a).tobytes()
    best = max(range(0, len(raw) - n + 1, 4), key=lambda i: len(set(raw[i:i + n])))
    return raw[best:best + n]


def _captured(lan, res, dist, tmp_path, insecure: bool, on: str) -> bytes:
    """Run one request through the two devices on two hosts with the caller on a third, capturing
    device `on`'s link the whole time; returns the captured frames."""
    hosts = dict(zip(res.plan.device_names(), lan.hosts[:2]))
    from edgepart.testing.emulate import AgentProcesses

    procs = AgentProcesses(dist, hosts=hosts, extra=["--insecure"] if insecure else [])
    cap_file = tmp_path / f"cap-{insecure}.bin"
    cap = hosts[on].popen([PY, str(HERE / "capture.py"), "eth0", str(cap_file), "60"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(cap, 30) == "capturing"
        procs.start(60)
        procs.wait_ready(30)
        client = ns_client(lan.hosts[2], dist=dist, interface=lan.hosts[2].ip, inputs=[tmp_path / "in.npz"],
                           outputs=[tmp_path / f"out-{insecure}.npz"], insecure=insecure)
        result = finish(client, 60)
        assert "error" not in result, result
    finally:
        procs.stop()
        cap.stdin.close()
        cap.wait(30)
    return cap_file.read_bytes()


def test_bytes_on_the_link_hide_input_and_activations_unless_insecure(packaged, lan, tmp_path):
    res = packaged(graphs.residual(), 2)
    plain = tmp_path / "plain"
    shutil.copytree(res.out_dir, plain / "dist")
    apply(plain / "dist", {d: plain / "dist" / d for d in res.plan.device_names()}, res.plan, Sealing(insecure=True))
    feeds = seeded_feeds(res.plan, 7)
    save_npz(tmp_path / "in.npz", feeds)
    (first,) = [s for s in res.plan.steps if {i.name for i in s.inputs} == set(feeds)]  # the caller feeds it
    sent = ort.InferenceSession(str(res.out_dir / first.device / first.model_file)).run(None, feeds)
    crossing = {r.tensor for r in res.plan.routes if r.src == first.device and r.dst != "@caller"}
    acts = [a for o, a in zip(first.outputs, sent) if o.name in crossing]
    assert acts, f"the plan sends nothing from {first.device} to the other device"
    patterns = {"input": _pattern(feeds["x"]), **{f"activation {i}": _pattern(a) for i, a in enumerate(acts)}}
    net = lan(3)

    enc = _captured(net, res, res.out_dir, tmp_path, insecure=False, on=first.device)
    plain_bytes = _captured(net, res, plain / "dist", tmp_path, insecure=True, on=first.device)
    want = reference(model_file(res.out_dir), feeds)
    assert_same(load_npz(tmp_path / "out-False.npz"), want, "encrypted")
    assert_same(load_npz(tmp_path / "out-True.npz"), want, "insecure")
    assert len(enc) > 4 * sum(a.nbytes for a in acts), f"only {len(enc)} bytes captured"
    for what, p in patterns.items():
        assert p in plain_bytes, f"the capture does not see the {what} even in plaintext: it proves nothing"
        assert p not in enc, f"the {what} crossed the link readable despite CURVE"

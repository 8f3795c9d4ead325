"""The wire fuzzer against live agents (issue 15, "Fuzzing and soak"): two `edgepart run` processes
receive hypothesis-generated and mutated messages (tests/unit/wirefuzz.py) from a client holding the
app's key, so every byte reaches request handling (docs/agents.md, "Encryption" and "The wire"),
while real requests go through an InferenceSession beside them. Every real request is answered as
onnxruntime answers it, during the fuzzing and after it, and both agents are still the same
processes, with no traceback in their output.

Bounded: about 30 s of fuzzing (EDGEPART_FUZZ_SECONDS=N for longer), in rounds of one hypothesis run
of 150 examples per agent, each run under a seed of its own (the round's number, so a failure is
reproducible), each example followed by 5 messages of the seeded fast generator; every wait is
bounded. bench/bench_fuzz.py sends 100,000 such messages and measures memory and descriptors.
"""

from __future__ import annotations

import collections
import os
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, seed, settings

from edgepart.wire import PROTOCOL_VERSION

import graphs
from e2e_helpers import agent_output, assert_same, header, keyed_dealer, model_file, reference, seeded_feeds, send_all
from wirefuzz import Mutator, Target, check, messages

FUZZ_S = float(os.environ.get("EDGEPART_FUZZ_SECONDS", "30"))
pytestmark = pytest.mark.timeout(int(240 + 2 * FUZZ_S))

BATCH = 150  # examples per hypothesis run, one run per agent per round
FAST = 5  # messages of the fast generator sent after each hypothesis example
REAL_EVERY = 100  # a real request after every so many fuzzed messages
MAX_ROUNDS = 10_000


def drain(sock: zmq.Socket, limit: int = 10_000) -> int:
    n = 0
    while n < limit and sock.poll(0):
        sock.recv_multipart()
        n += 1
    return n


def sync(sock: zmq.Socket, plan_id: str, timeout_s: float = 10.0) -> None:
    """A ping answered on this connection: everything sent before it on it has been handled."""
    sock.send_multipart([header(v=PROTOCOL_VERSION, k="ping", p=plan_id, s="@prober")])
    end = time.monotonic() + timeout_s
    while True:  # replies to earlier messages (errors, results, hellos) may come first
        left = end - time.monotonic()
        assert left > 0 and sock.poll(int(left * 1e3)), "an agent does not answer a ping after the fuzzing"
        if msgpack.unpackb(sock.recv_multipart()[0]).get("k") == "pong":
            return


def test_fuzzed_messages_from_an_authenticated_client_never_stop_an_agent(packaged, agents, sessions):
    res = packaged(graphs.residual(), 2)
    procs = agents(res.out_dir)
    sess = sessions(res.out_dir, timeout_s=15)
    model = model_file(res.out_dir)
    feeds = [seeded_feeds(res.plan, s) for s in range(8)]
    want = [reference(model, f) for f in feeds]
    assert_same(sess.submit(feeds[0]).result(10), want[0], "before the fuzzing")
    pids = {d: a.proc.pid for d, a in procs.agents.items()}

    ctx = zmq.Context()
    forgers: dict[str, tuple[Target, zmq.Socket]] = {}
    outcomes: collections.Counter = collections.Counter()
    real: list = []  # (feed index, future)
    not_taken = 0
    t0 = time.monotonic()
    t_end = t0 + FUZZ_S
    try:
        for device, endpoint in procs.endpoints.items():
            ident = f"fuzzer-{device}".encode()
            s = keyed_dealer(ctx, res.out_dir, device)  # the app's own key: the bytes reach request handling
            s.setsockopt(zmq.IDENTITY, ident)
            s.connect(endpoint)
            forgers[device] = (Target.of(res.plan, device, client=ident), s)
        for t, s in forgers.values():
            sync(s, t.plan_id)  # linked (the CURVE handshake done) before the fuzzing starts

        rounds = 0
        while time.monotonic() < t_end and rounds < MAX_ROUNDS:
            for device, (t, s) in forgers.items():
                fast = Mutator(seed=rounds)

                @settings(max_examples=BATCH, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
                          suppress_health_check=list(HealthCheck))
                @seed(rounds)
                @given(frames=messages(t))
                def fuzz_one(frames):
                    nonlocal not_taken
                    if time.monotonic() > t_end:
                        return
                    for msg in [frames] + [fast.next(t) for _ in range(FAST)]:
                        if not msg:
                            continue  # (no ZeroMQ message has no frame)
                        outcomes[check(msg)] += 1  # the property holds here too, on every message sent
                        if not send_all(s, msg):
                            not_taken += 1
                        n = sum(outcomes.values())
                        if n % REAL_EVERY == 0:
                            real.append((n, sess.submit(feeds[n % len(feeds)])))
                        if n % 50 == 0:
                            drain(s)

                fuzz_one()
                drain(s)
                dead = {d: a.proc.poll() for d, a in procs.agents.items() if a.proc is None or a.proc.poll() is not None}
                assert not dead, f"agents exited during the fuzzing: {dead}\n{agent_output(procs)[-3000:]}"
            rounds += 1
        fuzz_s = time.monotonic() - t0
        sent = sum(outcomes.values())
        assert sent >= 200 and not_taken < sent // 10, f"{sent} messages made, {not_taken} not taken by the agents"

        for t, s in forgers.values():
            sync(s, t.plan_id)  # every fuzzed message has been handled by now
    finally:
        for _, s in forgers.values():
            s.close(0)
        ctx.term()

    failures = []
    for n, fut in real:
        try:
            assert_same(fut.result(20), want[n % len(feeds)], f"real request after fuzzed message {n}")
        except Exception as e:  # noqa: BLE001 - gathered, then reported together
            failures.append((n, repr(e)[:300]))
    assert not failures, f"{len(failures)} of {len(real)} real requests amid the fuzzing failed: {failures[:5]}"

    # after it all: a final batch answered correctly, by the same agent processes, which never logged a bug
    futures = [sess.submit(f) for f in feeds * 2]
    for i, fut in enumerate(futures):
        assert_same(fut.result(20), want[i % len(feeds)], f"final request {i}")
    for i, f in enumerate(feeds):
        (y,) = sess.run(None, f)
        assert np.max(np.abs(y - want[i]["y"])) <= 1e-5
    for d, a in procs.agents.items():
        assert a.proc is not None and a.proc.poll() is None and a.proc.pid == pids[d], f"agent {d} is not the same process"
    out = agent_output(procs)
    assert "dropped a message" in out, "the agents logged no dropped message: the fuzzing never reached them"
    for bad in ("Traceback", "could not be handled", "crashed"):
        assert bad not in out, f"an agent logged {bad!r}:\n{out[-4000:]}"
    print(f"\n{sent} fuzzed messages in {fuzz_s:.1f} s ({sent / fuzz_s:.0f}/s) to {len(forgers)} agents, "
          f"refused locally in the header {outcomes['header']}, in a tensor {outcomes['tensor']}, "
          f"decoded {outcomes['ok']}; {len(real)} real requests amid them and {len(futures) + len(feeds)} after, all answered")

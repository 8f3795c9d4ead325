"""Faults: an agent killed mid-stream fails what is in flight with a typed error within the deadline,
and the same session recovers once it is back; thousands of malformed messages are dropped while
real requests keep being answered; bad inputs fail at once with InputsError."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import signal
import time

import msgpack
import numpy as np
import pytest
import zmq

import edgepart
from edgepart.wire import PROTOCOL_VERSION

import graphs
from e2e_helpers import (agent_output, assert_same, first_success, header, keyed_dealer, model_file, reference, seeded_feeds,
                         send_all, tensor_message)

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 4.0  # per request, in the SIGKILL test
SLACK_S = 1.0  # what a failure may take beyond its request's deadline
RECOVER_WITHIN_S = 15.0


def outcome(fut, deadline: float):
    """("ok", result) | ("error", exception) | ("hang", None) if not done by `deadline` (monotonic)."""
    try:
        return "ok", fut.result(max(deadline - time.monotonic(), 0.0))
    except concurrent.futures.TimeoutError:
        return "hang", None
    except Exception as e:  # noqa: BLE001 - the type is what is checked
        return "error", e


def test_sigkill_mid_stream_then_recovery(packaged, agents, sessions):
    res = packaged(graphs.residual(), 3)
    model = model_file(res.out_dir)
    victim = res.plan.steps[1].device  # the middle stage
    procs = agents(res.out_dir)
    others = {d: procs.agents[d].proc.pid for d in procs.agents if d != victim}
    sess = sessions(res.out_dir, timeout_s=TIMEOUT_S)
    feeds = [seeded_feeds(res.plan, s) for s in range(16)]
    want = [reference(model, f)["y"] for f in feeds]

    # a stream, 8 in flight, until 1.5 s or 100 requests after the kill (bounded in count and time)
    inflight: collections.deque = collections.deque()
    done = []  # (index, submitted at, finished at, kind, value, in flight at the kill)
    at_kill: set[int] = set()
    t_kill = None
    t_end = time.monotonic() + 40

    def settle(i, fut, t_sub):
        kind, value = outcome(fut, t_sub + TIMEOUT_S + SLACK_S)
        done.append((i, t_sub, time.monotonic(), kind, value, i in at_kill))

    after_kill = 0
    for i in range(2000):
        if time.monotonic() > t_end or (t_kill is not None and (time.monotonic() - t_kill > 1.5 or after_kill >= 100)):
            break
        after_kill += t_kill is not None
        while len(inflight) >= 8:
            settle(*inflight.popleft())
        inflight.append((i, sess.submit(feeds[i % len(feeds)]), time.monotonic()))
        if t_kill is None and sum(1 for d in done if d[3] == "ok") >= 50:
            at_kill = {j for j, _, _ in inflight}
            procs.kill(victim, signal.SIGKILL)
            t_kill = time.monotonic()
    while inflight:
        settle(*inflight.popleft())
    assert t_kill is not None, f"the stream never got going: {done[:3]}"

    hangs = [d for d in done if d[3] == "hang"]
    assert not hangs, f"{len(hangs)} requests neither answered nor failed within deadline + {SLACK_S} s: {[d[0] for d in hangs]}"
    untyped = [(d[0], repr(d[4])) for d in done if d[3] == "error" and not isinstance(d[4], edgepart.PeerError)]
    assert not untyped, f"failures must be PeerError or DeadlineExceeded: {untyped[:5]}"
    for i, _, _, kind, value, _ in done:
        if kind == "ok":
            assert np.max(np.abs(value["y"] - want[i % len(feeds)])) <= 1e-5, f"request {i} answered wrongly"
    after = [d for d in done if d[1] >= t_kill or d[5]]
    failed_after = [d for d in after if d[3] == "error"]
    assert failed_after, "killing the middle stage failed nothing"
    caught_in_flight = [d for d in done if d[5] and d[3] == "error"]
    slowest = max(d[2] - d[1] for d in failed_after)
    print(f"\nSIGKILL of {victim}: {len(at_kill)} in flight ({len(caught_in_flight)} failed), "
          f"{len(failed_after)} failed after it, slowest failure {slowest:.2f} s after its submit "
          f"(deadline {TIMEOUT_S:g} s); kinds: {collections.Counter(type(d[4]).__name__ for d in failed_after)}")

    # started again: the same session recovers, nobody else restarted
    t_restart = time.monotonic()  # the clock includes the new process's start-up
    procs.restart(victim)
    started_s = time.monotonic() - t_restart
    last = None
    while time.monotonic() - t_restart < RECOVER_WITHIN_S:
        try:
            (y,) = sess.run(None, feeds[0], timeout_s=2)
            assert np.max(np.abs(y - want[0])) <= 1e-5
            break
        except edgepart.PeerError as e:
            last = e
            time.sleep(0.1)
    else:
        raise AssertionError(f"no request succeeded within {RECOVER_WITHIN_S} s of restarting {victim}; last error: "
                             f"{last}\n" + agent_output(procs)[-3000:])
    recovered_s = time.monotonic() - t_restart
    print(f"recovered {recovered_s:.2f} s after restarting {victim} (its process took {started_s:.2f} s to start)")
    futures = [sess.submit(f) for f in feeds]
    for f, w in zip(futures, want):
        assert np.max(np.abs(f.result(10)["y"] - w)) <= 1e-5
    assert {d: procs.agents[d].proc.pid for d in others} == others, "the other agents must not have been restarted"
    assert "Traceback" not in agent_output(procs)


def test_embedded_first_stage_run_when_the_next_agent_dies(packaged, agents, sessions):
    """`run()` beside an embedded first stage computes it in the caller's thread and sends from there:
    with the next device killed it fails with a typed error at once (no hang), and once that agent is
    started again the same session and agent recover."""
    res = packaged(graphs.residual(), 2)
    first = res.plan.steps[0].device
    (other,) = [d for d in res.plan.device_names() if d != first]
    procs = agents(res.out_dir, devices=[other])
    feeds = seeded_feeds(res.plan, 0)
    want = reference(model_file(res.out_dir), feeds)["y"]
    with edgepart.Agent(res.out_dir / first, interface="127.0.0.1", threads=1) as agent:
        assert agent.wait_ready(15)
        sess = sessions(res.out_dir)
        (y,) = sess.run(None, feeds)
        assert np.max(np.abs(y - want)) <= 1e-5 and agent.core.direct.runs == 1
        procs.kill(other, signal.SIGKILL)
        t0 = time.monotonic()
        kinds = []
        while time.monotonic() - t0 < 3 and len(kinds) < 20:  # bounded in time and count
            try:
                sess.run(None, feeds, timeout_s=TIMEOUT_S)
                kinds.append("ok")
            except edgepart.PeerError as e:  # DeadlineExceeded is one too
                kinds.append(type(e).__name__)
                break
        assert kinds and kinds[-1] != "ok", f"killing {other} failed nothing: {kinds}"
        failed_after = time.monotonic() - t0
        assert failed_after <= SLACK_S, f"run() failed {failed_after:.2f} s after the kill, not at once"
        procs.restart(other)
        (y,) = first_success(lambda: sess.run(None, feeds, timeout_s=2), RECOVER_WITHIN_S,
                             f"no run() succeeded after restarting {other}")
        assert np.max(np.abs(y - want)) <= 1e-5 and agent.core.direct.runs >= 2
    assert "Traceback" not in agent_output(procs)


def test_a_long_backlog_to_a_dead_agent_fails_fast_and_typed(packaged, agents, sessions):
    """2,000 requests submitted at once while an agent is down: each fails with PeerError, none hangs,
    and the failures (each freeing a window place for the next) do not pile up a deep call stack."""
    res = packaged(graphs.residual(), 2)
    procs = agents(res.out_dir)
    sess = sessions(res.out_dir)
    feeds = seeded_feeds(res.plan, 0)
    sess.run(None, feeds)
    first = res.plan.steps[0].device
    procs.kill(first, signal.SIGKILL)
    t0 = time.monotonic()
    while first not in sess._client.missing_roles() and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert first in sess._client.missing_roles(), "the session never saw the agent go"
    futures = [sess.submit(feeds, timeout_s=TIMEOUT_S) for _ in range(2000)]
    deadline = time.monotonic() + TIMEOUT_S + SLACK_S
    kinds = collections.Counter()
    for f in futures:
        kind, value = outcome(f, deadline)
        kinds[type(value).__name__ if kind == "error" else kind] += 1
    assert kinds == {"PeerError": 2000}, kinds


# -- malformed messages ----------------------------------------------------------------------------

class Target:
    """What a forger knows about one agent: its endpoint, the plan id (announced over mDNS), and a
    tensor that agent takes (name, legitimate sender, a well-formed array)."""

    def __init__(self, plan, device: str, endpoint: str):
        self.plan_id, self.device, self.endpoint = plan.plan_id, device, endpoint
        route = next(r for r in plan.routes if r.dst == device)
        spec = next(i for s in plan.steps for i in s.inputs if i.name == route.tensor)
        self.name, self.sender = route.tensor, route.src
        self.array = np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype=spec.dtype)

    def good(self, rid: int, **over) -> list[bytes]:
        ttl = over.pop("ttl", 300.0)  # a short one: what an agent holds for a forger it drops soon
        return tensor_message(self.plan_id, self.sender, [(self.name, self.array)], rid=rid, client=b"forger-0",
                              ttl=ttl, **over)

    def with_entry(self, rid: int, entry: list, payload: bytes | None = None, **over) -> list[bytes]:
        frames = self.good(rid, ts=[entry], **over)
        return [frames[0], self.array.tobytes() if payload is None else payload]


def entry(t: Target, **over) -> list:
    e = {"name": t.name, "dtype": t.array.dtype.name, "shape": list(t.array.shape), "codec": "dense", "params": {}}
    e.update(over)
    return [e["name"], e["dtype"], e["shape"], e["codec"], e["params"]]


def bad_messages(t: Target, rng: np.random.Generator) -> dict[str, callable]:
    """Every kind of malformed message, by name; each call makes a fresh one (its own request id)."""
    rid = lambda: int(rng.integers(1, 1 << 40))
    nbytes = t.array.nbytes
    return {
        "empty frame": lambda: [b""],
        "truncated msgpack": lambda: [(h := t.good(rid())[0])[: int(rng.integers(1, len(h)))], t.array.tobytes()],
        "garbage bytes": lambda: [rng.bytes(int(rng.integers(1, 400)))],
        "garbage in every frame": lambda: [rng.bytes(int(rng.integers(1, 64))) for _ in range(3)],
        "header is a list": lambda: [msgpack.packb([1, "tensor", t.plan_id])],
        "header is an int": lambda: [msgpack.packb(int(rng.integers(0, 1 << 30)))],
        "map with int keys": lambda: [msgpack.packb({1: 2, 3: 4})],
        "no protocol version": lambda: t.good(rid(), v=None),
        "future protocol version": lambda: t.good(rid(), v=99),
        "version as a string": lambda: t.good(rid(), v="1"),
        "wrong plan id": lambda: t.good(rid(), p="0123456789abcdef"),
        "plan id not a string": lambda: t.good(rid(), p=12345),
        "plan id too long": lambda: t.good(rid(), p="p" * 200),
        "unknown kind": lambda: t.good(rid(), k="teleport"),
        "kind as an int": lambda: t.good(rid(), k=7),
        "error sent to an agent": lambda: [header(v=PROTOCOL_VERSION, k="error", p=t.plan_id, s=t.sender, r=rid(), m="boo")],
        "pong sent to an agent": lambda: [header(v=PROTOCOL_VERSION, k="pong", p=t.plan_id, s=t.sender)],
        "hello of another plan": lambda: [header(v=PROTOCOL_VERSION, k="hello", p="fedcba9876543210", s="dev0")],
        "wrong dtype string": lambda: t.with_entry(rid(), entry(t, dtype=str(rng.choice(["float33", "object", "<f4", "", "complex64"])))),
        "dtype of the wrong kind": lambda: t.with_entry(rid(), entry(t, dtype="int32" if t.array.dtype != np.int32 else "float32")),
        "payload one byte short": lambda: t.with_entry(rid(), entry(t), t.array.tobytes()[:-1]),
        "payload one byte long": lambda: t.with_entry(rid(), entry(t), t.array.tobytes() + b"\0"),
        "empty payload": lambda: t.with_entry(rid(), entry(t), b""),
        "huge declared shape": lambda: t.with_entry(rid(), entry(t, shape=[1, 1 << 20, 1 << 10, 1 << 8][: max(t.array.ndim, 2)]), b""),
        "dimension beyond 2^40": lambda: t.with_entry(rid(), entry(t, shape=[1 << 41] + list(t.array.shape[1:])), b""),
        "17 dimensions": lambda: t.with_entry(rid(), entry(t, shape=[1] * 17)),
        "negative dimension": lambda: t.with_entry(rid(), entry(t, shape=[-1] + list(t.array.shape[1:]))),
        "bool dimension": lambda: t.with_entry(rid(), entry(t, shape=[True] + list(t.array.shape[1:]))),
        "float dimension": lambda: t.with_entry(rid(), entry(t, shape=[1.0] + list(t.array.shape[1:]))),
        "right bytes, wrong rank": lambda: t.with_entry(rid(), entry(t, shape=[nbytes // t.array.itemsize])),
        "negative request id": lambda: t.good(0, r=-int(rng.integers(1, 1000))),
        "bool request id": lambda: t.good(0, r=True),
        "float request id": lambda: t.good(0, r=1.5),
        "request id of 2^64-1": lambda: t.good(0, r=(1 << 64) - 1),
        "negative ttl": lambda: t.good(rid(), ttl=-5.0),
        "bool ttl": lambda: t.good(rid(), ttl=True),
        "nan ttl": lambda: t.good(rid(), ttl=float("nan")),
        "infinite ttl": lambda: t.good(rid(), ttl=float("inf")),
        "string ttl": lambda: t.good(rid(), ttl="300"),
        "client id not bytes": lambda: t.good(rid(), c=42),
        "client id of 300 bytes": lambda: t.good(rid(), c=b"c" * 300),
        "sender not a string": lambda: t.good(rid(), s=3),
        "too many frames": lambda: [t.good(rid())[0]] + [b"\0" * 4] * 100,
        "oversized header": lambda: t.good(rid(), m="x" * (70 * 1024)),
        "more entries than frames": lambda: [t.good(rid())[0]],
        "no tensor entries": lambda: [t.good(rid(), ts=[])[0]],
        "tensor entries not a list": lambda: [t.good(rid(), ts={"a": 1})[0], t.array.tobytes()],
        "entry of 3 fields": lambda: [t.good(rid(), ts=[[t.name, "float32", [1]]])[0], t.array.tobytes()],
        "empty tensor name": lambda: t.with_entry(rid(), entry(t, name="")),
        "tensor name of 600 characters": lambda: t.with_entry(rid(), entry(t, name="n" * 600)),
        "unknown codec": lambda: t.with_entry(rid(), entry(t, codec="zstd")),
        "codec params not a map": lambda: t.with_entry(rid(), entry(t, params=[1, 2])),
        "dense with params": lambda: t.with_entry(rid(), entry(t, params={"axis": 1})),
        "bitmap with a bad nnz": lambda: t.with_entry(rid(), entry(t, codec="bitmap", params={"nnz": -3})),
        "int8 with nan scales": lambda: t.with_entry(rid(), entry(t, codec="int8", params={"mode": "affine"}),
                                                     b"\xff" * (8 + t.array.size)),
        "a tensor this agent does not take": lambda: t.with_entry(rid(), entry(t, name="no_such_tensor")),
        "a sender that may not send it": lambda: t.good(rid(), s="mallory"),
        "valid tensor but no ttl": lambda: t.good(rid(), ttl=None),
    }


def drain(sock: zmq.Socket) -> int:
    n = 0
    while sock.poll(0):
        sock.recv_multipart()
        n += 1
    return n


@pytest.fixture(scope="class")
def cluster(packaged, class_agents, class_sessions):
    """The residual model on 3 agent processes and a session, shared by the class."""
    res = packaged(graphs.residual(), 3)
    procs = class_agents(res.out_dir)
    sess = class_sessions(res.out_dir, timeout_s=10)
    return res, procs, sess


class TestMalformedAndBadInputs:
    N_BAD = 3000  # malformed messages, spread over the 3 agents and 58 kinds

    def test_thousands_of_malformed_messages_are_dropped(self, cluster):
        res, procs, sess = cluster
        model = model_file(res.out_dir)
        rng = np.random.default_rng(0)
        targets = [Target(res.plan, d, ep) for d, ep in procs.endpoints.items()]
        kinds = {t.device: bad_messages(t, rng) for t in targets}
        names = sorted(next(iter(kinds.values())))
        feeds = [seeded_feeds(res.plan, s) for s in range(8)]
        want = [reference(model, f) for f in feeds]
        ctx = zmq.Context()
        socks = []
        real = []  # (index, future)
        sent = collections.Counter()
        not_taken = 0
        try:
            for t in targets:
                for k in range(2):  # two forgers per agent, each with an identity of its own
                    s = keyed_dealer(ctx, res.out_dir, t.device)  # an authenticated forger: the app's own key
                    s.setsockopt(zmq.IDENTITY, f"forger-{t.device}-{k}".encode())
                    s.setsockopt(zmq.LINGER, 0)
                    s.connect(t.endpoint)
                    socks.append((t, s))
            t0 = time.monotonic()
            for n in range(self.N_BAD):
                assert time.monotonic() - t0 < 60, f"only {n} malformed messages went out in 60 s"
                t, s = socks[n % len(socks)]
                name = names[(n // len(socks)) % len(names)]
                if not send_all(s, kinds[t.device][name]()):
                    not_taken += 1
                sent[name] += 1
                if n % 50 == 0:  # real requests interleaved with the garbage
                    i = len(real)
                    real.append((i, sess.submit(feeds[i % len(feeds)])))
                if n % 200 == 0:
                    for _, s2 in socks:
                        drain(s2)
            failures = []
            for i, fut in real:
                kind, value = outcome(fut, time.monotonic() + 15)
                if kind != "ok":
                    failures.append((i, kind, repr(value)))
                else:
                    assert_same(value, want[i % len(feeds)], f"real request {i} amid malformed messages")
            assert not failures, f"real requests amid the garbage failed: {failures[:5]}\n" + agent_output(procs)[-3000:]
            assert not_taken < self.N_BAD // 10, f"agents stopped reading: {not_taken} malformed messages not taken"

            # a ping on every forger's connection comes back only after everything sent before it on
            # that connection was handled: so now every malformed message has been seen
            for t, s in socks:
                s.send(header(v=PROTOCOL_VERSION, k="ping", p=t.plan_id, s="@prober"))
                end = time.monotonic() + 5
                while True:  # replies to earlier messages (`hello` of another plan) may come first
                    assert s.poll(max(int((end - time.monotonic()) * 1e3), 0)), f"{t.device} does not answer a ping after the flood"
                    if msgpack.unpackb(s.recv_multipart()[0]).get("k") == "pong":
                        break
            # every agent is alive, logged what it dropped, and never crashed
            for t in targets:
                a = procs.agents[t.device]
                assert a.proc is not None and a.proc.poll() is None, f"agent {t.device} died:\n{agent_output(procs, t.device)}"
                out = agent_output(procs, t.device)
                assert "dropped a message" in out, f"{t.device} logged no drop:\n{out[-2000:]}"
                assert "Traceback" not in out and "crashed" not in out, out[-3000:]
        finally:
            for _, s in socks:
                s.close(0)
            ctx.term()
        # and after it all, the cluster answers as before
        for f, w in zip(feeds, want):
            assert_same(sess.submit(f).result(10), w, "after the flood")
        print(f"\n{sum(sent.values())} malformed messages of {len(sent)} kinds to {len(targets)} agents, "
              f"{len(real)} real requests interleaved, all answered")

    def test_bad_inputs_fail_at_once_with_inputs_error(self, cluster):
        res, procs, sess = cluster
        (spec,) = res.plan.inputs
        good = seeded_feeds(res.plan, 0)
        x = good[spec.name]
        cases = {
            "float64 instead of float32": {spec.name: x.astype(np.float64)},
            "int64 instead of float32": {spec.name: x.astype(np.int64)},
            "wrong shape": {spec.name: np.zeros([d + 1 for d in x.shape], dtype=x.dtype)},
            "wrong rank": {spec.name: x.reshape(-1)},
            "missing input": {},
            "unknown input": {spec.name: x, "bogus": x},
        }
        for what, feeds in cases.items():
            for how in ("run", "submit", "arun"):
                t0 = time.monotonic()
                with pytest.raises(edgepart.InputsError) as e:
                    if how == "run":
                        sess.run(None, feeds)
                    elif how == "submit":
                        sess.submit(feeds).result(5)  # raising in submit() or in its future are both fine
                    else:
                        asyncio.run(sess.arun(None, feeds))
                took = time.monotonic() - t0
                assert took < 0.5, f"{what} via {how}: the error took {took:.2f} s"
                msg = str(e.value)
                assert spec.name in msg or "bogus" in msg, f"{what} via {how}: the error does not name the input: {msg}"
        # the session is unharmed, async path included
        (y,) = asyncio.run(sess.arun(None, good))
        assert np.max(np.abs(y - reference(model_file(res.out_dir), good)["y"])) <= 1e-5


# -- messages that once stopped an agent ---------------------------------------------------------------

@pytest.mark.parametrize("field", ["kind is a list", "kind is a map", "dtype is a list", "dtype is a map"])
def test_unhashable_header_field_is_dropped(field, packaged, agents, sessions):
    res = packaged(graphs.residual(), 2)
    procs = agents(res.out_dir)
    first = res.plan.steps[0].device
    t = Target(res.plan, first, procs.endpoints[first])
    sess = sessions(res.out_dir, timeout_s=3)
    feeds = seeded_feeds(res.plan, 0)
    want = reference(model_file(res.out_dir), feeds)
    assert_same(sess.submit(feeds).result(5), want, "before")
    frames = {
        "kind is a list": lambda: t.good(1, k=["tensor"]),
        "kind is a map": lambda: t.good(1, k={"tensor": 1}),
        "dtype is a list": lambda: t.with_entry(1, entry(t, dtype=["float32"])),
        "dtype is a map": lambda: t.with_entry(1, entry(t, dtype={"float32": 1})),
    }[field]()
    ctx = zmq.Context()
    s = keyed_dealer(ctx, res.out_dir, t.device)
    try:
        s.connect(t.endpoint)
        assert send_all(s, frames)
        time.sleep(0.3)
        assert_same(sess.submit(feeds).result(5), want, f"after one message whose {field}")
        assert "dropped a message" in agent_output(procs, first)
    finally:
        s.close(0)
        ctx.term()

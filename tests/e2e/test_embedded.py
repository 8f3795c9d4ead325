"""A caller beside its device's agent (the camera holder): sync `run()` computes the first stage in
the caller's thread, sends from there, and takes the next device's answer on the socket it sent
from. Several caller threads at once each get their own answer; a caller that gave up on an answer
(its deadline passed) never gets that stale answer in place of its next one.

The model (e2e_helpers.encoder_model) computes y = 1990 - 3x exactly, so each answer names the
request it belongs to; the second stage holds the identity MatMuls, the slow one."""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

import edgepart
from edgepart.wire import PROTOCOL_VERSION

from e2e_helpers import encoded, encoder_input, encoder_model, encoder_owner, first_success, header, package_with_cuts

pytestmark = pytest.mark.timeout(120)

WIDTH = 1024


@pytest.fixture
def embedded(tmp_path, agents, sessions):
    """make(heavy) -> (agent, session, processes): dev0 embedded in this process, dev1 an
    `edgepart run` process."""
    def make(heavy: int):
        res = package_with_cuts(encoder_model(WIDTH, heavy, through_first=True), tmp_path / f"h{heavy}", (4,))
        assert [(r.tensor, r.dst) for r in res.plan.routes if r.src == "@caller"] == [("x", "dev0")]
        assert {r.src for r in res.plan.routes if r.dst == "@caller"} == {"dev1"}
        procs = agents(res.out_dir, devices=["dev1"])
        agent = edgepart.Agent(res.out_dir / "dev0", interface="127.0.0.1", threads=1).start()
        stack.append(agent)
        assert agent.wait_ready(15)
        return agent, sessions(res.out_dir, timeout_s=20), procs
    stack: list = []
    yield make
    sessions.close()
    for a in stack:
        a.stop()


def test_concurrent_callers_each_get_their_own_answer_in_their_thread(embedded):
    agent, sess, _ = embedded(0)
    threads, per_thread = 4, 15
    wrong, errors = [], []

    def caller(t: int) -> None:
        for k in range(per_thread):
            i = t * per_thread + k
            try:
                (y,) = sess.run(None, {"x": encoder_input(i, WIDTH)})
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((i, repr(e)))
                return
            if encoder_owner(y) != i or not np.array_equal(y, encoded(encoder_input(i, WIDTH))):
                wrong.append((i, encoder_owner(y)))

    ts = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a caller thread hung"
    assert not errors and not wrong, f"errors {errors[:3]}, answers of another request {wrong[:5]}"
    n = threads * per_thread
    assert agent.core.direct.runs >= n * 0.9 and agent.core.direct.answers >= n * 0.9, (
        f"{agent.core.direct.runs} / {agent.core.direct.answers} of {n} runs took the direct path")
    # one socket per caller at a time at most: the pool never grows past the callers
    assert 1 <= agent.core.direct.sockets <= threads


def test_an_answer_given_up_on_is_never_taken_for_the_next_one(embedded, caplog):
    caplog.set_level(logging.DEBUG, logger="edgepart")
    agent, sess, _ = embedded(400)  # dev1: 400 identity MatMuls, some milliseconds per request
    x0, x1 = encoder_input(1, WIDTH), encoder_input(2, WIDTH)
    t0 = time.monotonic()
    (y,) = sess.run(None, {"x": x0})
    slow_s = time.monotonic() - t0
    assert encoder_owner(y) == 1
    gave_up = 0
    for attempt in range(5):  # bounded: each round gives up on one answer, then must get its own
        with pytest.raises(edgepart.DeadlineExceeded):
            sess.run(None, {"x": x0}, timeout_s=max(slow_s / 20, 0.0005))
        gave_up += 1
        (y,) = sess.run(None, {"x": x1})
        assert encoder_owner(y) == 2 and np.array_equal(y, encoded(x1)), (
            f"round {attempt}: got request {encoder_owner(y)}'s answer")
    assert agent.core.direct.sockets == 1 and agent.core.direct.answers >= 6
    # the answers (or errors: dev1 saw their deadlines pass) to the requests given up on did arrive
    # on that socket, and were skipped
    skipped = [r for r in caplog.records if "on a direct socket" in r.getMessage()]
    assert skipped, "no stale answer arrived: the test did not test the skipping"


def test_submitted_streams_are_answered_through_the_embedded_agent(embedded):
    """`submit` beside an embedded first stage: the next device answers on the agent's own link and
    the agent hands each answer to the session on its thread (no hop through the client's I/O
    thread); 1,000 requests, each answered once with its own answer, and nothing left held after."""
    agent, sess, _ = embedded(0)
    n = 1000
    futs = [sess.submit({"x": encoder_input(i % 3000, WIDTH)}) for i in range(n)]
    owners = [encoder_owner(f.result(30)["y"]) for f in futs]
    assert owners == [i % 3000 for i in range(n)]
    core = agent.core
    assert core.relays and core.relayed == n
    assert not core._relay_in and not core._relay_out, f"{len(core._relay_in)} relays left after the stream"


def test_no_relay_where_the_caller_also_feeds_another_device(tmp_path, agents, sessions):
    """The encoder's input goes to both devices: answers come back to the session itself."""
    res = package_with_cuts(encoder_model(WIDTH, 0), tmp_path, (3,))
    assert sorted(r.dst for r in res.plan.routes if r.src == "@caller") == ["dev0", "dev1"]
    agents(res.out_dir, devices=["dev1"])
    with edgepart.Agent(res.out_dir / "dev0", interface="127.0.0.1", threads=1) as agent:
        assert agent.wait_ready(15)
        sess = sessions(res.out_dir, timeout_s=20)
        futs = [sess.submit({"x": encoder_input(i, WIDTH)}) for i in range(50)]
        assert [encoder_owner(f.result(30)["y"]) for f in futs] == list(range(50))
        assert agent.core.relayed == 0 and not agent.core._relay_out
        sessions.close()


class ScriptedDev1:
    """dev1 played by a test ROUTER on loopback that answers each request as its script says, for
    what a real agent would not send: an error for a request, a malformed result, an answer to a
    request nobody sent. It answers hello like an agent, so the links come up."""

    def __init__(self, plan_id: str, script: list[str], bundle=None):
        self.plan_id, self.script, self.seen = plan_id, list(script), []
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if bundle is not None:  # dev1's own key, so dev0's link (which pins it) comes up
            kp = edgepart.load_bundle(bundle).device_keypair()
            self.sock.curve_server = True
            self.sock.curve_secretkey, self.sock.curve_publickey = kp.secret.encode(), kp.public.encode()
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        end = time.monotonic() + 100  # bounded, whatever the test does
        while not self.stop.is_set() and time.monotonic() < end:
            if not self.sock.poll(50):
                continue
            ident, head, *payload = self.sock.recv_multipart()
            h = msgpack.unpackb(head)
            base = {"v": PROTOCOL_VERSION, "p": self.plan_id, "s": "dev1"}
            if h["k"] == "hello":
                self.sock.send_multipart([ident, header(k="hello", **base)])
                continue
            if h["k"] != "tensor" or not self.script:
                continue
            what = self.script.pop(0)
            self.seen.append(what)
            to = {"r": h["r"], "c": h["c"]}
            names = [t[0] for t in h["ts"]]
            x = np.frombuffer(payload[names.index("x_copy")], np.float32).reshape(1, WIDTH)
            if what == "error":
                self.sock.send_multipart([ident, header(k="error", m="dev1 ran out of memory", **base, **to)])
            elif what == "malformed":
                self.sock.send_multipart([ident, header(k="tensor", ts=[["y", "float32", [1, WIDTH], "dense", {}]],
                                                        **base, **to), b"\0" * 3])
            elif what == "stranger":  # an answer to a request never sent, then the real one
                self.sock.send_multipart([ident, header(k="tensor", ts=[["y", "float32", [1, WIDTH], "dense", {}]],
                                                        **base, r=h["r"] + 10_000, c=h["c"]), encoded(x).tobytes()])
            if what in ("good", "stranger"):
                self.sock.send_multipart([ident, header(k="tensor", ts=[["y", "float32", [1, WIDTH], "dense", {}]],
                                                        **base, **to), encoded(x).tobytes()])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.ctx.destroy(linger=0)


def test_relayed_errors_and_malformed_answers_fail_their_request_typed(tmp_path, sessions):
    """What dev1 says about a request reaches its future through the embedded agent's relay: an
    error fails it with dev1's words, a malformed result fails it as malformed, an answer to a
    request nobody sent is dropped; the requests around them are answered."""
    res = package_with_cuts(encoder_model(WIDTH, 0, through_first=True), tmp_path, (4,))
    dev1 = ScriptedDev1(res.plan.plan_id, ["good", "error", "malformed", "stranger", "good"], res.out_dir / "dev1")
    try:
        peer = f"127.0.0.1:{dev1.port}"
        with edgepart.Agent(res.out_dir / "dev0", interface="127.0.0.1", threads=1, peers=(peer,), announce=False) as agent:
            assert agent.wait_ready(15)
            sess = sessions(res.out_dir, peers=[peer, agent.endpoint], timeout_s=10)
            outcomes = []
            for i in range(5):  # one at a time, so each meets its line of the script
                try:
                    outcomes.append(encoder_owner(sess.submit({"x": encoder_input(i, WIDTH)}).result(20)["y"]))
                except edgepart.PeerError as e:
                    outcomes.append(f"{type(e).__name__}: {e}")
            assert dev1.seen == ["good", "error", "malformed", "stranger", "good"]
            assert outcomes[0] == 0 and outcomes[3] == 3 and outcomes[4] == 4, outcomes
            assert outcomes[1].startswith("PeerError") and "dev1 ran out of memory" in outcomes[1], outcomes[1]
            assert outcomes[2].startswith("PeerError") and "malformed" in outcomes[2], outcomes[2]
            core = agent.core
            assert core.relayed == 3 and core.relayed_errors == 1 and not core._relay_in
            sessions.close()
    finally:
        dev1.close()


def test_a_relayed_stream_when_the_next_agent_dies(embedded):
    """dev1 killed mid-stream: every request in flight fails typed by its deadline (the session sees
    the link go down; the relays are forgotten), none hangs; once dev1 is back the same session and
    embedded agent answer again, through the relay."""
    agent, sess, procs = embedded(100)
    timeout_s = 4.0
    futs = [sess.submit({"x": encoder_input(i, WIDTH)}, timeout_s=timeout_s) for i in range(300)]
    futs[0].result(20)
    procs.kill("dev1", signal.SIGKILL)
    end = time.monotonic() + timeout_s + 1.0
    outcomes = []
    for f in futs:
        try:
            outcomes.append(f.result(max(end - time.monotonic(), 0.0)))
        except concurrent.futures.TimeoutError:
            outcomes.append("hang")
        except edgepart.PeerError as e:
            outcomes.append(type(e).__name__)
    assert "hang" not in outcomes, f"{outcomes.count('hang')} requests still open after their deadline"
    assert any(isinstance(o, str) for o in outcomes), "killing dev1 failed nothing"
    procs.restart("dev1")
    y = first_success(lambda: sess.submit({"x": encoder_input(7, WIDTH)}, timeout_s=2).result(5)["y"], 15,
                      "no answer after restarting dev1")
    assert encoder_owner(y) == 7 and agent.core.relayed >= 2
    wait_s = time.monotonic() + timeout_s + 1
    while agent.core._relay_in and time.monotonic() < wait_s:  # the dead requests' relays expire
        time.sleep(0.1)
    assert not agent.core._relay_in, f"{len(agent.core._relay_in)} relays outlived their deadline"


def test_two_sessions_sharing_the_agents_sockets_never_take_each_others_answers(embedded, sessions):
    """Each session numbers its requests from 1 and the embedded agent's pooled sockets pass from
    one session to the other: a late answer one session gave up on must not become the other's
    answer to its request of the same number."""
    agent, first, _ = embedded(400)
    second = sessions(agent.core.bundle.path.parent, timeout_s=20)
    x1, x2 = encoder_input(1, WIDTH), encoder_input(2, WIDTH)
    t0 = time.monotonic()
    assert encoder_owner(first.run(None, {"x": x1})[0]) == 1  # first's request 1
    slow_s = time.monotonic() - t0
    assert encoder_owner(second.run(None, {"x": x2})[0]) == 2  # second's request 1
    with pytest.raises(edgepart.DeadlineExceeded):  # first's request 2: its answer comes late
        first.run(None, {"x": x1}, timeout_s=max(slow_s / 20, 0.0005))
    (y,) = second.run(None, {"x": x2})  # second's request 2, on the socket first gave up on
    assert encoder_owner(y) == 2 and np.array_equal(y, encoded(x2))
    assert agent.core.direct.sockets == 1


def test_run_when_the_next_device_is_embedded_too(tmp_path, sessions):
    """Both devices in this process: run() must not wait on a socket for an answer that comes back
    in-process."""
    res = package_with_cuts(encoder_model(WIDTH, 0, through_first=True), tmp_path, (4,))
    with edgepart.Agent(res.out_dir / "dev1", interface="127.0.0.1", threads=1), \
            edgepart.Agent(res.out_dir / "dev0", interface="127.0.0.1", threads=1) as first:
        assert first.wait_ready(15)
        sess = sessions(res.out_dir, timeout_s=10)
        for i in range(5):
            (y,) = sess.run(None, {"x": encoder_input(i, WIDTH)})
            assert encoder_owner(y) == i
        futs = [sess.submit({"x": encoder_input(i, WIDTH)}) for i in range(20)]
        assert [encoder_owner(f.result(20)["y"]) for f in futs] == list(range(20))
        sessions.close()


def test_closing_the_session_ends_a_run_in_flight(embedded):
    """dev1 frozen (SIGSTOP: its links stay up until heartbeats time out, 2 s): a run() waiting for
    its answer ends with "closed" as soon as its session is closed."""
    agent, sess, procs = embedded(0)
    assert encoder_owner(sess.run(None, {"x": encoder_input(3, WIDTH)})[0]) == 3
    procs.agents["dev1"].signal(signal.SIGSTOP)
    try:
        out: list = []
        t = threading.Thread(target=lambda: out.append(_outcome(lambda: sess.run(None, {"x": encoder_input(4, WIDTH)}))))
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and not out, f"run() ended before the session was closed: {out}"
        t0 = time.monotonic()
        sess.close()
        t.join(5)
        took = time.monotonic() - t0
    finally:
        procs.agents["dev1"].signal(signal.SIGCONT)
    assert not t.is_alive() and out and "closed" in out[0], out
    assert took < 1.0, f"run() ended {took:.2f} s after its session closed"


def _outcome(fn):
    try:
        return encoder_owner(fn()[0])
    except edgepart.PeerError as e:
        return f"{type(e).__name__}: {e}"

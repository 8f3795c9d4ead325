"""A sync run() of an app whose devices all run `edgepart run` is sent and answered on the calling
thread's own sockets (agent/app/_caller.py; docs/agents.md, "Requests and deadlines"): concurrent
callers each get their own answer, a dead or frozen device fails a run() with a typed error and
never a hang, a closed session ends a run() in flight, and an answer given up on is never taken
for the next request."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

import edgepart

import graphs
from e2e_helpers import agent_output, first_success, model_file, reference, seeded_feeds

pytestmark = pytest.mark.timeout(180)

SLACK_S = 1.0


@pytest.fixture
def three(packaged, agents, sessions):
    """A 3-stage pipeline (a middle device that neither gets inputs nor answers), 3 agent processes."""
    res = packaged(graphs.residual(), 3)
    assert len({s.device for s in res.plan.steps}) == 3
    procs = agents(res.out_dir)
    sess = sessions(res.out_dir, timeout_s=10)
    return res, procs, sess


def _y(res, sess, feeds, **kw):
    (y,) = sess.run(None, feeds, **kw)
    return y


def test_concurrent_callers_get_their_own_answers_on_their_own_sockets(three):
    res, _, sess = three
    feeds = [seeded_feeds(res.plan, i) for i in range(8)]
    want = [reference(model_file(res.out_dir), f)["y"] for f in feeds]
    errors: list = []

    def caller(k: int) -> None:
        try:
            for i in range(25):
                j = (k + i) % len(feeds)
                assert np.max(np.abs(_y(res, sess, feeds[j]) - want[j])) <= 1e-5
        except Exception as e:  # reported below, with the thread that saw it
            errors.append((k, e))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    path = sess._client.caller
    assert path.runs == 100, "every run() went out on a caller's sockets"
    assert len(path._all) <= 4, "one set of sockets per concurrent caller, reused"


def test_an_answer_given_up_on_is_never_taken_for_the_next_request(three):
    res, procs, sess = three
    f0, f1 = seeded_feeds(res.plan, 0), seeded_feeds(res.plan, 1)
    w1 = reference(model_file(res.out_dir), f1)["y"]
    last = res.plan.steps[-1].device
    procs.agents[last].signal(signal.SIGSTOP)  # frozen: request 0 cannot be answered in time
    try:
        with pytest.raises(edgepart.DeadlineExceeded, match="not answered within"):
            _y(res, sess, f0, timeout_s=0.3)
    finally:
        procs.agents[last].signal(signal.SIGCONT)
    time.sleep(0.5)  # request 0's late answer arrives on the sockets the next run() takes: skipped
    for _ in range(5):
        assert np.max(np.abs(_y(res, sess, f1) - w1)) <= 1e-5


def test_a_dead_middle_device_fails_a_run_at_once_and_the_session_recovers(three):
    res, procs, sess = three
    feeds = seeded_feeds(res.plan, 0)
    want = reference(model_file(res.out_dir), feeds)["y"]
    assert np.max(np.abs(_y(res, sess, feeds) - want)) <= 1e-5
    middle = res.plan.steps[1].device
    procs.kill(middle, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(edgepart.PeerError):
        for _ in range(20):  # bounded: the first run() after the kill may still find the link up
            _y(res, sess, feeds, timeout_s=4)
    assert time.monotonic() - t0 <= 4 + SLACK_S
    procs.restart(middle)
    y = first_success(lambda: _y(res, sess, feeds, timeout_s=2), 15.0, f"no run() succeeded after restarting {middle}")
    assert np.max(np.abs(y - want)) <= 1e-5
    assert "Traceback" not in agent_output(procs)


def test_closing_the_session_ends_a_run_in_flight(three):
    res, procs, sess = three
    feeds = seeded_feeds(res.plan, 0)
    _y(res, sess, feeds)
    last = res.plan.steps[-1].device
    procs.agents[last].signal(signal.SIGSTOP)
    out: list = []

    def call():
        try:
            out.append(_y(res, sess, feeds, timeout_s=30))
        except edgepart.PeerError as e:
            out.append(e)

    t = threading.Thread(target=call)
    try:
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not out, f"run() ended before the session was closed: {out}"
        t0 = time.monotonic()
        sess.close()
        t.join(5)
        took = time.monotonic() - t0
    finally:
        procs.agents[last].signal(signal.SIGCONT)
    assert not t.is_alive() and out and "closed" in str(out[0]), out
    assert took < 1.0, f"run() ended {took:.2f} s after its session closed"

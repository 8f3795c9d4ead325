"""A caller beside its device's agent (the camera holder): sync `run()` computes the first stage in
the caller's thread, sends from there, and takes the next device's answer on the socket it sent
from. Several caller threads at once each get their own answer; a caller that gave up on an answer
(its deadline passed) never gets that stale answer in place of its next one.

The model (e2e_helpers.encoder_model) computes y = 1990 - 3x exactly, so each answer names the
request it belongs to; the second stage holds the identity MatMuls, the slow one."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

import edgepart

from e2e_helpers import encoded, encoder_input, encoder_model, encoder_owner, package_with_cuts

pytestmark = pytest.mark.timeout(120)

WIDTH = 1024


@pytest.fixture
def embedded(tmp_path, agents, sessions):
    """(agent, session): dev0 embedded in this process, dev1 an `edgepart run` process."""
    def make(heavy: int):
        res = package_with_cuts(encoder_model(WIDTH, heavy, through_first=True), tmp_path / f"h{heavy}", (4,))
        assert [(r.tensor, r.dst) for r in res.plan.routes if r.src == "@caller"] == [("x", "dev0")]
        assert {r.src for r in res.plan.routes if r.dst == "@caller"} == {"dev1"}
        agents(res.out_dir, devices=["dev1"])
        agent = edgepart.Agent(res.out_dir / "dev0", interface="127.0.0.1", threads=1).start()
        stack.append(agent)
        assert agent.wait_ready(15)
        return agent, sessions(res.out_dir, timeout_s=20)
    stack: list = []
    yield make
    sessions.close()
    for a in stack:
        a.stop()


def test_concurrent_callers_each_get_their_own_answer_in_their_thread(embedded):
    agent, sess = embedded(0)
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
    assert agent.core.direct_runs >= n * 0.9 and agent.core.direct_answers >= n * 0.9, (
        f"{agent.core.direct_runs} / {agent.core.direct_answers} of {n} runs took the direct path")
    # one socket per caller at a time at most: the pool never grows past the callers
    assert 1 <= len(agent.core._direct_all) <= threads


def test_an_answer_given_up_on_is_never_taken_for_the_next_one(embedded, caplog):
    caplog.set_level(logging.DEBUG, logger="edgepart")
    agent, sess = embedded(400)  # dev1: 400 identity MatMuls, some milliseconds per request
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
    assert len(agent.core._direct_all) == 1 and agent.core.direct_answers >= 6
    # the answers (or errors: dev1 saw their deadlines pass) to the requests given up on did arrive
    # on that socket, and were skipped
    skipped = [r for r in caplog.records if "on a direct socket" in r.getMessage()]
    assert skipped, "no stale answer arrived: the test did not test the skipping"

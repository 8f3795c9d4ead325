"""The scheduling rule (edgepart.schedule, docs/priority.md): device choice, queue order with aging,
claims, admission. Pure functions, so every figure here is exact arithmetic on whole milliseconds."""

from __future__ import annotations

import random

import pytest

from edgepart.errors import DeadlineExceeded
from edgepart.schedule import (Claims, Option, TaskQueue, admit, check_admission, choose, choose_and_claim,
                               effective_priority, expected_ms, queue_key, score)


def serve_one_device(arrivals: list[tuple[float, str, float]], service_ms: float, aging_ms: float,
                     horizon_ms: float) -> dict[str, float]:
    """One device serving tasks of `service_ms` each in the rule's queue order: arrivals are
    (time, name, weight); returns each served task's start time (those started before the horizon)."""
    q, started, t, i = TaskQueue(), {}, 0.0, 0
    arrivals = sorted(arrivals)
    while t < horizon_ms:
        while i < len(arrivals) and arrivals[i][0] <= t:
            at, name, w = arrivals[i]
            q.push(queue_key(w, at, aging_ms), service_ms, name)
            i += 1
        if not len(q):
            if i == len(arrivals):
                break
            t = arrivals[i][0]
            continue
        _, _, name = q.pop()
        started[name] = t
        t += service_ms
    return started


def test_aging_serves_low_priority_under_sustained_high_priority_overload():
    """High-priority tasks (weight 10) come twice as fast as the device serves them, forever; one
    low-priority task (weight 1) arrives at 20 ms. With aging it is served before every high task that
    came more than aging_ms * (10 - 1) after it, so within a bound; under strict priority, never."""
    service, aging, t_low = 10.0, 10.0, 20.0
    highs = [(5.0 * k, f"h{k}", 10.0) for k in range(2000)]  # 200 per second for 10 s; capacity is 100
    arrivals = highs + [(t_low, "low", 1.0)]
    started = serve_one_device(arrivals, service, aging, horizon_ms=5000)
    # the documented bound: only tasks ready by t_low + aging * (w_high - w_low) can go before it
    before = sum(1 for at, _, _ in highs if at <= t_low + aging * (10 - 1))
    assert "low" in started
    assert started["low"] - t_low <= before * service
    assert started["low"] - t_low > 0.5 * before * service  # and high priority did go first meanwhile
    strict = serve_one_device(arrivals, service, 1e9, horizon_ms=5000)
    assert "low" not in strict and len(strict) >= 490  # starved while the device stayed busy


def test_the_static_key_orders_as_the_effective_priority_at_every_instant():
    rng = random.Random(7)
    for _ in range(200):
        aging = rng.choice([10.0, 100.0, 1000.0])
        a = (rng.choice([1.0, 3.0, 10.0]), rng.uniform(0, 1000))  # (weight, queued_ms)
        b = (rng.choice([1.0, 3.0, 10.0]), rng.uniform(0, 1000))
        now = max(a[1], b[1]) + rng.uniform(0, 5000)
        ea, eb = (effective_priority(w, now - queued, aging) for w, queued in (a, b))
        ka, kb = (queue_key(w, queued, aging) for w, queued in (a, b))
        if abs(ea - eb) > 1e-6:
            assert (ea > eb) == (ka < kb)


def test_the_queue_serves_in_key_order_and_tells_the_work_ahead():
    q = TaskQueue()
    q.push(queue_key(1.0, 0.0), 7.0, "old-low")  # key -100
    q.push(queue_key(10.0, 50.0), 3.0, "new-high")  # key -950
    q.push(queue_key(10.0, 50.0), 4.0, "new-high-2")  # same key: after the first pushed
    assert q.work_ms == 14.0 and len(q) == 3
    assert q.ahead_ms(queue_key(3.0, 60.0)) == 7.0  # key -240: behind the highs, ahead of the low
    assert q.ahead_ms() == 14.0
    assert [q.pop()[2] for _ in range(3)] == ["new-high", "new-high-2", "old-low"]
    assert q.work_ms == 0.0


def test_choice_minimises_the_published_score_and_ties_go_to_the_first_listed():
    opts = [Option("a", comm_ms=5, compute_ms=20, backlog_ms=30), Option("b", comm_ms=15, compute_ms=10, backlog_ms=5),
            Option("c", comm_ms=2, compute_ms=40, backlog_ms=0)]
    assert score(opts[1], age_ms=10, weight=2) == (15 + 10 + 10 + 5) / 2
    assert choose(opts, age_ms=10, weight=2).device == "b"
    tie = [Option("x", 1, 2, 3), Option("y", 3, 2, 1)]
    assert choose(tie, 0, 1).device == "x" and choose(tie[::-1], 0, 1).device == "y"
    with pytest.raises(ValueError):
        choose([], 0, 1)


def test_claims_keep_simultaneous_senders_off_one_idle_device():
    """Two workers pick at the same instant among two equal idle devices: without claims both see the
    same figures and pick the same one; with claims, the first pick counts in the second's backlog."""
    def options(claims):
        return [Option(d, comm_ms=1, compute_ms=10, backlog_ms=claims.reserved_ms(d) if claims else 0.0)
                for d in ("d0", "d1")]

    blind = [choose(options(None), 0, 1).device for _ in range(2)]
    assert blind == ["d0", "d0"]
    claims = Claims()
    picks = [choose_and_claim(options(claims), 0, 1, claims, token=i, key=0.0).device for i in range(2)]
    assert picks == ["d0", "d1"]
    claims.release("d0", 0)
    assert claims.reserved_ms("d0") == 0.0 and claims.reserved_ms("d1") == 10.0


def test_a_claim_over_the_limit_is_refused_and_the_next_option_taken():
    claims = Claims(limit_ms=25.0)
    assert claims.grant("d0", "t0", 10.0, key=0.0, backlog_ms=10.0)
    assert not claims.grant("d0", "t1", 10.0, key=0.0, backlog_ms=10.0)  # 10 + 10 + 10 > 25
    opts = [Option("d0", 0, 10, 20), Option("d1", 0, 10, 25)]
    assert choose_and_claim(opts, 0, 1, claims, "t2", 0.0, backlog_of={"d0": 10.0, "d1": 25.0}).device == "d1"
    # the last option is taken even when it refuses, so a task always goes somewhere
    assert choose_and_claim([Option("d0", 0, 10, 20)], 0, 1, claims, "t3", 0.0).device == "d0"
    # claims of later-served tasks do not count ahead of an urgent one
    assert claims.reserved_ms("d0", key=-1.0) == 0.0 and claims.reserved_ms("d0") == 20.0


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once_with_the_figures():
    stages = [[Option("cam", 0, 12, 30)], [Option("a", 4, 20, 0), Option("b", 2, 10, 50)]]
    assert expected_ms(stages, age_ms=1) == 1 + 42 + 24
    assert admit(67, 67) and admit(1e9, None) and not admit(67.5, 67)
    check_admission("door", 60.0, 67.0)
    with pytest.raises(DeadlineExceeded, match=r"source 'door' was refused at once: .* 80\.0 ms .* deadline of 67 ms"):
        check_admission("door", 80.0, 67.0)
